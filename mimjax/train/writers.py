"""Metric writers behind one interface, modelled on `clu.metric_writers`: `write_scalars(step,
{name: value})`, `write_images(step, {tag: uint8 [H, W, 3]})`, `write_hparams({key: value})`,
`flush()`, `close()`. `mimjax.train.metrics.MetricWriter` fans every call out to the writers
a run's `writers` config names (`jsonl`, `tensorboard`, `wandb`); the loop has one call site.

- `JsonlWriter`: `W/metrics.jsonl` (the format: `mimjax.train.metrics`). A local file is
  appended to and flushed every row. On an object store without append (gs://) rows are
  buffered and each flush uploads only the new rows as a small object and *composes* it
  onto the end of metrics.jsonl (`ObjectAppender`): the file stays one readable object and
  the bytes uploaded over a run are O(its size), not O(size^2) as a rewrite per flush.
- `TensorBoardWriter`: tensorboardX events in `W/tb/` (no TensorFlow), the config as
  TensorBoard hparams. On gs:// its event files go through the same compose appender
  (tensorboardX's own GCS writer re-uploads the whole file at every flush).
- `WandbWriter`: Weights & Biases (`pip install mimjax[wandb]`); `wandb.mode = offline`
  writes `W/wandb/offline-run-*` for a later `wandb sync` and sends nothing.

TensorBoard and W&B run behind a `BackgroundWriter`: a thread of their own and a bounded
queue, so that neither ever blocks the training loop; one that fails or gets stuck is
dropped with one warning and the others go on. Durations are measured with the monotonic
clock: a wall clock set back (NTP) changes nothing.
"""
from __future__ import annotations

import abc
import itertools
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

log = logging.getLogger("mimjax")

WRITERS = ("jsonl", "tensorboard", "wandb")


def parse_writers(spec: str) -> tuple[str, ...]:
    """"jsonl,tensorboard" -> ("jsonl", "tensorboard"); ValueError naming a bad value."""
    names = tuple(s.strip() for s in str(spec).split(",") if s.strip())
    for n in names:
        if n not in WRITERS:
            raise ValueError(f"unknown writer {n!r} (not one of {', '.join(WRITERS)})")
    if len(set(names)) != len(names):
        raise ValueError(f"a writer is named twice in {spec!r}")
    return names


def is_local(path: str) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


class Writer(abc.ABC):
    """clu.metric_writers.MetricWriter's interface. Scalars arrive as int, float or None
    (non-finite); images as uint8 [H, W, 3]."""

    @abc.abstractmethod
    def write_scalars(self, step: int, scalars: Mapping[str, int | float | None]) -> None: ...

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:  # noqa: B027 (optional)
        pass

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:  # noqa: B027 (optional)
        pass

    def flush(self) -> None:  # noqa: B027 (optional)
        pass

    def close(self) -> None:  # noqa: B027 (optional)
        pass


def flat_hparams(config: Mapping[str, Any], prefix: str = "") -> dict:
    """A nested config -> {"a.b": value} with bool / int / float / str values (others: str)."""
    out = {}
    for k, v in config.items():
        if isinstance(v, Mapping):
            out.update(flat_hparams(v, f"{prefix}{k}."))
        elif isinstance(v, (bool, int, float, str)):
            out[prefix + k] = v
        else:
            out[prefix + k] = str(tuple(v) if isinstance(v, list) else v)
    return out


