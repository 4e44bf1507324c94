"""Run outputs a person or a tool reads: `W/metrics.jsonl`, TensorBoard events in `W/tb/`,
and a progress line with throughput and ETA. Only process 0 writes (enabled=False elsewhere).

metrics.jsonl: one JSON object per logged step, `{"step": int, "<name>": float, ...}`;
non-finite values are written as null (JSON has no NaN).
"""
from __future__ import annotations

import datetime
import json
import logging

log = logging.getLogger("mimjax")
import math
import os
import sys
import time


def _plain(v):
    v = float(v)
    return v if math.isfinite(v) else None


class MetricWriter:
    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled, self._tb = enabled, None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=os.path.join(workdir, "tb"))
        except ImportError:
            log.warning("tensorboardX is not installed: no TensorBoard events (metrics.jsonl is written)")

    def write(self, step: int, scalars: dict):
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and v is not None:
                    self._tb.add_scalar(k, v, step)

    def write_image(self, step: int, tag: str, image_uint8):
        """image_uint8: [H, W, 3] uint8."""
        if self.enabled and self._tb is not None:
            self._tb.add_image(tag, image_uint8, step, dataformats="HWC")

    def close(self):
        if self.enabled:
            self._jsonl.close()
            if self._tb is not None:
                self._tb.close()


def read_metrics(path: str) -> list[dict]:
    """The rows of a metrics.jsonl; a truncated last line (a killed run) is skipped."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class Throughput:
    """Images per second between successive `update` calls (wall clock, global batch)."""

    def __init__(self, global_batch_size: int):
        self.batch = global_batch_size
        self._step, self._time = 0, time.perf_counter()

    def start(self, step: int):
        self._step, self._time = step, time.perf_counter()

    def update(self, step: int) -> float:
        now = time.perf_counter()
        rate = (step - self._step) * self.batch / max(now - self._time, 1e-9)
        self._step, self._time = step, now
        return rate


class ProgressBar:
    """`step 120/1000  12%  loss 0.512  312.4 img/s  ETA 0:04:41`: rewritten in place on a
    terminal, a plain line every `every_s` seconds (and at the end) otherwise. The ETA
    uses the rate since the first update, so compilation does not distort it."""

    def __init__(self, total_steps: int, start_step: int = 0, *, stream=None, enabled: bool = True,
                 every_s: float = 10.0):
        self.total, self.enabled, self.every_s = total_steps, enabled, every_s
        self.stream = stream if stream is not None else sys.stderr
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._first = None  # (step, time) of the first update
        self._last_print = -math.inf
        self._dirty = False

    def update(self, step: int, images_per_sec: float | None = None, **scalars):
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._first is None:
            self._first = (step, now)
        eta = "?"
        done, elapsed = step - self._first[0], now - self._first[1]
        if done > 0 and elapsed > 0:
            eta = str(datetime.timedelta(seconds=round((self.total - step) * elapsed / done)))
        parts = [f"step {step}/{self.total}", f"{100 * step / max(self.total, 1):3.0f}%"]
        parts += [f"{k} {v:.4g}" for k, v in scalars.items()]
        if images_per_sec is not None:
            parts.append(f"{images_per_sec:.1f} img/s")
        parts.append(f"ETA {eta}")
        line = "  ".join(parts)
        if self._tty:
            self.stream.write("\r" + line + "\x1b[K")
            self._dirty = True
        elif now - self._last_print >= self.every_s or step >= self.total:
            self.stream.write(line + "\n")
            self._last_print = now
        self.stream.flush()

    def close(self):
        if self.enabled and self._dirty:
            self.stream.write("\n")
            self.stream.flush()
