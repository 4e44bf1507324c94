"""The programs the benchmark times, built with mimjax's own code and nothing else: one
MAE / GPA-MAE train step (the recipe's config through `mimjax.train.step.build`, exactly
what `mimjax train` runs, with a frozen checkpoint-style teacher of the student's
architecture and random weights), the encoder forward + backward, and the masking alone.

Switches for recording an option's effect: overrides of any config key in ml_collections'
`--config.key=value` syntax (e.g. model.remat=true, model.scan=true, model.attention=cudnn),
and `teacher_full` (run the whole teacher and keep all heads' q, k of block 9 instead
of stopping after its q, k of head 11).
"""
from __future__ import annotations

import dataclasses
import os
import tempfile

import jax
import jax.numpy as jnp
from absl import flags
from ml_collections import config_flags

from mimjax.models import model_from_config, vit
from mimjax.models.precision import resolve_dtype
from mimjax.models.vit import vit_kwargs
from mimjax.schema import load_config_file
from mimjax.train import config as config_lib
from mimjax.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# method -> (recipe file, recipe flags)
METHODS = {"mae": ("mae.py", ""), "gpa_teacher": ("gpa_mae.py", ""),
           "gpa_feature": ("gpa_mae.py", ",feature_early"),  # the head runs in every step
           # the authors' late head, timed at step 0: its blocks are skipped (lax.cond) until 75%
           "gpa_feature_late": ("gpa_mae.py", ",feature")}


def apply_overrides(c, overrides=()):
    """Applies ["a.b=value", ...] to config c with ml_collections' own config-flag parser
    (the value takes the key's type; an unknown key raises ValueError)."""
    if not overrides:
        return c
    argv = ["bench", *(f"--config.{item}" for item in overrides)]
    fv = flags.FlagValues()
    try:  # the overrides are read from sys_argv (when the flag is defined), then parsed
        config_flags.DEFINE_config_dict("config", c, flag_values=fv, sys_argv=argv)
        fv(argv)
    except (flags.Error, AttributeError, KeyError) as e:  # an unknown key is an AttributeError
        raise ValueError(f"override {list(overrides)}: {e}") from None
    return fv.config


def make_config(method: str, size: str, batch: int, img_size: int, dtype: str, overrides=()):
    """The recipe's config (configs/mae.py or configs/gpa_mae.py) at this size, batch,
    image size and dtype, on synthetic data, with a same-size frozen teacher."""
    recipe, flags = METHODS[method]
    c = load_config_file(os.path.join(REPO, "configs", recipe), size + flags)
    c.batch_size, c.total_steps, c.total_epochs = batch, 1000, -1
    c.optimizer.warmup_steps = 100
    c.model.img_size, c.model.dtype = img_size, dtype
    c.data.source = "synthetic"
    config_lib.set_fields(c, False, 1)  # the recipes' "auto" is chosen per device at start-up; override to change
    if method != "mae":
        # An empty directory is no workdir, so the teacher is `vit(teacher.name)` (as for an
        # imported checkpoint); its weights are random (`build_train_step`).
        c.teacher.source, c.teacher.name, c.teacher.path = "checkpoint", size, tempfile.mkdtemp(prefix="bench_teacher_")
        c.teacher.block, c.teacher.head = 9, min(11, vit_kwargs(size)["num_heads"] - 1)  # B's; the last head below
    c = apply_overrides(c, overrides)
    config_lib.validate(c, num_devices=1)
    return c


class FullTeacher:
    """A teacher that runs every block (and the final norm) and keeps all heads' q, k of
    block `block`, then selects the wanted head: the straightforward way, to compare with
    `teacher_qk` of one head, which stops after that block's q, k. The final tokens are tied
    into the result (0, or NaN where they are not finite: XLA folds a product with 0 away, and
    the blocks after `block` with it); the blocks up to it are the same computation in both
    calls, which XLA computes once (CSE)."""

    def __init__(self, encoder):
        self.encoder = encoder

    def apply(self, variables, images, *, block, head=None, method="teacher_qk"):
        del method
        q, k = self.encoder.apply(variables, images, block=block, method="teacher_qk")  # each [B, T, H, hd]
        tie = jnp.where(jnp.isfinite(self.encoder.apply(variables, images).mean()), 0.0, jnp.nan)
        one = slice(None) if head is None else slice(head, head + 1)
        return q[:, :, one] + tie.astype(q.dtype), k[:, :, one]


def build_train_step(c, teacher_full: bool = False, seed: int = 0, abstract: bool = False):
    """(jitted step, args) for one train step of config c on a synthetic device batch:
    `step(*args)` -> (state, metrics); the state (args[0]) is donated. abstract=True gives
    shapes only (`jax.ShapeDtypeStruct`s), enough to lower and compile."""
    make = jax.eval_shape if abstract else lambda f, *a: jax.jit(f)(*a)
    built = step_lib.build(c, num_examples=1000 * c.batch_size)
    k_init, k_teacher, k_data, k_step = jax.random.split(jax.random.key(seed), 4)
    state = make(built.init_state, k_init)
    teacher, frozen = built.teacher, None
    if teacher.in_use:  # random weights of the teacher's architecture (no checkpoint is read)
        size = c.model.img_size
        frozen = make(lambda k: teacher.model.init(k, jnp.zeros((1, size, size, 3)))["params"], k_teacher)
    images = make(lambda k: jax.random.normal(k, (c.batch_size, c.model.img_size, c.model.img_size, 3)), k_data)
    make_step = built.make_step
    if teacher_full:
        teacher = dataclasses.replace(teacher, model=FullTeacher(teacher.model))
        make_step = lambda axis: step_lib.make_train_step(c, built.model, teacher, built.tx, built.lr_fn,  # noqa: E731
                                                          built.schedule, axis)
    step = jax.jit(make_step(None), donate_argnums=(0,))
    return step, (state, {"image": images}, frozen, k_step)


def build_encoder_step(size: str, batch: int, img_size: int = 224, dtype: str = "float32", seed: int = 0,
                       attention: str = "auto"):
    """(jitted fn, args): loss = mean of the encoder's output tokens [B, 1+N, D], and its
    gradient with respect to all encoder parameters (fwd + bwd, no optimizer)."""
    enc = vit(size, img_size=img_size, dtype=resolve_dtype(dtype), attention=attention)
    k_init, k_data = jax.random.split(jax.random.key(seed))
    params = jax.jit(lambda k: enc.init(k, jnp.zeros((1, img_size, img_size, 3)))["params"])(k_init)
    images = jax.random.normal(k_data, (batch, img_size, img_size, 3), jnp.float32)
    loss = lambda p, x: enc.apply({"params": p}, x).astype(jnp.float32).mean()
    return jax.jit(jax.value_and_grad(loss)), (params, images)


def build_masking(c, seed: int = 0):
    """(jitted fn, args): the step's masks for one batch, `step.make_mask` (per-image
    keys, vmapped `masking.gpa_mask` or `masking.random_mask`), from given GPA scores."""
    n = model_from_config(c.model).encoder.num_patches
    k_scores, k_mask = jax.random.split(jax.random.key(seed))
    scores = jax.random.uniform(k_scores, (c.batch_size, n))
    ids = jnp.arange(c.batch_size)
    fn = jax.jit(lambda key, g, progress: step_lib.make_mask(c, key, g, n, ids, progress))
    return fn, (k_mask, scores, jnp.float32(0.5))