def _row_step(line: str) -> int | None:
    """The step of a metrics.jsonl line that is a whole row, else None (a cut line, other text)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, TypeError, KeyError):
        return None


def _warn_cut(path: str, line: str, resume_step: int | None) -> None:
    """Says that the last line of metrics.jsonl, cut mid-write by a kill, was removed: whose
    row it was (a row starts `{"step": N,`) and whether the resumed run logs it again."""
    import re

    m = re.match(r'\{"step": (\d+)[,}]', line)
    if m is None:
        log.warning("%s: removed its last line, cut mid-write (a kill): %r", path, line[:60])
        return
    step = int(m.group(1))
    fate = ("" if resume_step is None else f"; the resumed run logs step {step} again" if step > resume_step
            else f"; that row is lost (the run resumes after step {resume_step})")
    log.warning("%s: removed its last line, step %d's row cut mid-write (a kill)%s", path, step, fate)


def _drop_partial_line(path: str):
    """Ends metrics.jsonl with a newline before rows are appended: a last line that is a whole
    row but lost its newline gets it back; one cut mid-write (a writer killed mid-line) is
    removed with a warning (`_warn_cut`), so that appended rows start on a line of their own."""
    from mimjax import paths

    if not os.path.lexists(path):
        return
    with os.fdopen(paths.open_nofollow(path, os.O_RDWR), "rb+") as f:  # never through a link
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)  # rare: read the whole file once to find the last newline
        data = f.read()
        start = data.rfind(b"\n") + 1
        last = data[start:].decode(errors="replace")
        if _row_step(last) is not None:
            f.write(b"\n")  # (at the end: the read left the position there)
        else:
            f.truncate(start)
            _warn_cut(path, last, None)


def drop_rows_after(workdir: str, step: int) -> int:
    """Removes the rows of workdir/metrics.jsonl logged after `step`: a run resumed from
    checkpoint `step` logs those steps again, and its rows replace them (one row per step
    and name). Every whole row up to `step` stays, the last one too when a kill took only
    its newline (given back); a last line cut mid-write is removed with a warning naming its
    step and whether it is logged again (`_warn_cut`); other text stays. Rewrites the file
    only when something changes; returns how many whole rows after `step` went."""
    from mimjax import paths

    path = paths.join(str(workdir), "metrics.jsonl")
    if not paths.isfile(path):
        return 0
    *lines, last = paths.read_text(path).split("\n")  # last: "" when the file ends with a newline
    if _row_step(last) is not None:
        lines.append(last)  # a whole row that lost only its newline
    kept = [line for line in lines if (s := _row_step(line)) is None or s <= step]
    if last and _row_step(last) is None:
        _warn_cut(path, last, step)
    if last or len(kept) < len(lines):
        paths.write_text(path, "".join(line + "\n" for line in kept))
    return len(lines) - len(kept)


# --- Appending to an object store (gs://) ------------------------------------------------------------

class ObjectAppender:
    """An append-only object on GCS, kept as ONE object: `write(bytes)` buffers; `flush()`
    uploads the buffer as `<path>.part-<id>-<n>` and composes [path, part] -> path
    (server-side concatenation; nothing already written is uploaded again), then deletes the
    part. Over a run the bytes uploaded add up to the file's size (O(n); a rewrite per flush
    would be O(n^2)). GCS allows about one update per second per object, so automatic
    flushes (`maybe_flush`, after each write) come at most every `flush_secs`, a timer
    thread flushing what a quiet spell would leave behind; `flush()` is immediate.

    Crash repair on open: parts a killed writer left behind are deleted (their rows were
    never part of the file; the loop flushes before every checkpoint, so the resumed run
    logs them again), and a last line without its newline (only a foreign writer can leave
    one: every composed part ends in one) is cut, rewriting the file once.
    `bytes_uploaded` counts what this appender sent."""

    def __init__(self, path: str, *, flush_secs: float = 5.0, fs=None, line_repair: bool = True):
        if fs is None:
            import gcsfs

            fs = gcsfs.GCSFileSystem()
        self.fs, self.path, self.flush_secs = fs, str(path), flush_secs
        self._buf, self._last_flush, self.bytes_uploaded = [], time.monotonic(), 0
        self._lock, self._timer = threading.RLock(), None
        self._parts = (f"{self.path}.part-{uuid.uuid4().hex[:12]}-{n}" for n in itertools.count())
        for stale in self.fs.glob(self.path + ".part-*"):
            self.fs.rm_file(stale)
        self.fs.invalidate_cache(self.path)
        self._exists = self.fs.exists(self.path)
        if line_repair and self._exists:
            size = self.fs.info(self.path)["size"]
            if size and self.fs.cat_file(self.path, start=size - 1) != b"\n":
                data = self.fs.cat_file(self.path)
                self._put(self.path, data[:data.rfind(b"\n") + 1])

    def _put(self, path, data: bytes):
        self.fs.pipe_file(path, data)
        self.bytes_uploaded += len(data)

    def write(self, data: bytes):
        with self._lock:
            self._buf.append(bytes(data))

    def maybe_flush(self):
        with self._lock:
            wait = self.flush_secs - (time.monotonic() - self._last_flush)
            if wait <= 0:
                self.flush()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self._timed_flush)
                self._timer.daemon = True
                self._timer.start()

    def _timed_flush(self):
        try:
            self.flush()
        except Exception as e:  # noqa: BLE001 - the rows stay buffered; the next flush retries
            log.warning("could not append to %s (%s): retried at the next flush", self.path, e)

    def flush(self):
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._last_flush = time.monotonic()
            if not self._buf:
                return
            data = b"".join(self._buf)  # emptied only once the rows are in the file (an error keeps them)
            if not self._exists:
                self._put(self.path, data)
                self._buf, self._exists = [], True
                return
            part = next(self._parts)
            self._put(part, data)
            self.fs.merge(self.path, [self.path, part])
            self._buf = []
            self.fs.invalidate_cache(self.path)
            self.fs.rm_file(part)

    def close(self):
        self.flush()


class _TensorBoardGcsRecordWriter:
    """tensorboardX's record-writer protocol (write / flush / close) on an ObjectAppender."""

    def __init__(self, path):
        self._app = ObjectAppender(path, line_repair=False)

    def write(self, data):
        self._app.write(data)

    def flush(self):
        self._app.flush()

    def close(self):
        self._app.close()


