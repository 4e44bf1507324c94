"""The pre-training step and everything it is built from, in one place: `build(cfg,
num_examples)` gives the model, the teacher, the optimizer and schedule, the initial state
and the pure step and snapshot functions. The trainer (`pretrain.py`), the benchmark
(`bench/steps.py`) and `mimjax visualize` all start from it, so they run the same program.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mimjax import masking
from mimjax.models import MAE, init_model, model_from_config
from mimjax.models.mae import LATE_START
from mimjax.train import init_from, optim, pictures
from mimjax.train.config import concrete
from mimjax.train.schedule import Schedule, lr_schedule
from mimjax.train.teacher import Teacher


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    ema_params: Any  # the EMA teacher's encoder params, or {} for other teachers
    nonfinite_steps: jax.Array  # int32: steps whose loss or gradients were not finite (update skipped)
    first_nonfinite_step: jax.Array  # int32: the first such step, -1 if none

    @classmethod
    def create(cls, params, tx, ema_params=None):
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   ema_params={} if ema_params is None else ema_params,
                   nonfinite_steps=jnp.zeros((), jnp.int32), first_nonfinite_step=-jnp.ones((), jnp.int32))


def make_mask(cfg, key, scores, num_patches: int, image_ids, progress) -> masking.Mask:
    """Masks for a batch; image i's randomness is fold_in(key, image_ids[i]), its position in
    the global batch, so masks do not depend on device count, sharding or accumulation."""
    mk = cfg.masking
    if mk.strategy == "high":
        return masking.high_mask(scores, mk.mask_ratio)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(image_ids)  # [b] keys
    if mk.strategy == "gpa":
        one = lambda k, s: masking.gpa_mask(k, s[None], progress, mask_ratio=mk.mask_ratio,
                                            hard=tuple(mk.hard), soft=tuple(mk.soft))
        m = jax.vmap(one)(keys, scores)
    else:
        m = jax.vmap(lambda k: masking.random_mask(k, 1, num_patches, mk.mask_ratio))(keys)
    return jax.tree.map(lambda a: a[:, 0], m)  # [b, 1, ...] -> [b, ...]


def make_train_step(cfg, model: MAE, teacher: Teacher, tx, lr_fn, schedule: Schedule, axis_name=None):
    """(state, batch, teacher_params, key) -> (state, metrics); pure, jitted by the caller.

    With axis_name (pmap), the batch is this device's share, and gradients and metrics
    are averaged over the axis."""
    accum, n = cfg.optimizer.accum_steps, model.encoder.num_patches
    late_head = late_start_head(cfg)

    def step_fn(state: TrainState, batch, frozen_teacher, base_key):
        key = jax.random.fold_in(base_key, state.step)
        k_mask, k_drop = jax.random.split(key)
        progress = schedule.progress(state.step, cfg.masking.progress)
        images = batch["image"]  # [B, H, W, 3] (this device's [B / devices, ...] under pmap)
        b = images.shape[0] // accum
        # Micro-batch i is images[i::accum], sliced from the [b, accum] view inside the loop. The
        # batch is split over the devices along its first axis, so each device holds whole rows
        # of that view and every micro-batch is spread over all devices, 1 / accum of each one's
        # share. (images.reshape(accum, b) would put the accum axis on the devices instead: a
        # device would then hold every micro-batch's activations at once, no memory saved on
        # GPU / TPU.) The view is a reshape, not a copy.
        rows = images.reshape(b, accum, *images.shape[1:])  # [b, accum, H, W, 3]
        offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * images.shape[0]
        if axis_name is not None:
            k_drop = jax.random.fold_in(k_drop, jax.lax.axis_index(axis_name))
        tparams = teacher.params(state.params, state.ema_params, frozen_teacher)

        def micro_step(grad_sum, i):
            imgs = jax.lax.dynamic_index_in_dim(rows, i, axis=1, keepdims=False)  # [b, H, W, 3]
            g = teacher.scores(tparams, imgs)  # [b, N] or None
            mask = make_mask(cfg, k_mask, g, n, offset + jnp.arange(b) * accum + i, progress)  # global positions

            def loss_fn(params):
                out = model.apply({"params": params}, imgs, mask, gpa_target=g if model.gpa_head else None,
                                  progress=progress, train=True, rngs={"dropout": jax.random.fold_in(k_drop, i)})
                return out["loss"], out

            (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            m = {k: out[k] for k in ("loss", "pixel_loss", "gpa_loss")}
            return jax.tree.map(jnp.add, grad_sum, grads), m

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        grads, ms = jax.lax.scan(micro_step, zeros, jnp.arange(accum))
        grads = jax.tree.map(lambda g: g / accum, grads)
        metrics_ = {k: v.mean() for k, v in ms.items()}
        if axis_name is not None:
            grads, metrics_ = jax.lax.pmean((grads, metrics_), axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if late_head:  # the head did not run: it and its Adam state stay exactly as they were
            params, opt_state = optim.keep_head_unchanged(progress > LATE_START, (params, opt_state),
                                                          (state.params, state.opt_state))
        ema = teacher.update_ema(state.ema_params, params)
        # A non-finite loss or gradient never reaches the weights: the update is skipped and
        # counted; with optimizer.nonfinite = "halt" the loop then stops (see `train`).
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(metrics_["loss"]) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        params, opt_state, ema = keep((params, opt_state, ema), (state.params, state.opt_state, state.ema_params))
        nonfinite = state.nonfinite_steps + (~finite).astype(jnp.int32)
        first_bad = jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step, state.first_nonfinite_step)
        n_hard, n_soft, n_random = masking.mask_counts(progress, n, cfg.masking.mask_ratio,
                                                       tuple(cfg.masking.hard), tuple(cfg.masking.soft))
        metrics_.update(lr=lr_fn(state.step), grad_norm=grad_norm, progress=progress, nonfinite_steps=nonfinite)
        if cfg.masking.strategy == "gpa":
            metrics_.update(n_hard=n_hard, n_soft=n_soft, n_random=n_random)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema,
                            nonfinite_steps=nonfinite, first_nonfinite_step=first_bad)
        return new, metrics_

    return step_fn


def make_snapshot_fn(cfg, model: MAE, teacher: Teacher):
    """(params, ema_params, frozen_teacher, images, key, progress[, late_progress]) -> the
    arrays of a reconstruction PNG (`snapshot_grid`): prediction, mask, GPA scores and the
    mask at late_progress (by default the end of training)."""
    n = model.encoder.num_patches

    def snapshot(params, ema_params, frozen_teacher, images, key, progress, late_progress=1.0):
        g = teacher.scores(teacher.params(params, ema_params, frozen_teacher), images)
        ids = jnp.arange(images.shape[0])
        mask = make_mask(cfg, key, g, n, ids, progress)
        late = make_mask(cfg, key, g, n, ids, late_progress)
        out = model.apply({"params": params}, images, mask,
                          gpa_target=g if model.gpa_head else None, progress=progress, train=False)
        return dict(pred=out["pred"], mask=mask.mask, gpa=g, late_mask=late.mask)

    return snapshot


def snapshot_grid(cfg, enc, images, out, max_images: int = 4, mask_at: float = 1.0):
    """The reconstruction PNG (uint8, `pictures.reconstruction_grid` under a band of column
    titles) of the arrays a `make_snapshot_fn` returned for `images`; small images are
    magnified to ~128 px. mask_at: the progress the last column's mask was drawn at."""
    out = jax.tree.map(np.asarray, out)
    grid = pictures.reconstruction_grid(
        images, out["pred"], out["mask"], patch_size=enc.patch_size, norm_pix_loss=cfg.model.norm_pix_loss,
        gpa=out["gpa"], mask_at_progress=out["late_mask"], max_images=max_images,
        upscale=max(1, 128 // enc.img_size))
    late = out["late_mask"]
    same = late is not None and np.array_equal(late[:max_images], out["mask"][:max_images])
    return pictures.with_titles(grid, pictures.column_titles(
        out["gpa"] is not None, mask_at if late is not None else None, same_as_input=same))


class RecompilationError(RuntimeError):
    """The train step was traced (hence compiled) again after its first call."""


def compile_once(step_fn):
    """`step_fn` for jit / pmap, raising RecompilationError when it is traced a second time:
    under jit or pmap a trace happens exactly when the step is (re)compiled (a changed
    shape, dtype or sharding: a silent slowdown).

    Not `chex.assert_max_traces`: its counter is process-global and keyed by where the
    function is defined, so a second run in one process (a test, a notebook, the bench
    building several configs) would count as a retrace. This counter belongs to one step."""
    traces = [0]

    def step(*args):
        traces[0] += 1
        if traces[0] > 1:
            raise RecompilationError("the train step was compiled a second time (once expected): an input's "
                                     "shape, dtype or sharding changed between steps")
        return step_fn(*args)

    return step


def compiled_once(compiled):
    """An ahead-of-time compiled step (`loop.Run.aot`) that raises RecompilationError, as
    `compile_once` does, when called with arguments it was not compiled for (XLA's
    TypeError: an input's shape, dtype or sharding changed)."""
    def step(*args):
        try:
            return compiled(*args)
        except TypeError as e:
            raise RecompilationError(f"the train step was compiled a second time (once expected): an input's "
                                     f"shape, dtype or sharding changed between steps ({e})") from e

    return step


@dataclasses.dataclass(frozen=True)
class Built:
    """What `build` returns; every function is pure."""

    model: MAE  # or SimMIM, by model.arch
    teacher: Teacher
    schedule: Schedule
    lr_fn: Callable  # step -> learning rate
    tx: optax.GradientTransformation
    init_state: Callable  # key -> TrainState
    make_step: Callable  # axis_name (None under jit, the pmap axis) -> (state, batch, frozen, key) -> (state, metrics)
    snapshot: Callable  # see make_snapshot_fn

    @property
    def encoder(self):
        return self.model.encoder


def late_start_head(cfg) -> bool:
    """The GPA head starts late (docs/method.md §4): its blocks run only when progress > 0.75."""
    return cfg.model.arch == "mae" and bool(cfg.model.gpa_head and cfg.model.gpa_head_late_start)


def build(cfg, num_examples: int, workdir: str | None = None) -> Built:
    """The model, teacher, optimizer, schedule, initial state and step / snapshot functions of
    a (validated) pre-training config, for a dataset of `num_examples` images an epoch.

    `model.init_from` (mimjax/train/init_from.py) puts existing weights into the initial
    state. Given the run's `workdir`, it is read and checked here (a ConfigError before
    anything is written), or ignored with a log line when the workdir has a checkpoint to
    resume from; without one (bench, visualize), when `init_state` is first traced."""
    cfg = concrete(cfg)  # remat a bool, accum_steps an int (never "auto" here)
    model = model_from_config(cfg.model)
    teacher = Teacher.from_config(cfg, model.encoder)
    schedule = Schedule.from_config(cfg, num_examples)
    lr_fn = lr_schedule(cfg.optimizer, cfg.batch_size, schedule.total_steps, schedule.warmup_steps)
    tx = optim.make_optimizer(cfg.optimizer, lr_fn, mask=functools.partial(
        optim.pretrain_decay_mask, exempt=optim.PRETRAIN_EXEMPT[cfg.model.arch]), own_adam_for_head=late_start_head(cfg))

    start_from = []  # [init_from.Loaded or None], once resolved
    if workdir is not None:
        start_from.append(init_from.resolve(cfg, jax.eval_shape(lambda: init_model(model, jax.random.key(0))),
                                            workdir=workdir))

    def init_state(key):
        params = init_model(model, key)
        if not start_from:
            start_from.append(init_from.resolve(cfg, params))
        if start_from[0] is not None:  # the source's weights; the EMA teacher starts from them too
            params = start_from[0].apply(params)
        return TrainState.create(params, tx, teacher.init_ema(params))

    return Built(model, teacher, schedule, lr_fn, tx, init_state,
                 lambda axis_name=None: make_train_step(cfg, model, teacher, tx, lr_fn, schedule, axis_name),
                 make_snapshot_fn(cfg, model, teacher))
