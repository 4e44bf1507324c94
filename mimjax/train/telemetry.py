"""Where a run's time goes: per log row and per process, measured on the host with the
monotonic clock and no extra device sync (a `mimjax.train.loop.Run` owns one).

Per row (metrics.jsonl, TensorBoard, W&B; the progress line shows them too):
- `step_time_s`: wall time of the window since the previous row / its steps;
- `input_wait_frac`: the share of that window the loop spent blocked on the next batch;
- `tflops_per_device`: the step's analytic FLOPs (`mimjax.flops`) x steps/s / devices;
- `mfu`: that against the device's dense bf16 peak (`mimjax.parallel.targets.CHIPS`), or
  `telemetry.peak_tflops` when set; left out where neither is known (the CPU).
Every WARN_ROWS rows, when the loop waited for input more than `telemetry.input_warn_frac`
of their time, one warning line says so (on an accelerator: on the CPU the step and the
input share the same cores, and the rows' input_wait_frac is all there is to say).

Goodput: every moment of this process, from its start, is charged to one part: startup (to
the first step), compile (the first step's call, which compiles it), steps, input (waiting
for a batch), checkpoint (the blocking part of a save), evaluation, snapshots, other (after
the loop, and anything unnamed). The parts, the wall time and the plan check (the measured
step time against the 100% / 50% MFU bounds; peak device memory in use against the
compiler's prediction for the step) are this process's segment of `W/goodput.json`, one
segment per process start: written at every checkpoint ("running": a process killed with
-9 keeps its segment up to its last checkpoint) and at the end of the run, a preemption or
Ctrl-C, when it is also printed as a short table.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid

from mimjax import paths

log = logging.getLogger("mimjax")
PARTS = ("startup", "compile", "steps", "input", "checkpoint", "evaluation", "snapshots", "other")
GOODPUT = "goodput.json"
WARN_ROWS = 10  # log rows per input-wait warning window
_IMPORTED = time.monotonic()


def process_age_s() -> float:
    """Seconds since this process started (Linux: /proc; elsewhere since this module's import)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, after the command name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


def device_peak_flops(cfg) -> float | None:
    """FLOP/s per device for `mfu`: telemetry.peak_tflops when > 0, else the device's known peak."""
    import jax

    from mimjax import flops

    t = cfg.get("telemetry") or {}
    if t.get("peak_tflops", 0.0) > 0:
        return float(t["peak_tflops"]) * 1e12
    return flops.peak_flops(jax.devices()[0].device_kind)


class Telemetry:
    """The run's timers. flops_per_step: the analytic FLOPs of one global step (None: no
    tflops / mfu); peak: FLOP/s per device (None: no mfu); devices: how many share a step;
    warn_frac: the input-wait share that logs a warning; threads: what the warning names."""

    def __init__(self, *, flops_per_step: float | None, peak: float | None, devices: int, warn_frac: float,
                 threads: int = 0):
        self.flops_per_step, self.peak, self.devices, self.warn_frac = flops_per_step, peak, devices, warn_frac
        self.threads = threads
        now = time.monotonic()
        self.started = now - process_age_s()
        self.parts, self._phase, self._since = dict.fromkeys(PARTS, 0.0), "startup", self.started
        self._window_start, self._window_wait, self._steps_run = now, 0.0, 0
        self._warn = [0, 0, 0.0, 0.0]  # rows, steps, seconds and input-wait seconds since the last check
        self.compiled_bytes: int | None = None  # the compiler's memory analysis of the step, per device
        self.first_step = self.last_step = None
        self.id = uuid.uuid4().hex  # this process's segment

    # --- phases ------------------------------------------------------------------------
    def _switch(self, phase: str) -> str:
        now = time.monotonic()
        self.parts[self._phase] += now - self._since
        old, self._phase, self._since = self._phase, phase, now
        return old

    @contextlib.contextmanager
    def phase(self, name: str):
        """Charges the block's time to `name` (one of PARTS), then back to the part before."""
        old = self._switch(name)
        try:
            yield
        finally:
            self._switch(old)

    @contextlib.contextmanager
    def waiting_for_input(self):
        start = time.monotonic()
        with self.phase("input"):
            yield
        self._window_wait += time.monotonic() - start

    @contextlib.contextmanager
    def step(self, step: int):
        """Step `step`'s call: the first of this process compiles it; the loop is "steps"."""
        first = self.first_step is None
        if first:
            self.first_step = step
            self._switch("steps")
        with self.phase("compile") if first else contextlib.nullcontext():
            yield
        self.last_step, self._steps_run = step, self._steps_run + 1

    def after_loop(self):
        self._switch("other")

    # --- rows --------------------------------------------------------------------------
    def row(self, steps: int) -> dict:
        """The fields of a log row closing a window of `steps` steps (and a new window)."""
        now = time.monotonic()
        window = max(now - self._window_start, 1e-9)
        out = {"step_time_s": window / max(steps, 1), "input_wait_frac": min(1.0, self._window_wait / window)}
        if self.flops_per_step:
            out["tflops_per_device"] = self.flops_per_step / out["step_time_s"] / self.devices / 1e12
            if self.peak:
                out["mfu"] = out["tflops_per_device"] * 1e12 / self.peak
        self._check_input(steps, window, self._window_wait)
        self._window_start, self._window_wait = now, 0.0
        return out

    def _check_input(self, steps: int, seconds: float, waited: float):
        """Every WARN_ROWS rows: one warning when their input wait exceeds warn_frac."""
        w = self._warn
        w[0], w[1], w[2], w[3] = w[0] + 1, w[1] + steps, w[2] + seconds, w[3] + waited
        if w[0] < WARN_ROWS:
            return
        if w[3] > self.warn_frac * w[2]:
            log.warning("input: the step waited for data %.0f%% of the last %d steps (%d reader threads, %d cores): "
                        "prepare smaller images (mimjax prepare imagenet --max_side) or add cores",
                        100 * w[3] / w[2], w[1], self.threads, os.cpu_count() or 1)
        self._warn = [0, 0, 0.0, 0.0]

    # --- goodput -----------------------------------------------------------------------
    def segment(self, ended: str) -> dict:
        """This process's goodput so far: parts, wall time and the plan check."""
        self._switch(self._phase)
        wall = time.monotonic() - self.started
        seg = {"id": self.id, "ended": ended, "timestamp": time.time(), "wall_s": wall,  # timestamp: when written
               "parts_s": dict(self.parts), "steps": self._steps_run, "first_step": self.first_step,
               "last_step": self.last_step}
        if self._steps_run > 1:  # the steps part over the steps after the compiled one
            seg["step_time_s"] = self.parts["steps"] / (self._steps_run - 1)
        plan = {"compiled_bytes_per_device": self.compiled_bytes, "peak_bytes_in_use": peak_memory()}
        if self.flops_per_step and self.peak:
            bound = self.flops_per_step / (self.devices * self.peak)
            plan["step_time_s"] = {"100%": bound, "50%": 2 * bound}
        seg["plan"] = plan
        return seg

    def write(self, workdir: str, ended: str, *, show: bool = True) -> dict:
        """This process's segment in workdir/goodput.json (appended, or replacing its earlier
        version); show: log the table."""
        seg = self.segment(ended)
        path = paths.join(workdir, GOODPUT)
        old = []
        if paths.exists(path):
            try:
                old = json.loads(paths.read_text(path)).get("segments", [])
            except (ValueError, AttributeError):
                log.warning("%s is not goodput JSON: rewritten with this segment only", path)
        old = [s for s in old if s.get("id") != self.id]
        paths.write_text(path, json.dumps({"segments": [*old, seg]}, indent=2))
        if show:
            log.info("%s", table(seg))
        return seg


def peak_memory() -> int | None:
    """The first local device's peak bytes in use (None where the backend does not say)."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def table(seg: dict) -> str:
    """A few lines: each part's seconds and share of the wall time, then the plan check."""
    wall = max(seg["wall_s"], 1e-9)
    lines = [f"goodput: {seg['wall_s']:.1f} s wall, steps {seg['first_step']}..{seg['last_step']} ({seg['ended']})"]
    lines += [f"  {name:<11}{s:9.2f} s {100 * s / wall:5.1f}%" for name, s in seg["parts_s"].items() if s >= 0.005]
    plan = seg["plan"]
    if "step_time_s" in seg:
        bounds = plan.get("step_time_s")
        vs = f" (plan: {bounds['100%']:.4g} s at 100% MFU, {bounds['50%']:.4g} s at 50%)" if bounds else ""
        lines.append(f"  step time {seg['step_time_s']:.4g} s{vs}")
    peak, compiled = plan["peak_bytes_in_use"], plan["compiled_bytes_per_device"]
    lines.append("  device memory: " + (f"peak {peak / 2 ** 30:.2f} GiB in use" if peak is not None
                                        else "the backend reports no memory in use")
                 + (f", compiler's prediction {compiled / 2 ** 30:.2f} GiB" if compiled is not None else ""))
    return "\n".join(lines)
