"""The pre-training step as `build(cfg)` makes it: it learns, it compiles once, and the
teacher it uses is the one the config names."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimjax import data
from mimjax.train import step as step_lib


@pytest.mark.slow
def test_overfits_a_fixed_batch(tiny_config):
    c = tiny_config(total_steps=60, masking=dict(progress="step"))
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
def test_build_gives_the_teacher_the_config_names(strategy, teacher, gpa_head, in_use, tiny_config):
    c = tiny_config(total_steps=60, masking=dict(strategy=strategy, progress="step"),
                    teacher=dict(source=teacher, block=1, head=2), model=dict(gpa_head=gpa_head))
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


def test_late_start_head_and_its_adam_state_stay_unchanged_until_it_runs(tiny_config):
    """docs/method.md §4: with gpa_head_late_start the head's blocks run only when t > 0.75; until
    then PyTorch's AdamW skips its parameters (no gradient): no weight decay, no moments,
    no step count. With t = step / 8, steps 0..6 have t <= 0.75 and step 7 has t = 0.875."""
    c = tiny_config(gpa=True, total_steps=8)
    c.model.gpa_head_late_start = True
    c.optimizer.weight_decay = 0.05
    built = step_lib.build(c, 1000)
    state = jax.jit(built.init_state)(jax.random.key(0))
    init = jax.tree.map(np.asarray, state.params)
    step = jax.jit(built.make_step(None))
    it = data.make_iterator(c.data, img_size=32, global_batch_size=8, seed=0)

    def head_adam(opt_state):  # the head's ScaleByAdamState inside the split Adam
        return opt_state[0].inner_states["gpa_head"].inner_state

    for i in range(7):
        state, _ = step(state, {"image": jnp.asarray(next(it)["image"])}, None, jax.random.key(1))
        for name in ("gpa_blocks", "gpa_norm", "gpa_pred"):
            jax.tree.map(np.testing.assert_array_equal, state.params[name], init[name])
        assert int(head_adam(state.opt_state).count) == 0
    # the rest trained (and decayed) meanwhile; the head is still the decoder's initial copy
    assert not np.array_equal(state.params["decoder_pred"]["kernel"], init["decoder_pred"]["kernel"])
    jax.tree.map(np.testing.assert_array_equal, state.params["gpa_blocks"], init["decoder_blocks"])
    assert int(state.opt_state[2].count) == 7  # the lr schedule's count: global steps
    state, _ = step(state, {"image": jnp.asarray(next(it)["image"])}, None, jax.random.key(1))
    assert int(head_adam(state.opt_state).count) == 1  # bias correction starts at step 1, as in PyTorch
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, b), state.params["gpa_blocks"], init["gpa_blocks"])
    assert all(jax.tree.leaves(moved))


def test_without_late_start_the_optimizer_is_optax_adamw(tiny_config):
    c = tiny_config(gpa=True, total_steps=8)
    state = jax.eval_shape(step_lib.build(c, 1000).init_state, jax.random.key(0))
    assert type(state.opt_state[0]).__name__ == "ScaleByAdamState"  # one Adam over all parameters