class _TensorBoardGcsFactory:
    def open(self, path):
        return _TensorBoardGcsRecordWriter(path)

    def directory_check(self, path):  # object stores have no directories to make
        pass


# --- The writers ---------------------------------------------------------------------------------------

class JsonlWriter(Writer):
    """`<workdir>/metrics.jsonl`: one JSON object per write_scalars call (the format:
    mimjax.train.metrics). Local: appended and flushed every row; a last line cut by a kill
    is dropped on open. gs://: an ObjectAppender (flushed at most every flush_secs, and on
    flush() / close())."""

    def __init__(self, workdir: str, *, flush_secs: float = 5.0):
        self.path = os.path.join(str(workdir), "metrics.jsonl") if is_local(workdir) else f"{str(workdir).rstrip('/')}/metrics.jsonl"
        if is_local(workdir):
            os.makedirs(workdir, exist_ok=True)
            _drop_partial_line(self.path)
            from mimjax import paths

            self._file, self._obj = paths.open_append(self.path), None  # for the whole run; never through a link
        elif str(workdir).startswith("gs://"):
            self._file, self._obj = None, ObjectAppender(self.path, flush_secs=flush_secs)
        else:
            raise ValueError(f"metrics.jsonl in {workdir!r}: a local directory or gs:// is supported")

    def write_scalars(self, step, scalars):
        line = json.dumps({"step": int(step), **scalars}, allow_nan=False) + "\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
        elif self._obj is not None:
            self._obj.write(line.encode())
            self._obj.maybe_flush()

    def flush(self):
        if self._file is not None:
            self._file.flush()
        if self._obj is not None:
            self._obj.flush()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None


