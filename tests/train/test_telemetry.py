"""Telemetry (mimjax/train/telemetry.py): each row's step time, input wait, TFLOP/s and MFU;
the input-bound warning once per window; goodput.json's parts adding up to the wall time,
one segment per process start (a kill -9 keeps its segment up to its last checkpoint)."""
import json
import logging
import os
import signal
import time

import pytest

from mimjax import flops
from mimjax.parallel import targets
from mimjax.train import metrics, telemetry
from scaffold import run_cli_here as mimjax  # tests/scaffold.py: `mimjax ARGS` in this process

TINY = ["--config", "mae:vit_tiny_patch16,runlocal", "--config.total_steps=6", "--config.log_every=1",
        "--config.checkpoint_every=2", "--config.snapshot_every=0", "--config.writers=jsonl"]


def slowed_loop(t, rows, wait_s, step_s):
    """`rows` steps, each waiting `wait_s` for its batch and running `step_s`, a row each."""
    out = []
    for step in range(1, rows + 1):
        with t.waiting_for_input():
            time.sleep(wait_s)
        with t.step(step):
            time.sleep(step_s)
        out.append(t.row(1))
    t.after_loop()
    return out


def input_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("input: ")]


def test_input_wait_of_a_slowed_source_and_one_warning_per_window(caplog):
    caplog.set_level(logging.WARNING, logger="mimjax")
    t = telemetry.Telemetry(flops_per_step=None, peak=None, devices=1, warn_frac=0.1, threads=3)
    rows = slowed_loop(t, 2 * telemetry.WARN_ROWS, wait_s=0.03, step_s=0.01)  # 75% waiting
    assert all(abs(r["input_wait_frac"] - 0.75) < 0.1 for r in rows), [r["input_wait_frac"] for r in rows]
    assert all(set(r) == {"step_time_s", "input_wait_frac"} for r in rows)  # no FLOPs, no peak: no mfu
    assert all(0.035 < r["step_time_s"] < 0.08 for r in rows)
    warnings = input_warnings(caplog)
    assert len(warnings) == 2, warnings  # 20 rows: one per window of 10
    assert f"of the last {telemetry.WARN_ROWS} steps (3 reader threads" in warnings[0]
    caplog.clear()
    quiet = telemetry.Telemetry(flops_per_step=None, peak=None, devices=1, warn_frac=0.9)
    slowed_loop(quiet, telemetry.WARN_ROWS, wait_s=0.03, step_s=0.01)
    assert input_warnings(caplog) == []


def test_tflops_and_mfu_by_hand():
    t = telemetry.Telemetry(flops_per_step=6e9, peak=2e12, devices=3, warn_frac=1.0)
    (row,) = slowed_loop(t, 1, wait_s=0.0, step_s=0.02)
    assert row["tflops_per_device"] == pytest.approx(6e9 / row["step_time_s"] / 3 / 1e12, rel=1e-12)
    assert row["mfu"] == pytest.approx(6e9 / (row["step_time_s"] * 3 * 2e12), rel=1e-12)


def test_one_chip_table_for_plan_and_mfu():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == flops.peak_flops("NVIDIA H100 PCIe") == 989e12
    assert flops.peak_flops("NVIDIA GH200 480GB") == targets.CHIPS["h200"].peak_bf16
    assert flops.peak_flops("TPU v5 lite") == targets.CHIPS["v5e"].peak_bf16
    assert flops.peak_flops("TPU v5") == targets.CHIPS["v5p"].peak_bf16 == 459e12
    assert flops.peak_flops("TPU v4") == 275e12 and flops.peak_flops("cpu") is None


def test_goodput_parts_add_up_to_the_wall_time(tmp_path):
    t = telemetry.Telemetry(flops_per_step=1e9, peak=1e12, devices=1, warn_frac=1.0)
    time.sleep(0.05)  # start-up
    slowed_loop(t, 5, wait_s=0.01, step_s=0.02)
    with t.phase("checkpoint"):
        time.sleep(0.03)
    seg = t.write(str(tmp_path), "finished")
    parts = seg["parts_s"]
    assert abs(sum(parts.values()) - seg["wall_s"]) <= 0.02 * seg["wall_s"]
    assert parts["startup"] >= 0.05 and parts["checkpoint"] >= 0.03 and parts["input"] >= 0.05
    assert parts["steps"] >= 0.08 and parts["compile"] >= 0.02  # the first step's call is the compile
    assert seg["step_time_s"] == pytest.approx(parts["steps"] / 4)
    assert seg["plan"]["step_time_s"] == {"100%": 1e-3, "50%": 2e-3}
    saved = json.loads((tmp_path / "goodput.json").read_text())["segments"]
    assert [s["id"] for s in saved] == [t.id]


def test_a_run_logs_the_fields_in_every_row_and_a_segment_per_start(tmp_path, capsys):
    """The tiny MAE on the CPU with a given peak: mfu = tflops_per_device / peak in every row; a
    resumed run adds a second segment; rows before and after the resume carry the same fields."""
    w = str(tmp_path / "w")
    status, _, lines = mimjax(capsys, "train", *TINY, "--workdir", w, "--config.telemetry.peak_tflops=0.5")
    assert (status, lines) == (0, [])
    status, _, lines = mimjax(capsys, "train", *TINY, "--workdir", w, "--config.telemetry.peak_tflops=0.5",
                              "--config.total_steps=8")
    assert (status, lines) == (0, [])
    rows = [r for r in metrics.read_metrics(os.path.join(w, "metrics.jsonl")) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert len({frozenset(r) for r in rows}) == 1 and {"step_time_s", "input_wait_frac", "mfu"} <= set(rows[0])
    for r in rows:
        assert r["mfu"] == pytest.approx(r["tflops_per_device"] / 0.5, rel=1e-9) and 0 <= r["input_wait_frac"] <= 1
    segments = json.loads(open(os.path.join(w, "goodput.json")).read())["segments"]
    assert [(s["ended"], s["first_step"], s["last_step"]) for s in segments] == [("finished", 1, 6), ("finished", 7, 8)]
    for s in segments:
        assert abs(sum(s["parts_s"].values()) - s["wall_s"]) <= 0.02 * s["wall_s"]


@pytest.mark.parametrize("flag,words", [("--config.telemetry.peak_tflops=-1", "config.telemetry.peak_tflops=-1"),
                                        ("--config.telemetry.input_warn_frac=2", "config.telemetry.input_warn_frac=2"),
                                        ("--config.telemetry.bogus=1", "telemetry.bogus")])
def test_bad_telemetry_settings_are_one_line(tmp_path, capsys, flag, words):
    status, _, lines = mimjax(capsys, "train", *TINY, "--workdir", tmp_path / "w", flag)
    assert status == 2 and len(lines) == 1 and words in lines[0], lines
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_a_killed_run_keeps_its_segment_to_its_last_checkpoint(tmp_path, start_cli, run_cli):
    w = tmp_path / "w"
    args = ["train", *TINY, "--workdir", w, "--config.total_steps=400"]
    proc = start_cli(*args)
    try:
        deadline = time.monotonic() + 300
        while not (w / "goodput.json").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (w / "goodput.json").exists(), proc.stderr.read()[-2000:]
    out = run_cli(*args[:-1], "--config.total_steps=40")  # resumes from its last checkpoint
    assert out.returncode == 0, out.stderr[-2000:]
    segments = json.loads((w / "goodput.json").read_text())["segments"]
    assert [s["ended"] for s in segments] == ["running", "finished"] and segments[1]["last_step"] == 40
    assert segments[0]["last_step"] % 2 == 0 and segments[0]["steps"] >= 2
