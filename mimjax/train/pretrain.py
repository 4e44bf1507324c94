"""MAE / GPA-MAE pre-training, read top to bottom (big_vision style):
config -> devices -> input -> model, teacher, optimizer -> train step -> restore -> loop.

    mimjax train --config configs/demo.py --workdir workdirs/demo
    python -m mimjax.train --config configs/gpa_mae.py:vit_base_patch16 --workdir W \
        --config.batch_size=256

Writes W/config.json, W/metrics.jsonl, W/tb/ (TensorBoard), W/checkpoints/<step>/,
W/snapshots/*.png. Restarting the same command resumes from the latest complete checkpoint.
"""
from __future__ import annotations

import dataclasses
import logging

log = logging.getLogger("mimjax")
import math
import os
import signal
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from mimjax.train import config as config_lib
from mimjax import data, masking, parallel
from mimjax.train import metrics
from mimjax.train import optim
from mimjax.train.schedule import Schedule, lr_schedule
from mimjax.train import teacher as teacher_lib
from mimjax.train import pictures as visualize
from mimjax.train.checkpoint import Checkpointer, is_disk_full
from mimjax.models import MAE, init_model, model_from_config


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


class NonFiniteError(RuntimeError):
    """Raised (optimizer.nonfinite = 'halt') when a step's loss or gradients were not finite."""


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


def uses_teacher(cfg) -> bool:
    return cfg.masking.strategy in ("gpa", "high") or cfg.model.gpa_head


def load_frozen_teacher(cfg, teacher):
    """The frozen teacher's params (teacher.source = "checkpoint" and a teacher in use), else
    None; a missing or mismatched checkpoint raises ValueError."""
    if uses_teacher(cfg) and cfg.teacher.source == "checkpoint":
        return teacher_lib.load_checkpoint_params(cfg.teacher.path, teacher)
    return None


def teacher_params(cfg, state: TrainState, frozen):
    """The teacher's weights this step: frozen checkpoint, EMA copy, or the student's own."""
    if not uses_teacher(cfg):
        return None
    return {"checkpoint": lambda: frozen, "ema": lambda: state.ema_params,
            "self": lambda: state.params["encoder"]}[cfg.teacher.source]()


def teacher_scores(cfg, teacher, tparams, images):
    """Teacher scores [B, N] for the masking / GPA head, or None without a teacher."""
    if tparams is None:
        return None
    strategy = "high" if cfg.masking.strategy == "high" else "gpa"
    return teacher_lib.scores(teacher, tparams, images, cfg.teacher, strategy)


