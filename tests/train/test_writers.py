"""The metric writers (mimjax.train.writers) behind MetricWriter: jsonl, TensorBoard (with
the config as hparams), Weights & Biases offline, and metrics.jsonl on gs:// grown by
GCS compose (rows intact after a crash, O(n) bytes uploaded)."""
import glob
import json
import os
import time

import numpy as np
import pytest

from mimjax.train import metrics, writers


def tb_events(logdir):
    """Every tensorboardX Event in the event files under `logdir` (TFRecord framing: u64
    length, u32 crc, data, u32 crc), local or gs://."""
    from etils import epath
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for f in sorted(epath.Path(logdir).glob("events.out.tfevents.*")):
        data, pos = f.read_bytes(), 0
        while pos + 12 <= len(data):
            n = int.from_bytes(data[pos:pos + 8], "little")
            e = Event()
            e.ParseFromString(data[pos + 12:pos + 12 + n])
            out.append(e)
            pos += 12 + n + 4
    return out


def tb_scalars(logdir) -> dict:
    """{tag: [(step, value), ...]} of the scalar summaries under `logdir`."""
    out = {}
    for e in tb_events(logdir):
        for v in e.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, []).append((e.step, v.simple_value))
    return out


def test_multi_writer_jsonl_tensorboard_and_hparams(tmp_path):
    hp = {"seed": 0, "model": {"name": "mae_vit_tiny_patch16", "img_size": 32}, "masking": {"hard": (0.0, 0.5)}}
    w = metrics.MetricWriter(str(tmp_path), writers="jsonl,tensorboard", hparams=hp)
    w.write(2, {"loss": np.float32(0.5), "n": np.int32(3), "bad": float("nan")})
    w.write_scalars(4, {"knn_top1": 0.25})
    w.write_images(4, {"reconstruction": np.zeros((8, 8, 3), np.uint8)})
    with pytest.raises(ValueError, match="uint8"):
        w.write_images(4, {"x": np.zeros((8, 8), np.uint8)})
    w.close()
    w.close()  # twice is fine
    assert metrics.read_metrics(str(tmp_path / "metrics.jsonl")) == [
        {"step": 2, "loss": 0.5, "n": 3, "bad": None}, {"step": 4, "knn_top1": 0.25}]
    scalars = tb_scalars(tmp_path / "tb")
    assert scalars["loss"] == [(2, 0.5)] and scalars["knn_top1"] == [(4, 0.25)] and "bad" not in scalars
    tags = {v.tag for e in tb_events(tmp_path / "tb") for v in e.summary.value}
    assert {"reconstruction", "_hparams_/experiment", "_hparams_/session_start_info"} <= tags
    start = next(v for e in tb_events(tmp_path / "tb") for v in e.summary.value
                 if v.tag == "_hparams_/session_start_info")
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    info = HParamsPluginData.FromString(start.metadata.plugin_data.content).session_start_info.hparams
    assert info["model.name"].string_value == "mae_vit_tiny_patch16" and info["model.img_size"].number_value == 32
    assert info["masking.hard"].string_value == "(0.0, 0.5)"


def test_writers_select_and_validate(tmp_path):
    w = metrics.MetricWriter(str(tmp_path), writers="jsonl")
    w.write(1, {"loss": 1.0})
    w.close()
    assert not (tmp_path / "tb").exists() and (tmp_path / "metrics.jsonl").exists()
    assert writers.parse_writers(" jsonl , tensorboard,wandb") == ("jsonl", "tensorboard", "wandb")
    with pytest.raises(ValueError, match="'tensorbord'"):
        writers.parse_writers("jsonl,tensorbord")
    with pytest.raises(ValueError, match="twice"):
        writers.parse_writers("jsonl,jsonl")


