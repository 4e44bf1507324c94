"""MAE / GPA-MAE pre-training, read top to bottom (big_vision style):
config -> devices -> input -> `step.build` (model, teacher, optimizer, step) -> the loop,
on a `loop.Run` (the lock, restore or initialise, writers, checkpoints, SIGTERM): each step
batch -> step -> log row (a non-finite check when it counted one) -> profiler window ->
k-NN eval -> checkpoint (the non-finite check first) -> snapshot PNG; after the last step
(or a preemption notice) the final checkpoint, the final snapshot and curves.png.

    mimjax train --config configs/demo.py --workdir workdirs/demo
    python -m mimjax.train --config configs/gpa_mae.py:vit_base_patch16 --workdir W \
        --config.batch_size=256

Writes W/config.json, W/metrics.jsonl, W/tb/ (TensorBoard), W/checkpoints/<step>/,
W/snapshots/*.png. Restarting the same command resumes from the latest complete checkpoint.
"""
from __future__ import annotations

import functools
import logging

import jax
import ml_collections

from mimjax import data, flops, parallel, paths
from mimjax import workdir as workdir_lib
from mimjax.train import config as config_lib
from mimjax.train import knn_eval
from mimjax.train import loop
from mimjax.train import pictures
from mimjax.train import plan
from mimjax.train import schedule as schedule_lib
from mimjax.train import step as step_lib
from mimjax.errors import NonFiniteError
from mimjax.train.step import snapshot_grid

log = logging.getLogger("mimjax")


def _halt_if_nonfinite(cfg, par, state, ckpt) -> None:
    """optimizer.nonfinite='halt': a NonFiniteError if a step saw a non-finite loss or
    gradients (one scalar sync; at checkpoints and at log rows that counted one)."""
    if cfg.optimizer.nonfinite != "halt":
        return
    g = par.to_global(state)
    if int(jax.device_get(g.nonfinite_steps)):
        good = ckpt.latest_step()
        raise NonFiniteError(
            f"non-finite loss or gradients at step {int(jax.device_get(g.first_nonfinite_step)) + 1} "
            f"(optimizer.nonfinite='halt'); the weights were not updated with them. Last good checkpoint: "
            f"{paths.join(ckpt.directory, str(good)) if good is not None else 'none'} (kept). "
            f"Lower the learning rate, enable optimizer.grad_clip, or set optimizer.nonfinite='skip'.")


