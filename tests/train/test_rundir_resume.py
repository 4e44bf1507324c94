"""A run directory that a signal during a save, a lost config.json or a resume from an earlier
checkpoint cannot poison, through the `mimjax` command on the tiny GPA recipe."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from mimjax.train import metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/gpa_mae.py:vit_tiny_patch16,runlocal"

# `mimjax train` with a signal sent to itself as the periodic checkpoint save starts: the
# window a user hits by chance (SIGTERM or Ctrl-C within ~0.1 s of the save), every time.
SIGNAL_IN_SAVE = """
import os, signal, sys
from mimjax import cli
from mimjax.train import checkpoint
save = checkpoint.Checkpointer.save
def signalled(self, step, state, data_state, *, force=False):
    if not force:  # the periodic save; the final one is forced
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    return save(self, step, state, data_state, force=force)
checkpoint.Checkpointer.save = signalled
sys.exit(cli.main(["mimjax", *sys.argv[2:]]))
"""


def train_args(workdir, steps, *extra):
    return ["train", "--config", CONFIG, "--workdir", str(workdir), f"--config.total_steps={steps}",
            "--config.log_every=1", "--config.checkpoint_every=2", "--config.keep_checkpoints=10", *extra]


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("mimjax train:")]


def snapshot(workdir):
    out = {}
    for root, _, files in os.walk(workdir):
        for f in files:
            st = os.stat(os.path.join(root, f))
            out[os.path.relpath(os.path.join(root, f), workdir)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("sig, status", [("SIGTERM", 0), ("SIGINT", 130)])
def test_a_signal_as_a_periodic_save_starts_saves_that_step_once(sig, status, tmp_path):
    p = subprocess.run([sys.executable, "-c", SIGNAL_IN_SAVE, sig, *train_args(tmp_path, 6)], cwd=REPO,
                       capture_output=True, text=True, timeout=600)  # this process's environment: CPU only
    assert p.returncode == status, p.stderr[-3000:]
    assert "Traceback" not in p.stderr and "StepAlreadyExistsError" not in p.stderr, p.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    want = [] if sig == "SIGTERM" else [f"mimjax train: interrupted (Ctrl-C): saved step 2 in "
                                        f"{tmp_path / 'checkpoints'}; the same command resumes"]
    assert error_lines(p.stderr) == want, p.stderr[-3000:]


def test_a_lost_config_json_is_recovered_a_refused_start_writes_nothing_and_replayed_steps_are_logged_once(
        tmp_path, run_cli):
    wd = tmp_path / "w"
    p = run_cli(*train_args(wd, 4))
    assert p.returncode == 0, p.stderr[-3000:]
    # the lr in use, and where it comes from
    assert re.search(r"; lr [0-9.e-]+ \(optimizer\.", p.stderr), p.stderr[-3000:]
    saved = json.loads((wd / "config.json").read_text())
    changed = ("--config.masking.mask_ratio=0.5", f"--config.model.norm_pix_loss={not saved['model']['norm_pix_loss']}")
    refused = {f"config.masking.mask_ratio=0.5 (the run has {saved['masking']['mask_ratio']!r})",
               f"config.model.norm_pix_loss={not saved['model']['norm_pix_loss']!r} (the run has "
               f"{saved['model']['norm_pix_loss']!r})"}

    # config.json deleted, or replaced by {}: the run's config comes from config_history.jsonl
    for config_json in (None, "{}"):
        if config_json is None:
            os.remove(wd / "config.json")
        else:
            (wd / "config.json").write_text(config_json)
        before = snapshot(wd)
        p = run_cli(*train_args(wd, 4, *changed))
        assert p.returncode == 2, p.stderr[-3000:]
        (line,) = error_lines(p.stderr)
        m = re.fullmatch(rf"mimjax train: config error: cannot resume {re.escape(str(wd))}: (.*) \(compared with "
                         rf"config_history.jsonl\); start a new --workdir or use the run's values", line)
        assert m and set(m.group(1).split(", ")) == refused, line
        assert snapshot(wd) == before

    # nothing left to compare with: the input iterator refuses another seed, and nothing is written
    os.remove(wd / "config.json")
    os.remove(wd / "config_history.jsonl")
    before = snapshot(wd)
    p = run_cli(*train_args(wd, 4, f"--config.seed={saved['seed'] + 1}"))
    assert p.returncode == 2 and len(error_lines(p.stderr)) == 1 and "cannot resume" in p.stderr, p.stderr[-3000:]
    assert snapshot(wd) == before and not (wd / "config.json").exists()

    # resumed from an earlier checkpoint: the replayed steps' rows replace the old ones
    (wd / "config.json").write_text(json.dumps(saved))
    shutil.rmtree(wd / "checkpoints" / "4")
    p = run_cli(*train_args(wd, 4))
    assert p.returncode == 0 and "resumed from step 2" in p.stderr, p.stderr[-3000:]
    rows = metrics.read_metrics(str(wd / "metrics.jsonl"))
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