class TensorBoardWriter(Writer):
    """tensorboardX events in `logdir`, written by the calling thread (make_writers gives it
    a BackgroundWriter; tensorboardX's own writer thread, which a wall clock set back kills,
    is not used), flushed at most every `flush_secs` (monotonic) and on flush() / close().
    write_hparams: the config on TensorBoard's HPARAMS tab (in the same event file, so
    TensorBoard pairs it with the scalars of this run)."""

    def __init__(self, logdir: str, *, metrics=("loss", "knn_top1"), flush_secs: float = 120.0):
        from tensorboardX import event_file_writer, record_writer

        logdir = str(logdir)
        if logdir.startswith("gs://"):
            record_writer.register_writer_factory("gs", _TensorBoardGcsFactory())  # keyed by the scheme
        record_writer.directory_check(logdir)
        self._events = event_file_writer.EventsWriter(os.path.join(logdir, "events"))
        self._metrics, self.flush_secs, self._flushed = tuple(metrics), flush_secs, -float("inf")

    def _add(self, summary, step: int | None = None):
        from tensorboardX.proto.event_pb2 import Event

        event = Event(summary=summary, wall_time=time.time())  # a timestamp for TensorBoard, never a duration
        if step is not None:
            event.step = int(step)
        self._events.write_event(event)

    def _maybe_flush(self):
        if time.monotonic() - self._flushed >= self.flush_secs:
            self.flush()

    def write_scalars(self, step, scalars):
        from tensorboardX.summary import scalar

        for k, v in scalars.items():
            if v is not None:
                self._add(scalar(k, v), step)
        self._maybe_flush()

    def write_images(self, step, images):
        from tensorboardX.summary import image

        for tag, im in images.items():
            self._add(image(tag, np.asarray(im), dataformats="HWC"), step)
        self._maybe_flush()

    def write_hparams(self, hparams):
        from tensorboardX.summary import hparams as hparams_summary

        hp = flat_hparams(hparams)
        for summary in hparams_summary(hp, {m: 0.0 for m in self._metrics}):
            self._add(summary)

    def flush(self):
        self._events.flush()
        self._flushed = time.monotonic()

    def close(self):
        self._events.close()


class WandbWriter(Writer):
    """A Weights & Biases run (`wandb` from `pip install mimjax[wandb]`). Its id is kept in
    `<workdir>/wandb_run_id`, so a resumed run continues the same W&B run. The files go to
    `<workdir>/wandb/` (a local temporary directory for a gs:// workdir). mode: "" (wandb's
    default / WANDB_MODE), "online", "offline" (nothing leaves the machine; `wandb sync`
    later) or "disabled". W&B drops rows whose step is below its last one (a run resumed
    from an older checkpoint): those steps stay in metrics.jsonl and TensorBoard."""

    def __init__(self, workdir: str, *, project: str, name: str = "", entity: str = "", mode: str = "",
                 hparams: Mapping[str, Any] | None = None):
        try:
            import wandb
        except ImportError as e:
            raise ImportError("writers includes 'wandb' but wandb is not installed: pip install 'mimjax[wandb]' "
                              "(or -r requirements-wandb.txt)") from e
        self._wandb = wandb
        if is_local(workdir):
            wdir = str(workdir)
            os.makedirs(wdir, exist_ok=True)
            id_path = os.path.join(wdir, "wandb_run_id")
            from mimjax import paths

            run_id = paths.read_text(id_path).strip() if os.path.isfile(id_path) else uuid.uuid4().hex[:12]
            paths.write_text(id_path, run_id + "\n")  # never through a link
        else:
            import tempfile

            wdir, run_id = tempfile.mkdtemp(prefix="mimjax-wandb-"), None
        self.run = wandb.init(project=project or None, name=name or None, entity=entity or None,
                              mode=mode or None, dir=wdir, id=run_id, resume="allow" if run_id else None,
                              config=flat_hparams(hparams) if hparams else None, reinit="create_new")

    def write_scalars(self, step, scalars):
        row = {k: v for k, v in scalars.items() if v is not None}
        if row:
            self.run.log(row, step=int(step))

    def write_images(self, step, images):
        self.run.log({tag: self._wandb.Image(np.asarray(im)) for tag, im in images.items()}, step=int(step))

    def write_hparams(self, hparams):
        self.run.config.update(flat_hparams(hparams), allow_val_change=True)

    def close(self):
        if self.run is not None:
            self.run.finish()
            self.run = None


