"""metrics.jsonl, TensorBoard events, the progress line and throughput."""
import io
import json
import logging
import os
import struct
import sys
import time

import numpy as np
import pytest

from mimjax.train import metrics


def test_jsonl_rows_types_and_null_for_nonfinite(tmp_path):
    w = metrics.MetricWriter(str(tmp_path))
    w.write(1, {"loss": np.float32(0.5), "lr": 1e-3, "skipped": np.int64(2), "gpa_loss": float("nan"),
                "grad_norm": np.array(float("inf"))})
    w.write(2, {"loss": 0.25})
    w.flush()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()  # flushed: readable before close
    rows = [json.loads(line) for line in lines]  # strict JSON: no NaN tokens
    assert rows[0] == {"step": 1, "loss": 0.5, "lr": 1e-3, "skipped": 2, "gpa_loss": None, "grad_norm": None}
    assert isinstance(rows[0]["skipped"], int) and rows[1] == {"step": 2, "loss": 0.25}
    assert "NaN" not in "".join(lines) and "Infinity" not in "".join(lines)
    w.write_image(2, "recon", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        w.write_image(2, "recon", np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="scalars"):
        w.write(3, {"loss": np.zeros(2)})
    w.close()
    w.close()  # twice is fine
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "tb"))
    assert metrics.read_metrics(str(tmp_path / "metrics.jsonl")) == rows


def test_tensorboard_events_hold_the_scalars(tmp_path):
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    w = metrics.MetricWriter(str(tmp_path))
    w.write(7, {"loss": 0.5, "bad": float("nan")})
    w.close()
    (name,) = [f for f in os.listdir(tmp_path / "tb") if f.startswith("events")]
    data, tags = (tmp_path / "tb" / name).read_bytes(), []
    while data:  # TFRecord framing: u64 length, u32 crc, payload, u32 crc
        (n,) = struct.unpack("<Q", data[:8])
        event = event_pb2.Event.FromString(data[12:12 + n])
        tags += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
        data = data[12 + n + 4:]
    assert tags == [("loss", 7, 0.5)]  # null values are not sent to TensorBoard


def test_disabled_writer_is_a_no_op(tmp_path):
    w = metrics.MetricWriter(str(tmp_path / "w"), enabled=False)
    w.write(1, {"loss": 1.0})
    w.write_image(1, "x", np.zeros((4, 4, 3), np.uint8))
    w.flush()
    w.close()
    assert not (tmp_path / "w").exists()


def test_without_tensorboardx_jsonl_is_still_written(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # makes the import fail
    with caplog.at_level(logging.WARNING, logger="mimjax"):
        w = metrics.MetricWriter(str(tmp_path))
    w.write(1, {"loss": 1.0})
    w.write_image(1, "x", np.zeros((4, 4, 3), np.uint8))
    w.close()
    assert sum("tensorboardX" in r.message for r in caplog.records) == 1
    assert metrics.read_metrics(str(tmp_path / "metrics.jsonl")) == [{"step": 1, "loss": 1.0}]
    assert not (tmp_path / "tb").exists()


def test_truncated_last_line_is_skipped_and_cut_before_appending(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')  # killed mid-line
    assert metrics.read_metrics(str(path)) == [{"step": 1, "loss": 1.0}]
    w = metrics.MetricWriter(str(tmp_path))  # the resumed run
    w.write(2, {"loss": 0.5})
    w.close()
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n'
    assert [r["step"] for r in metrics.read_metrics(str(path))] == [1, 2]


def test_progress_bar_plain_stream():
    out = io.StringIO()  # not a TTY: full lines
    bar = metrics.ProgressBar(100, stream=out, every_s=0)
    bar.update(10, images_per_sec=50.0, loss=0.5, skipped=3)
    time.sleep(0.01)
    bar.update(20, images_per_sec=55.5, loss=np.float32(1.32))
    bar.close()
    first, second = out.getvalue().splitlines()
    assert first.startswith("step 10/100") and "ETA" not in first  # no rate before a second update
    assert "loss 0.5000" in first and "skipped 3 " in first  # 4 significant digits; integers as they are
    assert "step 20/100" in second and " 20%" in second and "loss 1.320" in second
    assert "55.5 img/s" in second and "ETA 0:00:" in second and "\r" not in out.getvalue()


def test_progress_bar_throttles_plain_lines_but_prints_the_end():
    out = io.StringIO()
    bar = metrics.ProgressBar(30, stream=out, every_s=3600)
    for step in (10, 20, 30):
        bar.update(step, loss=1.0)
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["10/30", "30/30"]


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_rewrites_one_line():
    out = FakeTTY()
    bar = metrics.ProgressBar(100, 0, stream=out)
    bar.update(1, images_per_sec=10.0)
    bar.update(2, images_per_sec=10.0)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "step 2/100" in text


def test_disabled_progress_bar_prints_nothing():
    out = io.StringIO()
    bar = metrics.ProgressBar(10, stream=out, enabled=False)
    bar.update(10, loss=1.0)
    bar.close()
    assert out.getvalue() == ""


def test_throughput():
    t = metrics.Throughput(global_batch_size=8)
    t.start(100)
    time.sleep(0.05)
    rate = t.update(110)  # 80 images in ~0.05 s
    assert 80 / 0.5 < rate <= 80 / 0.05
    assert t.update(110) == 0.0
