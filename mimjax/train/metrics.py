"""Run outputs a person or a tool reads: `W/metrics.jsonl`, TensorBoard events in `W/tb/`
(tensorboardX, no TensorFlow), optionally Weights & Biases (`writers` config; the writers
themselves: mimjax.train.writers), and a progress line with throughput and ETA. Only
process 0 writes (enabled=False elsewhere).

metrics.jsonl: one JSON object per logged step, `{"step": int, "<name>": number, ...}`;
integers stay integers, everything else becomes a float, and non-finite values (NaN, inf)
are written as null, since JSON has no NaN. A run resumed from checkpoint step s first
removes the rows after s (the steps it replays), then appends: one row per step. Evaluations
during pre-training (`eval.every`) are rows of their own, `{"step": s, "knn_top1": x}`,
beside the training row of the same step. On gs:// the file is one object grown by GCS
compose (mimjax.train.writers.ObjectAppender), rows reaching it at least every few seconds
and before every checkpoint.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import numbers
import sys
import time

import numpy as np

from mimjax.train.writers import _drop_partial_line  # noqa: F401 (the local crash repair, kept here)

log = logging.getLogger("mimjax")


def _plain(v):
    """A scalar (Python, NumPy or 0-d JAX array) -> int, float or None (non-finite)."""
    a = np.asarray(v)
    if a.size != 1:
        raise ValueError(f"metrics are scalars, got shape {a.shape}")
    if a.dtype.kind in "biu":
        return int(a)
    f = float(a)
    return f if math.isfinite(f) else None


class MetricWriter:
    """The run's one writer: fans each call out to the writers `writers` names
    (mimjax.train.writers: "jsonl" -> workdir/metrics.jsonl, "tensorboard" -> workdir/tb,
    "wandb" -> Weights & Biases with `wandb` = {project, name, entity, mode}), with
    clu.metric_writers' interface. Values are made plain here (`_plain`). With
    enabled=False every method is a no-op and nothing is created."""

    def __init__(self, workdir: str, *, enabled: bool = True, writers: str = "jsonl,tensorboard",
                 wandb=None, hparams=None, resume_step: int | None = None):
        from mimjax.train import writers as writers_lib

        self.enabled, self._writers = enabled, []
        if not enabled:
            return
        names = writers_lib.parse_writers(writers)
        if resume_step is not None and "jsonl" in names:  # replayed steps: their new rows replace the old
            dropped = writers_lib.drop_rows_after(workdir, resume_step)
            if dropped:
                log.info("metrics.jsonl: removed %d row(s) after step %d; the resumed run logs them again",
                         dropped, resume_step)
        self._writers = writers_lib.make_writers(workdir, writers_lib.parse_writers(writers), wandb_cfg=wandb,
                                                 hparams=hparams)
        if hparams is not None:
            self.write_hparams(hparams)

    def write_scalars(self, step: int, scalars: dict):
        """One row: {"step": step, **scalars}; scalars are numbers or 0-d arrays."""
        if not self._writers:
            return
        row = {k: _plain(v) for k, v in scalars.items()}
        for w in self._writers:
            w.write_scalars(int(step), row)

    def write(self, step: int, scalars: dict):
        """The loop's call site: `write_scalars`."""
        self.write_scalars(step, scalars)

    def write_images(self, step: int, images: dict):
        """images: {tag: uint8 [H, W, 3]} (TensorBoard, W&B; not metrics.jsonl)."""
        for tag, image in images.items():
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"write_images wants uint8 [H, W, 3], got {image.dtype} {image.shape} for {tag!r}")
        for w in self._writers:
            w.write_images(int(step), images)

    def write_image(self, step: int, tag: str, image_uint8):
        """image_uint8: uint8 [H, W, 3]; `write_images` of one image."""
        if self.enabled:
            self.write_images(step, {tag: image_uint8})

    def write_hparams(self, hparams: dict):
        """The run's config (nested dict) as hyperparameters (TensorBoard HPARAMS, W&B config)."""
        for w in self._writers:
            w.write_hparams(hparams)

    def flush(self):
        for w in self._writers:
            w.flush()

    def close(self):
        """Flush and close; safe to call twice."""
        writers, self._writers = self._writers, []
        for w in writers:
            w.close()


def read_metrics(path: str) -> list[dict]:
    """The rows of a metrics.jsonl in file order; lines that are not JSON (a last line cut
    by a kill) are skipped. Nulls come back as None."""
    from etils import epath

    rows = []
    with epath.Path(path).open() as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


class Throughput:
    """Images per second between successive log points (wall clock, global batch size).
    Call `start(step)` before the loop, then `update(step)` at each log point."""

    def __init__(self, global_batch_size: int):
        self.batch = global_batch_size
        self._step, self._time = 0, time.perf_counter()

    def start(self, step: int):
        self._step, self._time = step, time.perf_counter()

    def update(self, step: int) -> float:
        """Images/s since the last `start` or `update` (the first interval includes compilation)."""
        now = time.perf_counter()
        rate = (step - self._step) * self.batch / max(now - self._time, 1e-9)
        self._step, self._time = step, now
        return rate


def _four_digits(v) -> str:
    """A float with 4 significant digits, trailing zeros kept (1.32 -> "1.320"); integers and
    non-numbers as they are."""
    if isinstance(v, numbers.Integral) or not isinstance(v, numbers.Real):
        return str(v)
    return f"{float(v):#.4g}"


class ProgressBar:
    """`step 120/1000  12%  loss 0.512  312.4 img/s  ETA 0:04:41`, rewritten in place
    ("\\r") on a terminal; on anything else (a log file) a full line at most every
    `every_s` seconds, plus the last step. The ETA uses the rate since the first update,
    not since `start_step`, so compilation (before the first update) does not distort it;
    the first line has none. Scalars are printed with 4 significant digits, trailing zeros
    kept (`loss 1.320`), so the columns do not jump from row to row. `label` names what is
    counted (`k-NN train features 2048/10000  20%  ...`: mimjax.train.knn_eval.FeatureProgress)."""

    def __init__(self, total_steps: int, start_step: int = 0, *, stream=None, enabled: bool = True,
                 every_s: float = 10.0, label: str = "step"):
        self.total, self.start_step, self.enabled, self.every_s = total_steps, start_step, enabled, every_s
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._first = None  # (step, time) of the first update
        self._last_print = -math.inf
        self._dirty = False  # a \r line is on screen without its newline

    def update(self, step: int, images_per_sec: float | None = None, **scalars):
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._first is None:
            self._first = (step, now)
        eta = None
        done, elapsed = step - self._first[0], now - self._first[1]
        if done > 0 and elapsed > 0:
            eta = str(datetime.timedelta(seconds=round(max(self.total - step, 0) * elapsed / done)))
        parts = [f"{self.label} {step}/{self.total}", f"{100 * step / max(self.total, 1):3.0f}%"]
        parts += [f"{k} {_four_digits(v)}" for k, v in scalars.items()]
        if images_per_sec is not None:
            parts.append(f"{images_per_sec:.1f} img/s")
        if eta is not None:
            parts.append(f"ETA {eta}")
        line = "  ".join(parts)
        if self._tty:
            self.stream.write("\r" + line + "\x1b[K")  # \x1b[K clears what a longer line left
            self._dirty = True
        elif now - self._last_print >= self.every_s or step >= self.total:
            self.stream.write(line + "\n")
            self._last_print = now
        self.stream.flush()

    def close(self):
        if self.enabled and self._dirty:
            self.stream.write("\n")
            self.stream.flush()
            self._dirty = False
