"""Ctrl-C (SIGINT) through the `mimjax` command: the current step is checkpointed, the command
exits 130 with one line, and the same command resumes from that step."""
import os
import signal
import subprocess
import time

import pytest

from mimjax.train import metrics

CONFIG = "configs/gpa_mae.py:vit_tiny_patch16,runlocal"


def train_args(workdir):
    return ["train", "--config", CONFIG, "--workdir", str(workdir), "--config.total_steps=50", "--config.log_every=1",
            "--config.checkpoint_every=100000"]


@pytest.mark.slow
def test_ctrl_c_saves_the_current_step_exits_130_and_the_same_command_resumes(tmp_path, run_cli, start_cli):
    p = start_cli(*train_args(tmp_path), stdout=subprocess.DEVNULL)
    path, t0 = str(tmp_path / "metrics.jsonl"), time.time()
    while p.poll() is None and time.time() - t0 < 300:
        if os.path.exists(path) and any(r["step"] >= 2 for r in metrics.read_metrics(path)):
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    last_logged = metrics.read_metrics(path)[-1]["step"]
    assert 2 <= last_logged < 50
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [last_logged]
    lines = [line for line in stderr.splitlines() if line.startswith("mimjax train:")]
    assert lines == [f"mimjax train: interrupted (Ctrl-C): saved step {last_logged} in "
                     f"{tmp_path / 'checkpoints'}; the same command resumes"], stderr[-3000:]

    again = run_cli(*train_args(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from step {last_logged}" in again.stderr
    assert metrics.read_metrics(path)[-1]["step"] == 50
