"""The pre-training step as `build(cfg)` makes it: it learns, it compiles once, and the
teacher it uses is the one the config names."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimjax import data
from mimjax.train import config as config_lib
from mimjax.train import step as step_lib


def tiny(strategy="random", teacher="none", gpa_head=False, steps=60):
    c = config_lib.runlocal(config_lib.base_config())
    c.total_steps = steps
    c.masking.strategy, c.masking.progress = strategy, "step"
    c.teacher.source = teacher
    c.teacher.block, c.teacher.head = 1, 2
    c.model.gpa_head = gpa_head
    return c


@pytest.mark.slow
def test_overfits_a_fixed_batch():
    c = tiny()
    c.optimizer.lr, c.optimizer.warmup_steps, c.optimizer.weight_decay = 3e-3, 5, 0.0
    c.model.norm_pix_loss = False
    built = step_lib.build(c, 1000)
    state = jax.jit(built.init_state)(jax.random.key(0))
    step = jax.jit(built.make_step(None))
    it = data.make_iterator(c.data, img_size=32, global_batch_size=8, seed=0)
    images = {"image": jnp.asarray(next(it)["image"])}  # one batch of real photo crops
    losses = []
    for _ in range(60):  # one batch again and again (masks differ per step)
        state, m = step(state, images, None, jax.random.key(2))
        losses.append(float(m["loss"]))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_compile_once_stops_a_second_compilation():
    for transform in (jax.jit, jax.pmap):
        f = transform(step_lib.compile_once(lambda x: x * 2))
        f(jnp.ones((1, 3)))
        f(jnp.ones((1, 3)) + 1)  # same shape: no new trace
        with pytest.raises(step_lib.RecompilationError, match="compiled a second time"):
            f(jnp.ones((1, 4)))  # a new shape would compile again


@pytest.mark.parametrize("strategy,teacher,gpa_head,in_use", [
    ("random", "none", False, False), ("random", "ema", False, False), ("gpa", "ema", False, True),
    ("gpa", "self", True, True), ("random", "self", True, True), ("high", "ema", False, True)])
def test_build_gives_the_teacher_the_config_names(strategy, teacher, gpa_head, in_use):
    c = tiny(strategy, teacher, gpa_head)
    built = step_lib.build(c, 100)
    assert built.teacher.in_use == in_use and built.teacher.source == teacher
    state = jax.eval_shape(built.init_state, jax.random.key(0))
    assert bool(state.ema_params) == (teacher == "ema")  # an EMA copy exactly for an EMA teacher
    images = jnp.zeros((2, 32, 32, 3))
    tparams = built.teacher.params(state.params, state.ema_params, None)
    scores = jax.eval_shape(built.teacher.scores, tparams, images) if in_use else built.teacher.scores(tparams, images)
    assert (scores is None) == (not in_use)
    if in_use:
        assert scores.shape == (2, built.encoder.num_patches)
    assert built.schedule.total_steps == 60
