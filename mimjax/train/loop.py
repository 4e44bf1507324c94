"""The run loop every trainer shares (pre-training, linear probe, fine-tuning), read top to
bottom (big_vision style):

    lock + config check -> restore or initialise (the input iterator's position checked)
    -> config.json (nothing is written before) -> input on device -> steps, with a log row every
    `log_every` steps (the only host sync) and a checkpoint every `checkpoint_every`
    -> final checkpoint -> `at_end` -> shutdown (checkpoints finished, writers closed).

What differs between trainers comes in as arguments: the step and its extra arguments,
the state's shape and how to initialise it, and a few hooks (pre-training adds
`skipped_images` to the log rows, halts on non-finite steps, checks that the step compiled
once and writes reconstruction PNGs; the classifiers evaluate on the test split at the end).

SIGTERM (preemption) stops the loop between steps: the current step is checkpointed, `run`
returns normally (the command exits 0) with `preempted` set, and rerunning the command
resumes there. SIGINT (Ctrl-C) saves the same way, then raises `mimjax.errors.Interrupted`
(exit 130, one line); a second Ctrl-C exits at once without waiting for the save.

The step runs under `jax.transfer_guard("disallow")`: every host <-> device or device <->
device transfer around it is explicit (`device_put` of batches by the prefetcher and of the
step's extra arguments below, `device_get` of metrics at log points), so an accidental one,
e.g. a Python scalar or NumPy array passed to the step, raises instead of silently syncing.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from mimjax import data, paths
from mimjax import workdir as workdir_lib
from mimjax.errors import Interrupted
from mimjax.schema import ConfigError
from mimjax.train import metrics
from mimjax.train.checkpoint import Checkpointer, is_disk_full

log = logging.getLogger("mimjax")


class _ProfileWindow:
    """`cfg.profile` (start_step, num_steps): a jax.profiler trace of the steps start_step+1 ..
    start_step+num_steps into `logdir` (TensorBoard's profile plugin reads
    plugins/profile/<run>/ there); the window's last step is awaited before the trace stops.
    No `profile`: nothing is traced."""

    def __init__(self, prof, logdir: str):
        self.first, self.steps = (int(prof.start_step), int(prof.num_steps)) if prof is not None else (0, 0)
        self.logdir, self.on = logdir, False

    def before_step(self, step: int):
        if self.steps and step == self.first and not self.on:
            jax.profiler.start_trace(self.logdir)
            self.on = True

    def after_step(self, step: int, outputs):
        if self.on and step >= self.first + self.steps:
            jax.block_until_ready(outputs)  # the window's last step is complete in the trace
            self.stop()
            log.info("profiled steps %d-%d: %s", self.first + 1, step, paths.join(self.logdir, "plugins", "profile"))

    def stop(self):
        if self.on:
            jax.profiler.stop_trace()
            self.on = False


class _Preemption:
    """SIGTERM and SIGINT (Ctrl-C) stop the loop between steps: save the current step, then
    `run` returns normally (SIGTERM) or raises `Interrupted` (SIGINT, exit 130). A second
    Ctrl-C does not wait for the save: the process exits 130 at once (os._exit), keeping the
    last complete checkpoint (an unfinished one is never taken as the latest).

    One process: the signal sets a flag. Several (jax.distributed): every process must save
    the same step, or they hang in the save's collectives. SIGTERM then belongs to JAX's
    preemption sync manager (its C++ handler, installed by `jax.distributed.initialize`; no
    Python handler here, which would replace it): a SIGTERM on any process is a notice to all,
    and `check(step)` (called after every step on every process) turns true on all of them
    at one step, 1 + the furthest step any had reached. Ctrl-C on one process is that
    process's preemption notice (it sends itself SIGTERM): all save that step, the
    interrupted process exits 130, the others 0; a second Ctrl-C quits at once (the others
    are then ended by the runtime, see mimjax/parallel/distributed.py)."""

    def __init__(self, step: int = 0):
        from mimjax.parallel import distributed

        self.requested = self.interrupted = False
        self.synced = distributed.preemption_sync()
        if self.synced:  # a notice before the first step then stops all at step + 1, not at 1
            distributed.reached_sync_point(step)
        signals = (signal.SIGINT,) if self.synced else (signal.SIGTERM, signal.SIGINT)
        if jax.process_count() > 1 and not self.synced:
            log.warning("JAX's preemption service is off (jax_enable_preemption_service): a SIGTERM on one "
                        "process is not seen by the others")
        self._old = {s: signal.signal(s, self._handle) for s in signals}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT:
            if self.interrupted:
                import sys

                print("mimjax: interrupted again (Ctrl-C): exiting without waiting for the save; the last "
                      "complete checkpoint is kept", file=sys.stderr, flush=True)
                os._exit(130)
            self.interrupted = True
            log.warning("Ctrl-C received: saving a checkpoint at the current step and exiting "
                        "(Ctrl-C again quits without waiting)")
            if self.synced:  # a preemption notice to every process, through JAX's SIGTERM handler
                os.kill(os.getpid(), signal.SIGTERM)
                return
        else:
            log.warning("SIGTERM received: saving a checkpoint and exiting")
        self.requested = True

    def check(self, step: int) -> bool:
        """After step `step` (every step, every process): whether to stop and save here."""
        if self.synced and not self.requested:
            from mimjax.parallel import distributed

            if distributed.reached_sync_point(step):
                self.requested = True
                log.warning("preemption notice: all %d processes save step %d and stop", jax.process_count(),
                            step)
        return self.requested

    def restore(self):
        for s, old in self._old.items():
            signal.signal(s, old)


def write_config(workdir: str, cfg, changes: tuple = ()) -> None:
    """workdir/config.json and a line of workdir/config_history.jsonl (process 0); an
    unwritable workdir is a ConfigError."""
    try:
        paths.makedirs(workdir)
        if jax.process_index() == 0:
            workdir_lib.write_config_history(workdir, cfg, list(changes))
            workdir_lib.write_config(workdir, cfg)
    except OSError as e:
        raise ConfigError(f"workdir {workdir!r} is not writable: {e}") from e


def _on_process_0(what: str, fn: Callable[[], Any]):
    """fn() on process 0; every process learns whether it raised (then raises: process 0
    its own error, the others a ConfigError pointing at process 0's log)."""
    out, error = None, None
    if jax.process_index() == 0:
        try:
            out = fn()
        except BaseException as e:  # noqa: BLE001 - the other processes learn it below, then it is re-raised
            error = e
    if jax.process_count() > 1:
        ok = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not ok and error is None:
            error = ConfigError(f"process 0 could not {what} (its log says why)")
    if error is not None:
        raise error
    return out


def start(workdir: str, cfg, flag: str = "--workdir") -> tuple[workdir_lib.RunLock | None, list]:
    """Before anything is written (process 0 does it, every process learns the outcome):
    takes the run lock (mimjax.workdir.RunLock) and compares `cfg` with the config of a run
    that has a checkpoint (mimjax.workdir.check_resume: a changed key outside
    `workdir.SAFE` is a ConfigError naming both values; safe ones are logged). Returns the
    lock (None on the other processes) and the safe changes; config.json and the history
    are written by `_run` once the checkpoint and the input iterator accepted the config."""
    def check():
        lock = None
        try:
            try:
                lock = workdir_lib.RunLock.acquire(workdir)
            except OSError as e:
                raise ConfigError(f"workdir {workdir!r} is not writable: {e}") from e
            changes = workdir_lib.check_resume(workdir, cfg, flag)
            if changes:
                log.warning("resuming %s with a changed config: %s", workdir, "; ".join(changes))
            return lock, changes
        except BaseException:
            if lock is not None:
                lock.release()
            raise

    lock, changes = _on_process_0(f"start the run in {workdir}", check) or (None, [])
    return lock, changes


def run(workdir: str, cfg, **kwargs) -> Outcome:
    """`_run` (below: the loop and its arguments) in `workdir`, holding the run lock from
    `start` until it returns or raises."""
    workdir = paths.absolute(workdir)  # (gs://... unchanged)
    lock, changes = start(workdir, cfg, "--workdir" if kwargs.get("name") == "pre-training" else "--out")
    try:
        return _run(workdir, cfg, changes=changes, **kwargs)
    finally:
        if lock is not None:
            lock.release()


@dataclasses.dataclass
class Outcome:
    state: Any  # the train state after the last step (the layout `par` runs it in)
    step: int  # steps taken, counting those before a resume
    last: dict  # the last log row ({} if nothing was logged)
    preempted: bool  # SIGTERM stopped the run early (the step is checkpointed)
    end: Any  # what `at_end` returned


def _run(workdir: str, cfg, *, changes: list = (), name: str, schedule, par, abstract_state, init_state: Callable[[], Any],
        step_fn: Callable, step_args: tuple, iterator,
        log_fields: Callable[[], dict] | None = None,
        on_log: Callable[[int, dict, Any, Checkpointer], None] | None = None,
        before_save: Callable[[Any, Checkpointer], None] | None = None,
        after_step: Callable[[int, Any, metrics.MetricWriter], None] | None = None,
        at_end: Callable[[int, Any, metrics.MetricWriter, bool], Any] | None = None,
        evaluate: Callable[[int, Any], dict] | None = None, eval_every: int = 0) -> Outcome:
    """Runs (or resumes) `step_fn` in `workdir` until `schedule.total_steps`.

    cfg: log_every, checkpoint_every, keep_checkpoints, batch_size, seed, data.prefetch.
    par: a `mimjax.parallel` runner (shardings, batch placement, global <-> run layout).
    abstract_state: the state's shapes (global layout); init_state() -> a fresh state in
    the run layout. step_fn(state, batch, *step_args) -> (state, metrics) (compiled by
    `par`); step_args (arrays or None, the same on every process) are placed on every
    device (replicated) once, here. iterator: the
    host input (get_state / set_state, a resumed run continues where the checkpoint was).

    Hooks: log_fields() -> extra fields of a log row; on_log(step, row, state, ckpt) after
    a row is written (may raise to stop the run); before_save(state, ckpt) before every
    checkpoint; after_step(step, state, writer) after every step; at_end(step, state,
    writer, preempted) after the final checkpoint, its result is `Outcome.end`.
    evaluate(step, state) -> {name: scalar} every `eval_every` steps (0: never), on every
    process (it may use collectives), written as a row of its own; it must only read the
    state (the trajectory is the same with and without it).

    cfg may also hold `writers` and `wandb` (mimjax.train.writers; default
    "jsonl,tensorboard") and `profile` (start_step, num_steps): a jax.profiler trace of
    those steps into workdir/tb (`_ProfileWindow`).
    """
    workdir, is_main = paths.absolute(workdir), jax.process_index() == 0  # `run` has checked the config

    # --- Restore or initialise ------------------------------------------------------
    ckpt = Checkpointer(workdir_lib.checkpoints_dir(workdir), keep=cfg.keep_checkpoints)
    restored = ckpt.restore_latest(jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                                abstract_state, par.state_sharding))
    if restored is not None:
        start, state, data_state = restored
        state = par.from_global(state)
        try:
            iterator.set_state(data_state)
        except ValueError as e:  # another seed or batch size than the run being resumed
            ckpt.close()
            raise ConfigError(f"config.batch_size={cfg.batch_size}, seed={cfg.seed}: cannot resume {workdir} "
                              f"({e}); use the run's own values or a new output directory") from e
        log.info("%s resumed from step %d in %s", name, start, ckpt.directory)
    else:
        start = 0
        state = init_state()
    try:  # every check passed (config, checkpoint, input position): only now is the config written
        _on_process_0(f"write the config of {workdir}", lambda: write_config(workdir, cfg, changes))
    except BaseException:
        ckpt.close()
        raise
    if start >= schedule.total_steps:
        log.info("nothing to do: step %d >= total_steps %d", start, schedule.total_steps)
    batches = data.DevicePrefetcher(iterator, cfg.data.prefetch, put=par.put_batch)  # explicit device_put
    # Explicit, once: the same values on every device of every process (the guard below allows no transfer).
    step_args = multihost_utils.host_local_array_to_global_array(step_args, par.replicated.mesh, P())

    # --- Loop -----------------------------------------------------------------------
    writer = metrics.MetricWriter(workdir, enabled=is_main, writers=cfg.get("writers", "jsonl,tensorboard"),
                                  wandb=cfg.get("wandb"), hparams=cfg.to_dict() if hasattr(cfg, "to_dict") else None,
                                  resume_step=start)  # rows after `start` are replayed: the old ones go
    profile = _ProfileWindow(cfg.get("profile"), paths.join(workdir, "tb"))
    bar = metrics.ProgressBar(schedule.total_steps, start, enabled=is_main)
    throughput = metrics.Throughput(cfg.batch_size)
    preempt = _Preemption(start)
    pending, last, step, end = [], {}, start, None

    def save(step, force=False):
        if before_save is not None:
            before_save(state, ckpt)
        writer.flush()  # rows up to a checkpoint are durable before it is (object stores buffer them)
        ckpt.save(step, par.to_global(state), batches.get_state(), force=force)

    try:
        throughput.start(step)
        while step < schedule.total_steps and not preempt.requested:
            batch = next(batches)  # placed by the prefetcher (device_put, or assembled across processes)
            profile.before_step(step)
            with jax.transfer_guard("disallow"):
                state, m = step_fn(state, batch, *step_args)
            step += 1
            preempt.check(step)  # several processes: JAX's preemption sync point, the same step on all
            pending.append(m)
            if step % cfg.log_every == 0 or step == schedule.total_steps:
                host = jax.device_get([par.host_metrics(p) for p in pending])  # the only host sync
                last = {k: float(np.mean([p[k] for p in host])) for k in host[0]}
                last["images_per_sec"] = throughput.update(step)
                last["epoch"] = step / schedule.steps_per_epoch
                if log_fields is not None:
                    last.update(log_fields())
                writer.write(step, last)
                bar.update(step, images_per_sec=last["images_per_sec"], loss=last["loss"])
                pending = []
                if on_log is not None:
                    on_log(step, last, state, ckpt)
            profile.after_step(step, (state, m))
            if evaluate is not None and eval_every and step % eval_every == 0:
                writer.write_scalars(step, evaluate(step, state))
            if step % cfg.checkpoint_every == 0 and step < schedule.total_steps and not preempt.requested:
                save(step)  # (preempted: the save after the loop)
            if after_step is not None:
                after_step(step, state, writer)
        if step > start or restored is None:
            save(step, force=True)
        if at_end is not None:
            end = at_end(step, state, writer, preempt.requested)
    except OSError as e:  # a full disk while writing metrics or pictures: say so, like a checkpoint would
        if is_disk_full(e):
            raise ckpt.disk_full_error(None, e) from e
        raise
    finally:
        profile.stop()
        try:
            ckpt.wait()  # raises DiskFullError if the last async save ran out of space
        finally:
            ckpt.close()
            writer.close()
            bar.close()
            preempt.restore()
    if preempt.interrupted:  # after the save and the shutdown: the CLI prints this as its one line, exit 130
        raise Interrupted(f"interrupted (Ctrl-C): saved step {step} in {ckpt.directory}; the same command resumes")
    if preempt.requested:
        log.warning("preempted at step %d: checkpoint saved in %s", step, ckpt.directory)
    return Outcome(state, step, last, preempt.requested, end)