def wandb_records(run_file):
    """The protobuf Records of a W&B transaction log (.wandb: a 7-byte header, then
    LevelDB-log records in 32 KiB blocks: crc u32, length u16, type u8, data)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, buf, out = open(run_file, "rb").read(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block trailer padding
            pos += 32768 - pos % 32768
            continue
        n, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if pos + 7 + n > len(data):  # still being written
            break
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):  # FULL, LAST
            out.append(wandb_internal_pb2.Record.FromString(buf))
            buf = b""
    return out


def test_wandb_offline_writes_a_run_that_reads_back(tmp_path, monkeypatch):
    if os.environ.get("MIMJAX_WANDB") != "1":  # scripts/test.sh installs it and sets MIMJAX_WANDB=1: no skip there
        pytest.importorskip("wandb", reason="the [wandb] extra (requirements-wandb.txt)")
    monkeypatch.setenv("WANDB_MODE", "offline")  # nothing leaves the machine
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = {"project": "mimjax-test", "name": "tiny", "entity": "", "mode": "offline"}
    for start in (0, 1):  # a resumed run continues the same W&B run (its id is kept in the workdir)
        w = metrics.MetricWriter(str(tmp_path), writers="jsonl,wandb", wandb=cfg, hparams={"seed": 3, "eval": {"k": 5}})
        w.write(2 + 10 * start, {"loss": 0.5, "skip": float("inf")})
        w.write_scalars(4 + 10 * start, {"knn_top1": 0.75})
        w.write_images(4 + 10 * start, {"reconstruction": np.zeros((8, 8, 3), np.uint8)})
        w.close()
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    runs = sorted(glob.glob(str(tmp_path / "wandb" / "offline-run-*" / f"run-{run_id}.wandb")))
    assert len(runs) == 2
    deadline = time.time() + 60  # wandb's service process finishes the log on its own: wait for each run's exit
    while time.time() < deadline and not all(any(r.WhichOneof("record_type") == "exit" for r in wandb_records(p))
                                             for p in runs):
        time.sleep(0.5)
    history, config = {}, {}
    for path in runs:
        for r in wandb_records(path):
            kind = r.WhichOneof("record_type")
            if kind == "history":
                items = {i.key or i.nested_key[0]: json.loads(i.value_json) for i in r.history.item}
                history[r.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
            elif kind == "run":
                config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
    assert history[2] == {"loss": 0.5} and history[12] == {"loss": 0.5}  # inf is not sent
    assert history[4]["knn_top1"] == history[14]["knn_top1"] == 0.75 and "reconstruction" in history[4]
    assert {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()
            if k in ("seed", "eval.k")} == {"seed": 3, "eval.k": 5}


class MemoryGcs:
    """The gcsfs calls ObjectAppender makes, on a dict (compose = concatenation)."""

    def __init__(self):
        self.objects = {}

    def glob(self, pattern):
        import fnmatch

        return [k for k in self.objects if fnmatch.fnmatch(k, pattern)]

    def rm_file(self, path):
        del self.objects[path]

    def exists(self, path):
        return path in self.objects

    def info(self, path):
        return {"size": len(self.objects[path])}

    def cat_file(self, path, start=None, end=None):
        return self.objects[path][start:end]

    def pipe_file(self, path, data):
        self.objects[path] = bytes(data)

    def merge(self, path, paths):
        self.objects[path] = b"".join(self.objects[p] for p in paths)

    def invalidate_cache(self, path=None):
        pass


def test_object_appender_uploads_each_byte_once_and_repairs():
    fs = MemoryGcs()
    app = writers.ObjectAppender("gs://b/run/metrics.jsonl", fs=fs)
    for i in range(300):
        app.write(b'{"step": %d}\n' % i)
        if i % 3 == 2:
            app.flush()
    app.close()
    assert app.bytes_uploaded == len(fs.objects["gs://b/run/metrics.jsonl"])  # O(n), not O(n^2)
    assert list(fs.objects) == ["gs://b/run/metrics.jsonl"]  # parts are deleted after each compose
    # A writer killed between uploading a part and composing it, or by a foreign mid-line cut:
    fs.objects["gs://b/run/metrics.jsonl.part-dead-0"] = b'{"step": 999}\n'
    fs.objects["gs://b/run/metrics.jsonl"] += b'{"step": 3'
    app = writers.ObjectAppender("gs://b/run/metrics.jsonl", fs=fs)
    assert list(fs.objects) == ["gs://b/run/metrics.jsonl"]
    rows = fs.objects["gs://b/run/metrics.jsonl"].decode().splitlines()
    assert [json.loads(r)["step"] for r in rows] == list(range(300))


def test_jsonl_and_tensorboard_on_gcs(gcs_bucket):
    """metrics.jsonl on the GCS emulator: rows flushed before a "crash" (a writer dropped
    without close) are intact and readable after reopening, the file is one object, and
    the bytes uploaded add up to its size; TensorBoard's events land there too."""
    from etils import epath

    run = f"{gcs_bucket}/run"
    path = f"{run}/metrics.jsonl"
    w = metrics.MetricWriter(run, writers="jsonl")
    jsonl = w._writers[0]
    for step in range(1, 41):
        w.write(step, {"loss": 1.0 / step})
        if step % 10 == 0:
            w.flush()  # the loop flushes before every checkpoint
    w.write(41, {"loss": 0.0})  # buffered, never flushed: lost in the "crash" below
    uploaded = jsonl._obj.bytes_uploaded
    if jsonl._obj._timer is not None:  # killed: no close, and no timer flushes row 41 afterwards
        jsonl._obj._timer.cancel()
    del w, jsonl
    assert [r["step"] for r in metrics.read_metrics(path)] == list(range(1, 41))
    assert uploaded == epath.Path(path).stat().length

    w = metrics.MetricWriter(run, writers="jsonl,tensorboard")  # the resumed run
    for step in range(41, 46):
        w.write(step, {"loss": 0.5})
    w.close()
    rows = metrics.read_metrics(path)
    assert [r["step"] for r in rows] == list(range(1, 46)) and rows[0] == {"step": 1, "loss": 1.0}
    assert sorted(p.name for p in epath.Path(run).iterdir() if p.name.startswith("metrics")) == ["metrics.jsonl"]
    assert [s for s, _ in tb_scalars(f"{run}/tb")["loss"]][-5:] == [41, 42, 43, 44, 45]
