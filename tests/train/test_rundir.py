"""A run directory is a contract through the `mimjax` command: resuming with a
config that would change what the checkpoint means stops with one line; the safe changes
(mimjax.workdir.SAFE) resume with a log line; every start is kept in config_history.jsonl;
one writer at a time (run.lock); an empty --workdir is an error."""
import json
import os
import socket
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/gpa_mae.py:vit_tiny_patch16,runlocal"


def train_args(workdir, steps, *extra, config=CONFIG):
    return ["train", "--config", config, "--workdir", str(workdir), f"--config.total_steps={steps}",
            "--config.log_every=1", *extra]


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("mimjax train:")]


def snapshot(workdir):
    """Every file under workdir with its size and mtime (what "untouched" means)."""
    out = {}
    for root, _, files in os.walk(workdir):
        for f in files:
            st = os.stat(os.path.join(root, f))
            out[os.path.relpath(os.path.join(root, f), workdir)] = (st.st_size, st.st_mtime_ns)
    return out


def test_resume_with_another_config_refuses_safe_changes_resume_and_the_history_keeps_both(tmp_path, run_cli):
    wd = tmp_path / "w"
    p = run_cli(*train_args(wd, 2))
    assert p.returncode == 0, p.stderr[-3000:]
    saved = json.loads((wd / "config.json").read_text())
    before = snapshot(wd)

    p = run_cli(*train_args(wd, 2, "--config.model.name=mae_vit_small_patch16", "--config.batch_size=16"))
    assert p.returncode == 2, p.stderr[-3000:]
    assert error_lines(p.stderr) == [
        f"mimjax train: config error: cannot resume {wd}: config.batch_size=16 (the run has {saved['batch_size']}), "
        f"config.model.name='mae_vit_small_patch16' (the run has '{saved['model']['name']}'); start a new "
        f"--workdir or use the run's values"], p.stderr[-3000:]  # keys in config.json's (alphabetical) order
    assert snapshot(wd) == before  # config.json, checkpoints, history, metrics: untouched; no lock left

    other = "random" if saved["masking"]["strategy"] != "random" else "gpa"
    p = run_cli(*train_args(wd, 2, f"--config.masking.strategy={other}"))
    assert p.returncode == 2 and len(error_lines(p.stderr)) == 1, p.stderr[-3000:]
    assert f"config.masking.strategy='{other}' (the run has '{saved['masking']['strategy']}')" in p.stderr
    assert snapshot(wd) == before

    # A safe change (longer run) resumes from step 2, saying what changed and its effect.
    p = run_cli(*train_args(wd, 3))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "config.total_steps=3 (was 2): the lr schedule" in p.stderr
    assert "resumed from step 2" in p.stderr
    assert sorted(os.listdir(wd / "checkpoints"))[-1] == "3"
    history = [json.loads(line) for line in (wd / "config_history.jsonl").read_text().splitlines()]
    assert [h["config"]["total_steps"] for h in history] == [2, 3]
    assert history[0]["changes"] == [] and history[1]["changes"][0].startswith("config.total_steps=3")
    assert json.loads((wd / "config.json").read_text())["total_steps"] == 3
    assert not (wd / "run.lock").exists()


def test_a_second_run_on_a_live_workdir_refuses_naming_the_first(tmp_path, run_cli, start_cli):
    wd = tmp_path / "w"
    first = start_cli(*train_args(wd, 100000, "--config.checkpoint_every=100000"), stdout=subprocess.DEVNULL)
    try:
        lock, t0 = wd / "run.lock", time.time()
        # the lock is written first, config.json right after it: wait for both
        while not (lock.exists() and lock.read_text().strip() and (wd / "config.json").exists()):
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.time() - t0 < 300, "the first run never took the lock"
            time.sleep(0.1)
        config_before = (wd / "config.json").read_text()
        p = run_cli(*train_args(wd, 5))
        assert p.returncode == 2, p.stderr[-3000:]
        (line,) = error_lines(p.stderr)
        assert line.startswith(f"mimjax train: config error: {wd} is in use by pid {first.pid} on host "
                               f"{socket.gethostname()}"), line
        assert (wd / "config.json").read_text() == config_before
        assert json.loads(lock.read_text())["pid"] == first.pid  # still the first's
        metrics = wd / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().strip()):  # a step logged: SIGTERM is handled
            assert first.poll() is None and time.time() - t0 < 300, first.stderr.read()[-3000:]
            time.sleep(0.1)
    finally:
        first.terminate()  # SIGTERM: saves and exits 0
        rc = first.wait(timeout=300)
    assert rc == 0, first.stderr.read()[-3000:]
    assert not (wd / "run.lock").exists()  # released on the way out


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, run_cli):
    dead = subprocess.Popen(["true"])
    dead.wait()
    wd = tmp_path / "w"
    wd.mkdir()
    (wd / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}) + "\n")
    p = run_cli(*train_args(wd, 1))
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"taking over the stale lock {wd / 'run.lock'} of pid {dead.pid} on host {socket.gethostname()}" in p.stderr
    assert not (wd / "run.lock").exists()


def test_an_empty_workdir_is_a_config_error(tmp_path, run_cli):
    for wd in ("", "  "):
        p = run_cli(*train_args(wd, 1, config=os.path.join(REPO, CONFIG)), cwd=tmp_path)  # run from tmp_path
        assert p.returncode == 2, p.stderr[-3000:]
        assert error_lines(p.stderr) == [f"mimjax train: config error: --workdir={wd!r}: expected a directory path, "
                                         f"not an empty one"], p.stderr[-3000:]
        assert os.listdir(tmp_path) == []
