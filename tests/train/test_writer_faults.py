"""Writers never block the training loop (mimjax.train.writers.BackgroundWriter): a writer
whose thread dies, raises or gets stuck is dropped with one warning while metrics.jsonl gets
every row; and a wall clock set back 25 days mid-run (NTP on a fresh VM) changes nothing."""
import contextlib
import io
import logging
import os
import pathlib
import re
import signal
import threading
import time

import numpy as np
import pytest

import mimjax
from mimjax.train import metrics, writers
from test_loop import run_toy, toy_cfg  # tests/train is on sys.path
from test_writers import tb_scalars

DAYS_25 = 25 * 86400


@contextlib.contextmanager
def within(seconds):
    """Raises TimeoutError in the main thread every second once the block has run `seconds`,
    so that a hang fails the test instead of stalling the test run."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class JumpingClock:
    """time.time, set back `by` seconds once `jump()` is called."""

    def __init__(self, by=DAYS_25):
        self.real, self.by, self.offset = time.time, by, 0.0

    def jump(self):
        self.offset = -self.by

    def __call__(self):
        return self.real() + self.offset


def writer_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "writer" in r.getMessage()]


def test_a_dead_tensorboard_writer_is_one_warning_and_metrics_jsonl_gets_every_row(tmp_path, monkeypatch, caplog):
    """tensorboardX's event writer raises on every summary (its writer thread died of it
    before: `OverflowError: timeout is too large`, and the loop then blocked in Queue.put)."""
    from tensorboardX import event_file_writer

    write_event = event_file_writer.EventsWriter.write_event

    def broken(self, event):
        if event.HasField("summary"):
            raise OverflowError("timeout is too large")
        return write_event(self, event)

    monkeypatch.setattr(event_file_writer.EventsWriter, "write_event", broken)
    caplog.set_level(logging.WARNING, logger="mimjax")
    start = time.monotonic()
    with within(20):
        w = metrics.MetricWriter(str(tmp_path), writers="jsonl,tensorboard", hparams={"seed": 0})
        for step in range(1, 301):
            w.write(step, {"loss": 1.0 / step})
            if step % 100 == 0:
                w.write_images(step, {"reconstruction": np.zeros((8, 8, 3), np.uint8)})
                w.flush()
        w.close()
    assert time.monotonic() - start < 10
    (warning,) = writer_warnings(caplog)
    assert "tensorboard" in warning and "OverflowError" in warning
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path / "metrics.jsonl"))] == list(range(1, 301))


class Faulty(writers.Writer):
    """A writer whose write_scalars fails from the third call on: it raises, blocks until
    `release` is set, or ends its thread."""

    def __init__(self, fault):
        self.fault, self.calls, self.release = fault, 0, threading.Event()

    def write_scalars(self, step, scalars):
        self.calls += 1
        if self.calls < 3:
            return
        if self.fault == "raises":
            raise OSError("disk gone")
        if self.fault == "stuck":
            self.release.wait()
        if self.fault == "thread ends":
            raise SystemExit


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the SystemExit
@pytest.mark.parametrize("fault", ["raises", "stuck", "thread ends"])
def test_a_failing_writer_is_dropped_with_one_warning_and_never_blocks(fault, caplog):
    caplog.set_level(logging.WARNING, logger="mimjax")
    inner = Faulty(fault)
    w = writers.BackgroundWriter(inner, "faulty", max_queue=4, put_timeout_s=0.05, flush_timeout_s=0.2,
                                 close_timeout_s=0.2)
    start = time.monotonic()
    with within(20):
        for step in range(200):
            w.write_scalars(step, {"loss": 1.0})
        w.flush()
        w.close()
        w.close()
    assert time.monotonic() - start < 3
    (warning,) = writer_warnings(caplog)
    assert "faulty" in warning and w.failed
    inner.release.set()


def test_a_working_background_writer_keeps_order_and_flushes(tmp_path):
    seen = []

    class Recorder(writers.Writer):
        def write_scalars(self, step, scalars):
            seen.append((step, scalars))

        def flush(self):
            seen.append("flush")

    w = writers.BackgroundWriter(Recorder(), "recorder")
    row = {"loss": 0.5}
    w.write_scalars(1, row)
    row["loss"] = 9.0  # the caller's dict may change afterwards
    w.write_scalars(2, {"loss": 0.25})
    w.flush()  # returns once the writer has flushed
    assert seen == [(1, {"loss": 0.5}), (2, {"loss": 0.25}), "flush"]
    w.close()
    assert w.failed is None


def test_a_clock_set_back_25_days_keeps_durations_sane_and_the_writers_going(tmp_path, monkeypatch, caplog):
    """time.time jumps back mid-run: img/s and the ETA stay positive, no writer dies, and
    every row reaches metrics.jsonl and TensorBoard."""
    clock = JumpingClock()
    monkeypatch.setattr(time, "time", clock)
    caplog.set_level(logging.WARNING, logger="mimjax")
    out = io.StringIO()
    with within(20):
        w = metrics.MetricWriter(str(tmp_path), writers="jsonl,tensorboard")
        bar, throughput = metrics.ProgressBar(60, stream=out, every_s=0), metrics.Throughput(8)
        throughput.start(0)
        rates = []
        for step in range(1, 61):
            if step == 20:
                clock.jump()
            time.sleep(0.001)
            rates.append(throughput.update(step))
            w.write(step, {"loss": 1.0, "images_per_sec": rates[-1]})
            bar.update(step, images_per_sec=rates[-1], loss=1.0)
        w.close()
    assert clock() < clock.real() - DAYS_25 + 60  # the clock did jump
    assert all(0 < r < 1e7 for r in rates)
    etas = re.findall(r"ETA (\d+):(\d\d):(\d\d)", out.getvalue())
    assert len(etas) == 59 and all(int(h) < 1 for h, _, _ in etas)  # 60 steps of ~1 ms: never days
    assert "-" not in out.getvalue()
    assert writer_warnings(caplog) == []
    assert [r["step"] for r in metrics.read_metrics(str(tmp_path / "metrics.jsonl"))] == list(range(1, 61))
    assert [s for s, _ in tb_scalars(tmp_path / "tb")["loss"]] == list(range(1, 61))


def test_a_run_whose_clock_is_set_back_finishes_and_saves_on_sigterm(tmp_path, monkeypatch, caplog):
    """The toy loop of test_loop with time.time set back 25 days after step 3 and a SIGTERM
    at step 25: it logs every step, saves step 25 and leaves normally."""
    clock = JumpingClock()
    monkeypatch.setattr(time, "time", clock)
    caplog.set_level(logging.WARNING, logger="mimjax")

    def after_step(step):
        if step == 3:
            clock.jump()
        if step == 25:
            os.kill(os.getpid(), signal.SIGTERM)

    with within(60):
        run, _ = run_toy(tmp_path, 100, cfg=toy_cfg(log_every=1, checkpoint_every=1000), after_step=after_step)
    assert run.preempted and run.steps_done == 25 and os.listdir(tmp_path / "checkpoints") == ["25"]
    rows = metrics.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, 26)) and all(r["images_per_sec"] > 0 for r in rows)
    assert [s for s, _ in tb_scalars(tmp_path / "tb")["loss"]] == list(range(1, 26))
    assert writer_warnings(caplog) == []


def test_durations_are_measured_with_the_monotonic_clock():
    """time.time() in mimjax only stamps what is written (its line says "timestamp"), never
    measures a duration or a timeout: time.monotonic / time.perf_counter do."""
    package = pathlib.Path(mimjax.__file__).parent
    for path in sorted(package.rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert "from time import" not in line, f"{path}:{n}: import time, then time.monotonic()"
            if "time.time(" in line:
                assert "timestamp" in line, f"{path}:{n}: a duration needs time.monotonic() or time.perf_counter()"
