"""What every training loop shares (pre-training, linear probe, fine-tuning): a `Run`.

Each trainer writes its own loop on it, read top to bottom (mimjax/train/pretrain.py,
mimjax/eval/classify.py):

    with loop.Run(workdir, cfg, name=..., schedule=..., par=..., abstract_state=...,
                  init_state=..., iterator=...) as run:  # lock, config check, restore or init
        state = run.start_state
        args = run.replicate(args)  # the step's extra arguments, on every device, once
        for step, batch in run.batches():  # until total_steps or a preemption notice
            with run.step(step):  # the transfer guard, the profiler window, preemption sync
                state, metrics = step_fn(state, batch, *args)
            run.log(step, metrics)  # a row every `log_every` steps (the only host sync)
            run.profile(step, (state, metrics))
            if run.should_save(step):
                run.save(step, state)
        if run.final_save_due:
            run.save(run.steps_done, state, final=True)
    # leaving: checkpoints finished, writers closed, the lock released; Ctrl-C raises here

Entering takes the run lock and compares the config with the run being resumed, restores
the latest checkpoint and the input iterator's position (or initialises), and only then
writes config.json. Leaving waits for the last checkpoint and closes everything, whatever
happened; a full disk while writing metrics or pictures is a `DiskFullError` there too. A
checkpoint that cannot be written stops the run after the step in which its save failed
(`Checkpointer.check`: a `WriteError`, exit 4).

Every log row also carries the window's step time, input wait and (with the step's FLOPs
and the device's peak) TFLOP/s per device and MFU; leaving appends this process's goodput
(where its wall time went) to W/goodput.json (`mimjax.train.telemetry`). Callers mark their
own non-step work with `run.phase("evaluation")` / `run.phase("snapshots")`.

SIGTERM (preemption) stops `batches()` between steps: the loop saves the current step
(`final_save_due`), leaves normally (the command exits 0) with `preempted` set, and
rerunning the command resumes there. SIGINT (Ctrl-C) saves the same way, then leaving
raises `mimjax.errors.Interrupted` (exit 130, one line); a second Ctrl-C exits at once
without waiting for the save.

The step runs under `jax.transfer_guard("disallow")`: every host <-> device or device <->
device transfer around it is explicit (`device_put` of batches by the prefetcher, of the
step's extra arguments by `replicate`, `device_get` of metrics at log rows), so an
accidental one, e.g. a Python scalar or NumPy array passed to the step, raises instead of
silently syncing.
"""
from __future__ import annotations

import contextlib
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
from mimjax.train import metrics, telemetry
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
    leaving the `Run` ends normally (SIGTERM) or raises `Interrupted` (SIGINT, exit 130). A
    second Ctrl-C does not wait for the save: the process exits 130 at once (os._exit),
    keeping the last complete checkpoint (an unfinished one is never taken as the latest).

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


def start(workdir: str, cfg, flag: str = "--workdir", outputs=()) -> tuple[workdir_lib.RunLock | None, list]:
    """Before anything is written (process 0 does it, every process learns the outcome):
    takes the run lock (mimjax.workdir.RunLock), checks that no file the run writes is a
    symbolic link and that checkpoints/ can be written (mimjax.workdir.check_writable;
    `outputs`: the run's result files) and compares `cfg` with the config of a run that has a
    checkpoint (mimjax.workdir.check_resume: a changed key outside `workdir.SAFE` is a
    ConfigError naming both values; safe ones are logged). Returns the lock (None on the
    other processes) and the safe changes; config.json and the history are written by `Run`
    once the checkpoint and the input iterator accepted the config."""
    def check():
        lock = None
        try:
            try:
                lock = workdir_lib.RunLock.acquire(workdir)
            except OSError as e:
                raise ConfigError(f"workdir {workdir!r} is not writable: {e}") from e
            workdir_lib.check_writable(workdir, flag, outputs)
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


