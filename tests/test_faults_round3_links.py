"""Issue 36 (nothing outside the run is touched, nothing hangs), round 3: a symbolic link
planted at `run.lock` (BAD 1) or at any other file mimjax writes in a run or output
directory (BAD 2) is never written through: one line naming it, exit 2, its target as it
was; a `checkpoints` that cannot be written (BAD 5) is refused at the start, and a save
that fails mid-run stops the run at once with one line, exit 4, instead of hanging.
Mostly through `mimjax.cli.main` in this process on a copy of the session's trained tiny
run; end to end (marked slow) for a run that writes nothing when refused and for a save
failing mid-run."""
import json
import os
import shutil
import time

import numpy as np
import pytest

from mimjax import paths
from mimjax import workdir as workdir_lib
from mimjax.errors import UsageError
from mimjax.schema import ConfigError
from mimjax.train import pictures, writers
from scaffold import listing, run_cli_here as mimjax  # tests/scaffold.py: `mimjax ARGS` in this process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs/gpa_mae.py") + ":vit_tiny_patch16,runlocal"
EXIT_WRITE = 4


def refused(path, to):
    return f"{path} is a symbolic link (to {str(to)!r}); mimjax never writes through a link: remove it or choose " \
           f"another directory"


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the session's trained 2-step run (tests plant links in it)."""
    w = str(tmp_path / "run")
    shutil.copytree(trained_run, w, symlinks=True)
    return w


def plant(path, tmp_path):
    """Moves what is at `path` (a file or folder of the run; a new user file when there is
    none) to tmp_path/elsewhere and leaves a symbolic link to it at `path`; returns the target."""
    target = tmp_path / "elsewhere" / os.path.basename(path)
    target.parent.mkdir(exist_ok=True)
    if os.path.lexists(path):
        shutil.move(path, target)
    else:
        target.write_text("the user's own file\n")
    os.symlink(target, path)
    return target


# --- Every writer: never through a link (in this process) ----------------------------------
WRITES = {
    "write_text": lambda w, name: paths.write_text(os.path.join(w, name), "new"),
    "write_bytes": lambda w, name: paths.write_bytes(os.path.join(w, name), b"new"),
    "append_text": lambda w, name: paths.append_text(os.path.join(w, name), "new\n"),
    "save_png": lambda w, name: pictures.save_png(os.path.join(w, name), np.zeros((4, 4, 3), np.uint8)),
    "config.json": lambda w, name: workdir_lib.write_config(w, workdir_lib.read_config(w)),
    "config_history.jsonl": lambda w, name: workdir_lib.write_config_history(w, workdir_lib.read_config(w), []),
    "metrics.jsonl (JsonlWriter)": lambda w, name: writers.JsonlWriter(w).close(),
    "metrics.jsonl (drop_rows_after)": lambda w, name: writers.drop_rows_after(w, 0),
}
NAMES = {"write_text": "knn.json", "write_bytes": "linprobe.json", "append_text": "metrics.jsonl",
         "save_png": "curves.png", "config.json": "config.json", "config_history.jsonl": "config_history.jsonl",
         "metrics.jsonl (JsonlWriter)": "metrics.jsonl", "metrics.jsonl (drop_rows_after)": "metrics.jsonl"}


@pytest.mark.parametrize("what", list(WRITES))
def test_no_write_goes_through_a_link(run_copy, tmp_path, what):
    name = NAMES[what]
    target = plant(os.path.join(run_copy, name), tmp_path)
    before = listing(tmp_path)
    with pytest.raises(UsageError) as e:
        WRITES[what](run_copy, name)
    assert str(e.value) == refused(os.path.join(run_copy, name), target)
    assert listing(tmp_path) == before