def make_train_step(cfg, model: MAE, teacher, tx, lr_fn, schedule: Schedule, axis_name=None):
    """(state, batch, teacher_params, key) -> (state, metrics); pure, jitted by the caller.

    With axis_name (pmap), the batch is this device's share, and gradients and metrics
    are averaged over the axis."""
    accum, n = cfg.optimizer.accum_steps, model.encoder.num_patches

    def step_fn(state: TrainState, batch, frozen_teacher, base_key):
        key = jax.random.fold_in(base_key, state.step)
        k_mask, k_drop = jax.random.split(key)
        progress = schedule.progress(state.step, cfg.masking.progress)
        images = batch["image"]  # [B, H, W, 3] (this device's [B / devices, ...] under pmap)
        b = images.shape[0] // accum
        micro = images.reshape(accum, b, *images.shape[1:])
        offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * images.shape[0]
        if axis_name is not None:
            k_drop = jax.random.fold_in(k_drop, jax.lax.axis_index(axis_name))
        tparams = teacher_params(cfg, state, frozen_teacher)

        def micro_step(grad_sum, xs):
            imgs, i = xs  # [b, H, W, 3], micro-batch index
            g = teacher_scores(cfg, teacher, tparams, imgs)  # [b, N] or None
            mask = make_mask(cfg, k_mask, g, n, offset + i * b + jnp.arange(b), progress)

            def loss_fn(params):
                out = model.apply({"params": params}, imgs, mask, gpa_target=g if model.gpa_head else None,
                                  progress=progress, train=True, rngs={"dropout": jax.random.fold_in(k_drop, i)})
                return out["loss"], out

            (_, out), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            m = {k: out[k] for k in ("loss", "pixel_loss", "gpa_loss")}
            return jax.tree.map(jnp.add, grad_sum, grads), m

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        grads, ms = jax.lax.scan(micro_step, zeros, (micro, jnp.arange(accum)))
        grads = jax.tree.map(lambda g: g / accum, grads)
        metrics_ = {k: v.mean() for k, v in ms.items()}
        if axis_name is not None:
            grads, metrics_ = jax.lax.pmean((grads, metrics_), axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema_params
        if cfg.teacher.source == "ema":
            ema = teacher_lib.ema_update(ema, params["encoder"], cfg.teacher.ema_momentum)
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


def make_snapshot_fn(cfg, model: MAE, teacher):
    """(state, teacher_params, images, key, progress[, late_progress]) -> arrays for a
    reconstruction PNG (state needs only `params` and `ema_params`)."""
    n = model.encoder.num_patches

    def snapshot(state, frozen_teacher, images, key, progress, late_progress=1.0):
        g = teacher_scores(cfg, teacher, teacher_params(cfg, state, frozen_teacher), images)
        ids = jnp.arange(images.shape[0])
        mask = make_mask(cfg, key, g, n, ids, progress)
        late = make_mask(cfg, key, g, n, ids, late_progress)  # by default the mask at the end of training
        out = model.apply({"params": state.params}, images, mask,
                          gpa_target=g if model.gpa_head else None, progress=progress, train=False)
        return dict(pred=out["pred"], mask=mask.mask, gpa=g, late_mask=late.mask)

    return snapshot


def snapshot_grid(cfg, enc, images, out, max_images: int = 4):
    """The reconstruction PNG (uint8, `visualize.reconstruction_grid`) of the arrays a
    `make_snapshot_fn` returned for `images`; small images are magnified to ~128 px."""
    out = jax.tree.map(np.asarray, out)
    return visualize.reconstruction_grid(
        images, out["pred"], out["mask"], patch_size=enc.patch_size, norm_pix_loss=cfg.model.norm_pix_loss,
        gpa=out["gpa"], mask_at_progress=out["late_mask"], max_images=max_images,
        upscale=max(1, 128 // enc.img_size))


class RecompilationError(RuntimeError):
    """The train step was traced (hence compiled) again after its first call."""


class TraceCount:
    """How often JAX traces the wrapped functions: under jit or pmap a trace happens
    exactly when the step is (re)compiled, so after step 1 the count must stay at 1."""

    def __init__(self):
        self.n = 0

    def wrap(self, fn):
        def traced(*args):
            self.n += 1
            return fn(*args)
        return traced


class _Preemption:
    """SIGTERM sets a flag the loop checks between steps (save, then exit 0)."""

    def __init__(self):
        self.requested = False
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("SIGTERM received: saving a checkpoint and exiting")
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._old)


def train(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) pre-training; returns the last logged metrics."""
    # --- Config and devices -------------------------------------------------------
    cfg = config_lib.fill_missing(cfg)
    devices = jax.devices()
    config_lib.validate(cfg, num_devices=len(devices), process_count=jax.process_count())
    workdir = os.path.abspath(workdir)
    is_main = jax.process_index() == 0
    # --- Input --------------------------------------------------------------------
    model = model_from_config(cfg.model)  # MAE or SimMIM, by model.arch
    enc = model.encoder
    try:  # a missing dataset or folder is a config problem: one line, nothing written yet
        it = data.make_iterator(cfg.data, img_size=enc.img_size, global_batch_size=cfg.batch_size,
                                seed=cfg.seed, process_index=jax.process_index(),
                                process_count=jax.process_count())
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from e
    num_examples = cfg.data.num_examples if cfg.data.num_examples > 0 else it.num_records
    schedule = Schedule.from_config(cfg, num_examples)

    # --- Model, teacher, optimizer --------------------------------------------------
    teacher = teacher_lib.teacher_model(cfg, enc)
    try:  # uncommitted arrays (or None): replicated by jit and broadcast by pmap
        frozen_teacher = load_frozen_teacher(cfg, teacher)
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from e
    # Everything checked: only now is the workdir touched.
    try:
        os.makedirs(workdir, exist_ok=True)
        if is_main:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(cfg.to_json_best_effort(indent=2))
    except OSError as e:
        raise config_lib.ConfigError(f"workdir {workdir!r} is not writable: {e}") from e
    lr_fn = lr_schedule(cfg.optimizer, cfg.batch_size, schedule.total_steps, schedule.warmup_steps)
    tx = optim.make_optimizer(cfg.optimizer, lr_fn)
    root_key = jax.random.key(cfg.seed)
    init_key, step_key, snap_key = jax.random.split(root_key, 3)

    def init_state():
        params = init_model(model, init_key)
        ema = jax.tree.map(jnp.copy, params["encoder"]) if cfg.teacher.source == "ema" else None
        return TrainState.create(params, tx, ema)

    abstract = jax.eval_shape(init_state)
    par = parallel.make(cfg.parallelism, abstract)
    compiles = TraceCount()  # checked in the loop: the step must compile once
    step_fn = par.compile_step(lambda axis: compiles.wrap(make_train_step(cfg, model, teacher, tx, lr_fn,
                                                                          schedule, axis)))
    snapshot_fn = jax.jit(make_snapshot_fn(cfg, model, teacher), out_shardings=par.replicated)

    # --- Restore or initialise ------------------------------------------------------
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep=cfg.keep_checkpoints)
    abstract_sharded = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                    abstract, par.state_sharding)
    restored = ckpt.restore_latest(abstract_sharded)
    if restored is not None:
        start, state, data_state = restored
        state = par.from_global(state)
        it.set_state(data_state)
        log.info("resumed from step %d in %s", start, ckpt.directory)
    else:
        start = 0
        state = par.init_state(init_state)
    if start >= schedule.total_steps:
        log.info("nothing to do: step %d >= total_steps %d", start, schedule.total_steps)
    batches = data.DevicePrefetcher(it, cfg.data.prefetch, put=par.put_batch)
    # A fixed set of images for the PNGs, the same on every process.
    snap_images = next(data.make_iterator(cfg.data, img_size=enc.img_size, global_batch_size=min(4, cfg.batch_size),
                                          seed=cfg.seed + 1))["image"]

    # --- Loop -----------------------------------------------------------------------
    writer = metrics.MetricWriter(workdir, enabled=is_main)
    bar = metrics.ProgressBar(schedule.total_steps, start, enabled=is_main)
    throughput = metrics.Throughput(cfg.batch_size)
    preempt = _Preemption()
    pending, last, step = [], {}, start
    n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
    log.info("model %s: %.1fM params, %d patches; %d steps (%d/epoch), batch %d on %d device(s)",
                 cfg.model.name, n_params / 1e6, enc.num_patches, schedule.total_steps,
                 schedule.steps_per_epoch, cfg.batch_size, len(devices))

    def check_finite():  # one scalar sync, at checkpoints only
        if cfg.optimizer.nonfinite != "halt":
            return
        g = par.to_global(state)
        if int(jax.device_get(g.nonfinite_steps)):
            good = ckpt.latest_step()
            raise NonFiniteError(
                f"non-finite loss or gradients at step {int(jax.device_get(g.first_nonfinite_step)) + 1} "
                f"(optimizer.nonfinite='halt'); the weights were not updated with them. Last good checkpoint: "
                f"{os.path.join(ckpt.directory, str(good)) if good is not None else 'none'} (kept). "
                f"Lower the learning rate, enable optimizer.grad_clip, or set optimizer.nonfinite='skip'.")

    def save(step, force=False):
        check_finite()
        ckpt.save(step, par.to_global(state), batches.get_state(), force=force)

    def write_snapshot(step):  # every process computes (collectives), process 0 writes
        progress = schedule.progress(step, cfg.masking.progress)
        out = snapshot_fn(par.to_global(state), frozen_teacher, snap_images, snap_key, progress)
        if not is_main:
            return
        grid = snapshot_grid(cfg, enc, snap_images, out)
        visualize.save_png(os.path.join(workdir, "snapshots", f"step_{step:07d}.png"), grid)
        writer.write_image(step, "reconstruction", grid)

    try:
        throughput.start(step)
        while step < schedule.total_steps and not preempt.requested:
            state, m = step_fn(state, next(batches), frozen_teacher, step_key)
            step += 1
            pending.append(m)
            if step % cfg.log_every == 0 or step == schedule.total_steps:
                host = jax.device_get([par.host_metrics(p) for p in pending])  # the only host sync
                last = {k: float(np.mean([p[k] for p in host])) for k in host[0]}
                last["images_per_sec"] = throughput.update(step)
                last["epoch"] = step / schedule.steps_per_epoch
                last["skipped_images"] = batches.num_skipped
                writer.write(step, last)
                if last["nonfinite_steps"] and cfg.optimizer.nonfinite == "halt":
                    check_finite()
                bar.update(step, images_per_sec=last["images_per_sec"], loss=last["loss"])
                pending = []
                if compiles.n > 1:  # a changed shape, dtype or sharding: a silent slowdown
                    raise RecompilationError(
                        f"the train step was compiled {compiles.n} times by step {step} (once expected): "
                        f"an input's shape, dtype or sharding changed between steps")
            if step % cfg.checkpoint_every == 0 and step < schedule.total_steps:
                save(step)
            if cfg.snapshot_every and step % cfg.snapshot_every == 0:
                write_snapshot(step)
        if step > start or restored is None:
            save(step, force=True)
        write_snapshot(step)
        if is_main and os.path.exists(os.path.join(workdir, "metrics.jsonl")):
            visualize.plot_curves(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "curves.png"))
    except OSError as e:  # a full disk while writing PNGs or metrics: say so, like a checkpoint would
        if is_disk_full(e):
            raise ckpt.disk_full_error(None, e) from e
        raise
    finally:
        try:
            ckpt.wait()  # raises DiskFullError if the last async save ran out of space
        finally:
            ckpt.close()
            writer.close()
            bar.close()
            preempt.restore()
    if preempt.requested:
        log.warning("preempted at step %d: checkpoint saved in %s", step, ckpt.directory)
    return last