class Run:
    """A run (or its resumption) in `workdir`, used as a context manager; see the module
    docstring for the loop it serves.

    cfg: log_every, checkpoint_every, keep_checkpoints, batch_size, seed, data.prefetch, and
    optionally `writers`, `wandb` (mimjax.train.writers; default "jsonl,tensorboard") and
    `profile` (start_step, num_steps: a jax.profiler trace of those steps into workdir/tb).
    name: what the log calls the run; flag: the command's flag for `workdir` (in messages);
    outputs: the names of the files the trainer writes in `workdir` after the loop (checked
    with the run's own at the start: no symbolic link is written through).
    flops_per_step: the analytic FLOPs of one global step (`mimjax.flops`; None: the rows
    leave out tflops_per_device and mfu).
    schedule: total_steps and steps_per_epoch. par: a `mimjax.parallel` runner (shardings,
    batch placement, global <-> run layout). abstract_state: the state's shapes (global
    layout); init_state() -> a fresh state in the run layout (called when nothing is
    restored). iterator: the host input (get_state / set_state: a resumed run continues
    where its checkpoint was).
    """

    def __init__(self, workdir: str, cfg, *, name: str, flag: str = "--workdir", schedule, par, abstract_state,
                 init_state: Callable[[], Any], iterator, outputs=(), flops_per_step: float | None = None):
        self.workdir = paths.absolute(workdir)  # (gs://... unchanged)
        self.cfg, self.name, self.flag, self.schedule, self.par = cfg, name, flag, schedule, par
        self.outputs = (*outputs, telemetry.GOODPUT)
        t = cfg.get("telemetry") or {}
        on_cpu = jax.default_backend() == "cpu"  # the step and the input share the cores: no advice to give
        self.telemetry = telemetry.Telemetry(
            flops_per_step=flops_per_step, peak=telemetry.device_peak_flops(cfg), devices=jax.device_count(),
            warn_frac=1.0 if on_cpu else t.get("input_warn_frac", 0.1), threads=getattr(iterator, "num_threads", 0))
        self._abstract, self._init_state, self._iterator = abstract_state, init_state, iterator
        self._lock = self.ckpt = self.writer = self._profile = self._bar = self._preemption = None

    def __enter__(self) -> Run:
        self._lock, changes = start(self.workdir, self.cfg, self.flag, self.outputs)
        try:
            self._restore_or_init(changes)
            cfg, is_main = self.cfg, jax.process_index() == 0
            self._batches = data.DevicePrefetcher(self._iterator, cfg.data.prefetch, put=self.par.put_batch)
            self.writer = metrics.MetricWriter(
                self.workdir, enabled=is_main, writers=cfg.get("writers", "jsonl,tensorboard"), wandb=cfg.get("wandb"),
                hparams=cfg.to_dict() if hasattr(cfg, "to_dict") else None,
                resume_step=self.start_step)  # rows after `start_step` are replayed: the old ones go
            self._profile = _ProfileWindow(cfg.get("profile"), paths.join(self.workdir, "tb"))
            self._bar = metrics.ProgressBar(self.schedule.total_steps, self.start_step, enabled=is_main)
            self._throughput = metrics.Throughput(cfg.batch_size)
            self._preemption = _Preemption(self.start_step)
        except BaseException:
            self._shut_down()
            raise
        self.steps_done, self.last_row, self._pending = self.start_step, {}, []
        self._throughput.start(self.start_step)
        return self

    def _restore_or_init(self, changes):
        """The latest checkpoint and the input position (or init_state()), then config.json."""
        self.ckpt = Checkpointer(workdir_lib.checkpoints_dir(self.workdir), keep=self.cfg.keep_checkpoints)
        restored = self.ckpt.restore_latest(jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), self._abstract, self.par.state_sharding))
        self._fresh = restored is None
        if restored is not None:
            self.start_step, state, data_state = restored
            self.start_state = self.par.from_global(state)
            try:
                self._iterator.set_state(data_state)
            except ValueError as e:  # another seed or batch size than the run being resumed
                raise ConfigError(f"config.batch_size={self.cfg.batch_size}, seed={self.cfg.seed}: cannot resume "
                                  f"{self.workdir} ({e}); use the run's own values or a new output directory") from e
            log.info("%s resumed from step %d in %s", self.name, self.start_step, self.ckpt.directory)
        else:
            self.start_step, self.start_state = 0, self._init_state()
        # Every check passed (config, checkpoint, input position): only now is the config written.
        _on_process_0(f"write the config of {self.workdir}", lambda: write_config(self.workdir, self.cfg, changes))
        if self.start_step >= self.schedule.total_steps:
            log.info("nothing to do: step %d >= total_steps %d", self.start_step, self.schedule.total_steps)

    def replicate(self, tree):
        """`tree` (arrays or None, the same on every process) on every device, explicitly:
        the transfer guard of `step` allows no implicit transfer of a step's arguments."""
        return multihost_utils.host_local_array_to_global_array(tree, self.par.replicated.mesh, P())

    def batches(self):
        """(step, batch) for the steps start_step+1 .. total_steps, the batch on device (placed
        by the prefetcher: device_put, or assembled across processes); stops early once a
        preemption notice or Ctrl-C came (`preempted`)."""
        while self.steps_done < self.schedule.total_steps and not self.preempted:
            with self.telemetry.waiting_for_input():
                batch = next(self._batches)
            yield self.steps_done + 1, batch
        self.telemetry.after_loop()

    @contextlib.contextmanager
    def step(self, step: int):
        """Around step `step`: the profiler window, the transfer guard; then the preemption
        sync point (several processes: the same stopping step on all)."""
        self._profile.before_step(step - 1)
        with self.telemetry.step(step), jax.transfer_guard("disallow"):
            yield
        self.steps_done = step
        self.ckpt.check()  # a background save that failed stops the run here, not at the next save
        self._preemption.check(step)

    def log(self, step: int, step_metrics: dict, **fields) -> dict | None:
        """Keeps the step's metrics (on device); every `log_every` steps and at the last step,
        writes the mean of those kept, with images_per_sec, epoch and `fields`, as a row of
        metrics.jsonl (and the other writers) and returns it; None between rows."""
        self._pending.append(step_metrics)
        if step % self.cfg.log_every != 0 and step != self.schedule.total_steps:
            return None
        host = jax.device_get([self.par.host_metrics(p) for p in self._pending])  # the only host sync
        row = {k: float(np.mean([p[k] for p in host])) for k in host[0]}
        row["images_per_sec"] = self._throughput.update(step)
        row["epoch"] = step / self.schedule.steps_per_epoch
        row.update(self.telemetry.row(len(self._pending)), **fields)
        self.writer.write(step, row)
        shown = {label: f"{100 * row[k]:.0f}%" for k, label in (("input_wait_frac", "input wait"), ("mfu", "MFU"))
                 if k in row}
        self._bar.update(step, images_per_sec=row["images_per_sec"], loss=row["loss"], **shown)
        self._pending, self.last_row = [], row
        return row

    def phase(self, name: str):
        """A context that charges its time to goodput part `name` ("evaluation", "snapshots")."""
        return self.telemetry.phase(name)

    def aot(self, step_fn, *args):
        """`step_fn` compiled ahead of time for `args` (the first step's): the compiler's
        memory analysis is kept for the goodput's plan check; returns the compiled program,
        called like step_fn (a backend without ahead-of-time compilation: step_fn itself)."""
        from mimjax import flops

        try:
            compiled = step_fn.lower(*args).compile()
        except (AttributeError, NotImplementedError):
            return step_fn
        memory = flops.xla_memory(compiled)
        self.telemetry.compiled_bytes = None if memory is None else memory["total"]
        return compiled

    def profile(self, step: int, outputs):
        """After step `step`: ends the profiler window at its last step, once `outputs` are ready."""
        self._profile.after_step(step, outputs)

    @property
    def preempted(self) -> bool:
        """A preemption notice (SIGTERM) or Ctrl-C came: the loop stops and saves its step."""
        return self._preemption.requested

    def should_save(self, step: int) -> bool:
        """Whether step `step` is a periodic checkpoint (every `checkpoint_every` steps; not the
        last step nor a preempted one: those are saved after the loop, `final_save_due`)."""
        return step % self.cfg.checkpoint_every == 0 and step < self.schedule.total_steps and not self.preempted

    @property
    def final_save_due(self) -> bool:
        """After the loop: whether its last step needs a checkpoint (a step ran, or a fresh run)."""
        return self.steps_done > self.start_step or self._fresh

    def save(self, step: int, state, *, final: bool = False):
        """Checkpoints `state` at `step` with the input position (asynchronously); the metric
        rows up to it are flushed first (object stores buffer them). final: the save after the
        loop, even off the `checkpoint_every` cadence."""
        with self.telemetry.phase("checkpoint"):
            self.writer.flush()
            self.ckpt.save(step, self.par.to_global(state), self._batches.get_state(), force=final)
            if not final:  # the segment so far survives a kill (leaving writes the last one)
                self._write_goodput(None, ended="running")

    def __exit__(self, kind, error, traceback):
        self._write_goodput(error)
        try:
            if isinstance(error, OSError) and is_disk_full(error):  # metrics or pictures: say so like a checkpoint
                raise self.ckpt.save_error(None, error) from error
        finally:
            self._shut_down()
        if error is None and self._preemption.interrupted:  # the CLI prints this as its one line, exit 130
            raise Interrupted(f"interrupted (Ctrl-C): saved step {self.steps_done} in {self.ckpt.directory}; "
                              f"the same command resumes")
        if error is None and self.preempted:
            log.warning("preempted at step %d: checkpoint saved in %s", self.steps_done, self.ckpt.directory)

    def _write_goodput(self, error, ended: str = ""):
        """This process's segment of W/goodput.json (process 0); a failure to write it is a warning."""
        if jax.process_index() != 0:
            return
        ended = ended or (("interrupted" if self._preemption.interrupted else "preempted" if self.preempted
                           else "finished") if error is None else f"error ({type(error).__name__})")
        try:
            self.telemetry.write(self.workdir, ended, show=ended != "running")
        except OSError as e:
            log.warning("goodput.json not written: %s", e)

    def _shut_down(self):
        """The profiler stopped, checkpoints finished (a full disk in the last async save
        raises DiskFullError), writers closed, signal handlers back, the lock released: each
        whatever the others raised (those not started yet are skipped)."""
        with contextlib.ExitStack() as stack:  # the callbacks run last to first
            for part, method in ((self._lock, "release"), (self._preemption, "restore"), (self._bar, "close"),
                                 (self.writer, "close"), (self.ckpt, "close"), (self.ckpt, "wait"),
                                 (self._profile, "stop")):
                if part is not None:
                    stack.callback(getattr(part, method))