class BackgroundWriter(Writer):
    """`writer`'s calls, in order, on a thread of its own behind a bounded queue, so that the
    caller never waits on it for long: a call waits at most `put_timeout_s` for room in the
    queue, flush() at most `flush_timeout_s` for the writer's flush, close() at most
    `close_timeout_s`. A writer that raises, is stuck past one of these or whose thread
    ended is dropped: one warning naming it (`name`), its later calls do nothing, and the
    run goes on with the other writers. `failed` says why (None while it works)."""

    def __init__(self, writer: Writer, name: str, *, max_queue: int = 100, put_timeout_s: float = 1.0,
                 flush_timeout_s: float = 30.0, close_timeout_s: float = 30.0):
        self.writer, self.name, self.failed, self._closed = writer, name, None, False
        self.put_timeout_s, self.flush_timeout_s, self.close_timeout_s = put_timeout_s, flush_timeout_s, close_timeout_s
        self._queue, self._lock = queue.Queue(max_queue), threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"mimjax-{name}-writer", daemon=True)
        self._thread.start()

    def _run(self):
        while (item := self._queue.get()) is not None:
            fn, args, done = item
            try:
                if self.failed is None:
                    fn(*args)
            except Exception as e:  # noqa: BLE001 - the writer is dropped, said once
                self._fail(f"{type(e).__name__}: {e}")
            finally:
                if done is not None:
                    done.set()

    def _fail(self, why: str):
        with self._lock:  # the warning is out before `failed` is: whoever sees it set can rely on it
            if self.failed is not None:
                return
            log.warning("the %s writer stopped (%s): the run goes on without it", self.name, why)
            self.failed = why

    def _call(self, fn, *args, wait_s: float | None = None):
        """Queues fn(*args) for the thread; with wait_s, waits at most that long for it to run."""
        if self.failed is None and not self._thread.is_alive():
            self._fail("its thread ended")
        if self.failed is not None:
            return
        done = None if wait_s is None else threading.Event()
        try:
            self._queue.put((fn, args, done), timeout=self.put_timeout_s)
        except queue.Full:
            self._fail(f"{self._queue.maxsize} calls waiting for more than {self.put_timeout_s:g} s")
            return
        if done is not None and not done.wait(wait_s):
            self._fail(f"{fn.__name__} took more than {wait_s:g} s")

    def write_scalars(self, step, scalars):
        self._call(self.writer.write_scalars, step, dict(scalars))

    def write_images(self, step, images):
        self._call(self.writer.write_images, step, {tag: np.array(im) for tag, im in images.items()})

    def write_hparams(self, hparams):
        self._call(self.writer.write_hparams, hparams)

    def flush(self):
        self._call(self.writer.flush, wait_s=self.flush_timeout_s)

    def close(self):
        """Closes the writer, then ends the thread; twice is fine."""
        if self._closed:
            return
        self._closed = True
        self._call(self.writer.close, wait_s=self.close_timeout_s)
        if self._thread.is_alive():
            try:
                self._queue.put(None, timeout=self.put_timeout_s)
            except queue.Full:  # stuck: the daemon thread is left behind
                pass


def make_writers(workdir: str, names, *, wandb_cfg=None, hparams=None) -> list[Writer]:
    """The writers `names` (parse_writers) for a run in `workdir`, tensorboard and wandb each
    on a BackgroundWriter; tensorboard without tensorboardX installed is skipped with a warning."""
    out = []
    for n in names:
        if n == "jsonl":
            out.append(JsonlWriter(workdir))
        elif n == "tensorboard":
            try:
                tb = TensorBoardWriter(os.path.join(str(workdir), "tb") if is_local(workdir)
                                       else f"{str(workdir).rstrip('/')}/tb")
            except ImportError:
                log.warning("tensorboardX is not installed: no TensorBoard events (metrics.jsonl is written)")
            else:
                out.append(BackgroundWriter(tb, n))
        elif n == "wandb":
            w = wandb_cfg or {}
            out.append(BackgroundWriter(WandbWriter(workdir, project=w.get("project", "mimjax"), name=w.get("name", ""),
                                                    entity=w.get("entity", ""), mode=w.get("mode", ""),
                                                    hparams=hparams), n))
    return out