def test_a_link_planted_after_the_check_is_not_written_through(tmp_path):
    """O_NOFOLLOW: the append itself refuses a link, whatever was checked before."""
    target = tmp_path / "user.txt"
    target.write_text("mine\n")
    os.symlink(target, tmp_path / "metrics.jsonl")
    with pytest.raises(UsageError, match="is a symbolic link"):
        os.close(paths.open_nofollow(str(tmp_path / "metrics.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT))
    assert target.read_text() == "mine\n"


# --- BAD 1: run.lock ------------------------------------------------------------------------
def test_a_symlinked_run_lock_is_refused_and_its_target_kept(tmp_path):
    w = tmp_path / "run"
    w.mkdir()
    target = plant(str(w / "run.lock"), tmp_path)
    before = listing(tmp_path)
    with pytest.raises(ConfigError) as e:
        workdir_lib.RunLock.acquire(str(w))
    assert str(e.value) == refused(w / "run.lock", target)
    assert listing(tmp_path) == before  # the target is not truncated, the link not removed


def test_a_released_lock_removes_only_its_own_file(tmp_path):
    lock = workdir_lib.RunLock.acquire(str(tmp_path))
    os.replace(tmp_path / "run.lock", tmp_path / "taken")  # another file now stands at run.lock
    (tmp_path / "run.lock").write_text("not the lock's\n")
    lock.release()
    assert (tmp_path / "run.lock").read_text() == "not the lock's\n"


# --- BAD 2: the run refuses at its start, before any step -----------------------------------
@pytest.mark.parametrize("name", ["run.lock", "config.json", "config_history.jsonl", "metrics.jsonl", "curves.png",
                                  "snapshots/step_0000002.png", "wandb_run_id", "goodput.json"])
def test_train_refuses_a_link_at_any_file_it_writes(run_copy, tmp_path, capsys, name):
    target = plant(os.path.join(run_copy, name), tmp_path)
    before = listing(tmp_path)
    status, printed, lines = mimjax(capsys, "train", "--config", CONFIG, "--workdir", run_copy,
                                    "--config.total_steps=3")
    assert (status, lines) == (2, [f"mimjax train: config error: {refused(os.path.join(run_copy, name), target)}"])
    assert listing(tmp_path) == before


def test_eval_outputs_are_never_written_through_a_link(run_copy, tmp_path, capsys):
    out = tmp_path / "pictures"
    out.mkdir()
    for args, link in [(("eval", "knn", "--workdir", run_copy), os.path.join(run_copy, "knn.json")),
                       (("eval", "knn", "--workdir", run_copy, "--random_init"),
                        os.path.join(run_copy, "knn_random_init.json")),
                       (("eval", "linprobe", "--config", os.path.join(REPO, "configs/linprobe.py:runlocal"),
                         "--workdir", run_copy), os.path.join(run_copy, "linprobe.json")),
                       (("visualize", "--workdir", run_copy, "--out", out), str(out / "reconstruction.png")),
                       (("visualize", "--workdir", run_copy, "--out", out), str(out / "curves.png")),
                       (("finetune", "--config", os.path.join(REPO, "configs/finetune.py:runlocal"), "--workdir",
                         run_copy, "--out", out / "ft"), str(out / "ft" / "finetune.json"))]:
        os.makedirs(os.path.dirname(link), exist_ok=True)
        target = plant(link, tmp_path)
        before = listing(tmp_path)
        status, printed, lines = mimjax(capsys, *args)
        prefix = "config error: " if args[0] == "finetune" else ""  # a classifier's --out is its run
        assert (status, printed, lines) == (2, "", [f"mimjax {' '.join(args[:2]) if args[0] == 'eval' else args[0]}: "
                                                    f"{prefix}{refused(link, target)}"]), args
        assert listing(tmp_path) == before
        os.remove(link)


# --- BAD 5: checkpoints/ that cannot be written -----------------------------------------------
def test_checkpoints_that_is_not_a_directory_is_refused_at_the_start(tmp_path, capsys):
    w = tmp_path / "run"
    w.mkdir()
    (w / "checkpoints").write_text("a file, not a folder\n")
    before = listing(tmp_path)
    status, printed, lines = mimjax(capsys, "train", "--config", CONFIG, "--workdir", w, "--config.total_steps=1")
    assert (status, lines) == (2, [f"mimjax train: config error: {w}/checkpoints is not a directory: expected the "
                                   f"run's checkpoint folder (nothing was written); move it away or choose another "
                                   f"--workdir"])
    assert listing(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder (the file case above covers it)")
def test_read_only_checkpoints_are_refused_at_the_start(run_copy, capsys):
    ck = os.path.join(run_copy, "checkpoints")
    os.chmod(ck, 0o555)
    try:
        before = listing(run_copy)
        status, printed, lines = mimjax(capsys, "train", "--config", CONFIG, "--workdir", run_copy,
                                        "--config.total_steps=3")
        assert (status, lines) == (2, [f"mimjax train: config error: {ck} cannot be written by this process (nothing "
                                       f"was written): expected a writable checkpoint folder; fix its permissions or "
                                       f"choose another --workdir"])
        assert listing(run_copy) == before
    finally:
        os.chmod(ck, 0o755)


# --- End to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_whose_curves_png_is_a_link_writes_nothing(tmp_path, run_cli):
    """curves.png is written at the end of a run: the link is refused before the first step."""
    w = tmp_path / "run"
    w.mkdir()
    target = plant(str(w / "curves.png"), tmp_path)
    before = listing(tmp_path)
    p = run_cli("train", "--config", CONFIG, "--workdir", w, "--config.total_steps=2", timeout=600)
    assert p.returncode == 2, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1] == f"mimjax train: config error: {refused(w / 'curves.png', target)}"
    assert listing(tmp_path) == before  # no step, no config.json, no metrics.jsonl


@pytest.mark.slow
def test_a_save_failing_mid_run_stops_at_once_with_one_line(tmp_path, start_cli):
    """checkpoints/ becomes a file while the run goes on (root writes into any folder, so a
    read-only one would not do): the next save fails in the background; the run stops after
    that step with exit 4 and one line naming the path, instead of training on and then
    hanging on Orbax's threads for minutes."""
    w = str(tmp_path / "run")
    ck = os.path.join(w, "checkpoints")
    p = start_cli("train", "--config", CONFIG, "--workdir", w, "--config.total_steps=400", "--config.log_every=1",
                  "--config.checkpoint_every=100")
    try:
        while not os.path.isdir(os.path.join(ck, "100")):  # the first save is complete
            assert p.poll() is None, p.stderr.read()[-3000:]
            time.sleep(0.05)
        os.rename(ck, ck + ".moved")
        with open(ck, "w") as f:
            f.write("not a folder\n")
        t0 = time.monotonic()
        status = p.wait(timeout=240)
        err = p.stderr.read()
    finally:
        p.kill()
    assert status == EXIT_WRITE, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"mimjax train: cannot write while saving checkpoint step 200 in {ck} ("), last
    assert f"Not a directory: '{ck}/200.orbax-checkpoint-tmp'" in last and f"make {ck} a writable directory" in last
    steps = [json.loads(line)["step"] for line in open(os.path.join(w, "metrics.jsonl"))]
    assert 200 <= steps[-1] < 300  # stopped after the failed save, not at the next one (or the end)
    assert time.monotonic() - t0 < 120  # no hang
    assert sorted(os.listdir(ck + ".moved")) == ["100"] and open(ck).read() == "not a folder\n"


def test_a_linked_checkpoints_folder_is_written_into(run_copy, tmp_path):
    """A folder that links to a directory (checkpoints/ on a bigger disk) is the user's choice."""
    elsewhere = tmp_path / "bigdisk"
    shutil.move(os.path.join(run_copy, "checkpoints"), elsewhere)
    os.symlink(elsewhere, os.path.join(run_copy, "checkpoints"))
    from mimjax.train import pretrain
    from scaffold import make_tiny_config

    pretrain.train(make_tiny_config(total_steps=3), run_copy)  # the trained run's config, one step more
    assert "3" in os.listdir(elsewhere) and os.path.islink(os.path.join(run_copy, "checkpoints"))