def train(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs (or resumes) pre-training; returns the last logged metrics."""
    # --- Config and devices -------------------------------------------------------
    workdir_lib.require_path(workdir, "--workdir")  # '' is not the current directory
    cfg = config_lib.fill_missing(cfg)
    devices = jax.devices()
    config_lib.validate(cfg, num_devices=len(devices), process_count=jax.process_count())
    config_lib.preflight(cfg)  # what the run reads: teacher, data folders
    workdir = paths.absolute(workdir)  # local, or gs://... (mimjax.paths)
    is_main = jax.process_index() == 0
    # --- Input --------------------------------------------------------------------
    img_size = cfg.model.img_size
    try:  # a missing dataset or folder is a config problem: one line, nothing written yet
        it = data.make_iterator(cfg.data, img_size=img_size, global_batch_size=cfg.batch_size,
                                seed=cfg.seed, process_index=jax.process_index(),
                                process_count=jax.process_count())
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from e
    num_examples = cfg.data.num_examples if cfg.data.num_examples > 0 else it.num_records

    # --- Model, teacher, optimizer, step ----------------------------------------------
    try:  # "auto" remat / accumulation: the cheapest setting that fits these devices, compiled here
        cfg = plan.resolve_auto(cfg)
    except plan.DoesNotFit as e:
        raise config_lib.ConfigError(str(e)) from e
    built = step_lib.build(cfg, num_examples, workdir=workdir)  # reads model.init_from on a fresh start
    enc, schedule = built.encoder, built.schedule
    try:  # uncommitted arrays (or None): replicated by jit and broadcast by pmap
        frozen_teacher = built.teacher.load_frozen()
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from e
    # Everything is checked: only loop.Run touches the workdir (config.json first).
    init_key, step_key, snap_key = jax.random.split(jax.random.key(cfg.seed), 3)
    init_state = functools.partial(built.init_state, init_key)
    abstract = jax.eval_shape(init_state)
    par = parallel.make(cfg.parallelism, abstract)
    step_fn = par.compile_step(lambda axis: step_lib.compile_once(built.make_step(axis)))
    snapshot_fn = jax.jit(built.snapshot, out_shardings=par.replicated)
    knn = None
    if cfg.eval.every:  # k-NN on a held-out labelled set every eval.every steps (mimjax/train/knn_eval.py)
        try:
            knn = knn_eval.KnnEval(cfg.eval, encoder=enc, par=par, img_size=enc.img_size,
                                   process_index=jax.process_index(), process_count=jax.process_count())
        except ValueError as e:
            raise config_lib.ConfigError(f"config.eval.dataset={cfg.eval.dataset!r}: {e}") from e

    # --- Loop (a `loop.Run`: lock, restore or initialise, writers, checkpoints, SIGTERM) ---
    # A fixed set of images for the PNGs, the same on every process.
    snap_images = next(data.make_iterator(cfg.data, img_size=enc.img_size, global_batch_size=min(4, cfg.batch_size),
                                          seed=cfg.seed + 1))["image"]
    n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
    log.info("model %s: %.1fM params, %d patches; %d steps (%d/epoch), batch %d on %d device(s); %s",
             cfg.model.name, n_params / 1e6, enc.num_patches, schedule.total_steps,
             schedule.steps_per_epoch, cfg.batch_size, len(devices),
             schedule_lib.describe_learning_rate(cfg.optimizer, cfg.batch_size))

    def write_snapshot(step, state, writer):  # every process computes (collectives), process 0 writes
        g = par.to_global(state)
        progress = schedule.progress(step, cfg.masking.progress)
        mask_at = pictures.other_progress(progress)  # the last column: a mask the input's column does not show
        out = snapshot_fn(g.params, g.ema_params, frozen_teacher, snap_images, snap_key, progress, mask_at)
        if is_main:
            grid = snapshot_grid(cfg, enc, snap_images, out, mask_at=mask_at)
            pictures.save_png(paths.join(workdir, "snapshots", f"step_{step:07d}.png"), grid)
            writer.write_images(step, {"reconstruction": grid})

    step_flops = flops.step_flops(flops.Arch.from_config(cfg), flops.method_of(cfg))["total"] * cfg.batch_size
    with loop.Run(workdir, cfg, name="pre-training", schedule=schedule, par=par, abstract_state=abstract,
                  init_state=lambda: par.init_state(init_state), iterator=it, flops_per_step=step_flops) as run:
        state = run.start_state
        teacher, key = run.replicate((frozen_teacher, step_key))  # explicit, once: the guard allows no transfer
        for step, batch in run.batches():  # until total_steps, or a preemption notice
            with run.step(step):  # under the transfer guard; then the preemption sync point
                if step == run.start_step + 1:  # compiled here, its memory analysis kept (goodput.json)
                    step_fn = step_lib.compiled_once(run.aot(step_fn, state, batch, teacher, key))
                state, m = step_fn(state, batch, teacher, key)
            row = run.log(step, m, skipped_images=it.num_skipped)  # every log_every steps, else None
            if row and row["nonfinite_steps"]:
                _halt_if_nonfinite(cfg, par, state, run.ckpt)
            run.profile(step, (state, m))
            if knn is not None and step % cfg.eval.every == 0:  # only reads the state: the same trajectory
                with run.phase("evaluation"):
                    run.writer.write_scalars(step, knn(step, state))
            if run.should_save(step):  # (preempted or the last step: saved below)
                _halt_if_nonfinite(cfg, par, state, run.ckpt)
                run.save(step, state)
            if cfg.snapshot_every and step % cfg.snapshot_every == 0:
                with run.phase("snapshots"):
                    write_snapshot(step, state, run.writer)
        if run.final_save_due:
            _halt_if_nonfinite(cfg, par, state, run.ckpt)
            run.save(run.steps_done, state, final=True)
        with run.phase("snapshots"):
            write_snapshot(run.steps_done, state, run.writer)
        if is_main and paths.exists(paths.join(workdir, "metrics.jsonl")):
            pictures.plot_curves(paths.join(workdir, "metrics.jsonl"), paths.join(workdir, "curves.png"))
    return run.last_row
