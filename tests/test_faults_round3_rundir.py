"""Issue 36 (nothing lost, one clear line), round 3, the run directory's POOR rows: a resume
after a cut last line of metrics.jsonl keeps every whole row and says what it removed; a
step folder in checkpoints/ that is a symbolic link is refused at the start, and a linked
checkpoints/ does not let an export in; another user's stale run.lock is named as such;
`mimjax import` of mimjax's own export takes the architecture from its record, never
replaces a config.json it did not write, and `.pth` without PyTorch is one line. Through
`mimjax.cli.main` in this process on copies of the session's trained tiny run."""
import json
import logging
import os
import pwd
import shutil
import signal
import sys
import tempfile
import warnings

import jax
import numpy as np
import pytest

from mimjax import workdir as workdir_lib
from mimjax.schema import ConfigError
from scaffold import listing, run_cli_here as mimjax  # tests/scaffold.py: `mimjax ARGS` in this process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs/mae.py") + ":vit_base_patch16,runlocal"  # the trained run's config


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the session's trained 2-step run (checkpoint 2, metrics row 2)."""
    w = str(tmp_path / "run")
    shutil.copytree(trained_run, w, symlinks=True)
    return w


def steps(w):
    return [json.loads(line)["step"] for line in open(os.path.join(w, "metrics.jsonl"))]


# --- metrics.jsonl with a cut last line -------------------------------------------------------
@pytest.mark.parametrize("cut, rows, said", [
    (1, [2, 3], []),  # a kill took only the newline: step 2's row is whole and stays (it was dropped silently)
    (20, [3], ["{m}: removed its last line, step 2's row cut mid-write (a kill); that row is lost (the run "
               "resumes after step 2)"]),  # cut mid-row: removed, and not "logged again" (it was said to be)
])
def test_a_resume_after_a_cut_last_line_keeps_every_whole_row(run_copy, capsys, caplog, cut, rows, said):
    m = os.path.join(run_copy, "metrics.jsonl")
    row = open(m).read()
    with open(m, "r+") as f:
        f.truncate(len(row) - cut)
    with caplog.at_level(logging.INFO, logger="mimjax"):
        status, printed, lines = mimjax(capsys, "train", "--config", CONFIG, "--workdir", run_copy,
                                        "--config.total_steps=3")
    assert (status, lines) == (0, [])
    assert "pre-training resumed from step 2" in caplog.text
    assert steps(run_copy) == rows and (cut > 1 or open(m).read().startswith(row))
    logged = [r.getMessage() for r in caplog.records if "metrics.jsonl" in r.getMessage()]
    assert logged == [s.replace("{m}", str(m)) for s in said]


ROWS = [json.dumps({"step": s, "loss": 0.5}) for s in (2, 3, 4, 5, 6)]


@pytest.mark.parametrize("tail, said", [
    ("", []),  # row 5 lost only its newline: a whole row after step 3
    ("\n" + ROWS[4][:20], ["{m}: removed its last line, step 6's row cut mid-write (a kill); the resumed run logs "
                           "step 6 again"]),
    ('\n{"ste', ["{m}: removed its last line, cut mid-write (a kill): '{\"ste'"]),
])
def test_rows_after_the_checkpoint_go_and_a_cut_one_is_said_to_be_logged_again(tmp_path, caplog, tail, said):
    """Resuming from step 3: the whole rows 4 and 5 go (logged again), rows up to 3 and other text stay."""
    from mimjax.train import writers

    m = tmp_path / "metrics.jsonl"
    m.write_text("\n".join([ROWS[0], "a note", *ROWS[1:4]]) + tail)
    with caplog.at_level(logging.INFO, logger="mimjax"):
        assert writers.drop_rows_after(str(tmp_path), 3) == 2
    assert m.read_text() == f"{ROWS[0]}\na note\n{ROWS[1]}\n"
    assert [r.getMessage() for r in caplog.records] == [s.replace("{m}", str(m)) for s in said]


# --- checkpoints/: a linked step, a linked folder ---------------------------------------------
def test_a_step_folder_that_is_a_link_is_refused_at_the_start(run_copy, tmp_path, capsys):
    """Orbax removes old steps itself and fails on a link at every save: refused, nothing written."""
    step = os.path.join(run_copy, "checkpoints", "2")
    elsewhere = tmp_path / "elsewhere"
    shutil.move(step, elsewhere)
    os.symlink(elsewhere, step)
    before = listing(tmp_path)
    status, printed, lines = mimjax(capsys, "train", "--config", CONFIG, "--workdir", run_copy,
                                    "--config.total_steps=3")
    ckpts = os.path.join(run_copy, "checkpoints")
    assert (status, lines) == (2, [
        f"mimjax train: config error: {step} is a symbolic link (to {str(elsewhere)!r}): the steps in {ckpts} are "
        f"folders that Orbax writes and removes, never through a link (nothing was written); move that step's "
        f"folder into {ckpts} or remove the link"])
    assert listing(tmp_path) == before


def test_export_into_a_linked_checkpoints_folder_is_refused_either_way(run_copy, tmp_path, capsys):
    """checkpoints/ on a bigger disk: neither the path through the link nor the real one lets an export in."""
    bigdisk = tmp_path / "bigdisk"
    shutil.move(os.path.join(run_copy, "checkpoints"), bigdisk)
    os.symlink(bigdisk, os.path.join(run_copy, "checkpoints"))
    before = listing(tmp_path)
    for out in (os.path.join(run_copy, "checkpoints", "vit.safetensors"), str(bigdisk / "vit.safetensors"),
                str(bigdisk / "2" / "vit")):
        status, printed, lines = mimjax(capsys, "export", "--workdir", run_copy, "--format", "timm", "--out", out)
        assert (status, printed, lines) == (2, "", [
            f"mimjax export: --out {out!r} lies inside the run {run_copy}'s checkpoints/, which holds only its "
            f"checkpoints: choose a path outside it"]), out
    assert listing(tmp_path) == before


def test_an_output_through_another_runs_linked_checkpoints_is_refused(run_copy, tmp_path):
    """`not_in` aside: the path as written goes through a run's checkpoints/ (a link)."""
    from mimjax.errors import UsageError

    os.rename(os.path.join(run_copy, "checkpoints"), tmp_path / "bigdisk")
    os.symlink(tmp_path / "bigdisk", os.path.join(run_copy, "checkpoints"))
    out = os.path.join(run_copy, "checkpoints", "pictures")
    with pytest.raises(UsageError, match=f"lies inside the run {run_copy}'s checkpoints/"):
        workdir_lib.check_output(out, "--out")


# --- run.lock of another user -----------------------------------------------------------------
NOBODY = 65534


def acquire_as_another_user(workdir) -> str:
    """What RunLock.acquire(workdir) raises for a process that is not the owner of
    workdir/run.lock: as root, in a forked child that became `nobody` (root writes any file);
    otherwise in this process, the lock's permissions for others made its owner's too. str
    of the ConfigError, or what happened instead."""
    if os.geteuid() != 0:
        lock = os.path.join(workdir, "run.lock")
        os.chmod(lock, (os.stat(lock).st_mode & 0o007) * 0o111)
        try:
            workdir_lib.RunLock.acquire(workdir)
            return "acquired"
        except ConfigError as e:
            return str(e)
    r, w = os.pipe()
    with warnings.catch_warnings():  # JAX warns of a fork; the child runs os calls and plain Python, then _exit
        warnings.simplefilter("ignore", RuntimeWarning)
        pid = os.fork()
    if pid == 0:
        try:
            signal.alarm(20)  # a child stuck on a lock another thread held at the fork ends, not the test
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                workdir_lib.RunLock.acquire(workdir)
                said = "acquired"
            except ConfigError as e:
                said = str(e)
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                said = repr(e)
            os.write(w, said.encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        said = f.read().decode()
    os.waitpid(pid, 0)
    return said


@pytest.fixture
def shared_dir():
    """A directory any user may enter and write (tmp_path's parents are root's alone)."""
    d = tempfile.mkdtemp(prefix="mimjax-lock-")
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d)


@pytest.mark.parametrize("mode", [0o644, 0o600], ids=["readable", "unreadable"])
def test_a_stale_lock_of_another_user_names_its_owner_and_how_to_remove_it(shared_dir, mode):
    lock = os.path.join(shared_dir, "run.lock")
    with open(lock, "w") as f:
        f.write('{"pid": 4242, "host": "node7", "started": "2026-12-01T10:00:00+00:00"}\n')
    os.chmod(lock, mode)
    said = acquire_as_another_user(shared_dir)
    me, uid = (NOBODY if os.geteuid() == 0 else os.geteuid()), os.stat(lock).st_uid
    owner = f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    this = f"this process (user {pwd.getpwuid(me).pw_name}, uid {me})"
    remove = f"(rm {lock}, as {pwd.getpwuid(uid).pw_name}{' or root' if uid else ''})"
    assert said == (f"{lock} is a stale lock (pid 4242 on host node7; no run holds it) that belongs to {owner}, and "
                    f"{this} may not write it; remove it {remove} and start again" if mode == 0o644 else
                    f"{lock} belongs to {owner}, and {this} may neither read nor write it; if no run of that user is "
                    f"using {shared_dir}, remove it {remove} and start again")
    os.chmod(lock, 0o644)
    assert open(lock).read().startswith('{"pid": 4242,')  # untouched


def test_a_held_lock_of_another_user_names_the_run_holding_it(shared_dir):
    held = workdir_lib.RunLock.acquire(shared_dir)
    try:
        said = acquire_as_another_user(shared_dir)
        info = json.load(open(held.path))
        assert said == (f"{shared_dir} is in use by pid {os.getpid()} on host {info['host']} since {info['started']} "
                        f"(lock {held.path}); wait for that run to end or stop it")
    finally:
        os.chmod(held.path, 0o644)
        held.release()


# --- mimjax import of mimjax's own export -----------------------------------------------------
@pytest.mark.parametrize("fmt, name", [("timm", "vit"), ("timm", "vit.safetensors"), ("mae", "mae")])
def test_an_export_of_a_non_standard_model_imports_back_as_a_teacher(trained_run, tmp_path, capsys, fmt, name):
    """The trained run is ViT "base" by name but width 64, depth 2, patch 8 at 32 px: the
    export's record (DIR/config.json, F.json) is its architecture, no --name needed."""
    from mimjax.train import teacher as teacher_lib
    from mimjax.models import model_from_config
    from scaffold import make_tiny_config

    exported, back = tmp_path / name, tmp_path / "back"
    assert mimjax(capsys, "export", "--workdir", trained_run, "--format", fmt, "--out", exported)[0] == 0
    record = exported / "config.json" if "." not in name else f"{exported}.json"
    status, printed, lines = mimjax(capsys, "import", "--in", exported, "--out", back)
    assert (status, lines) == (0, [])
    assert printed.startswith(f"wrote {back} ({'encoder + decoder' if fmt == 'mae' else 'encoder'} of vit_base_patch16 "
                              f"(patch_size 8, width 64, depth 2, num_heads 4, img_size 32, from {record}));")
    step, want = workdir_lib.load_latest_params(trained_run)
    got = workdir_lib.load_params(str(back))
    assert set(got) == ({"encoder", "decoder_embed", "decoder_blocks", "decoder_norm", "decoder_pred", "mask_token"}
                        if fmt == "mae" else {"encoder"})
    jax.tree.map(np.testing.assert_array_equal, got, {k: want[k] for k in got})  # bit for bit
    cfg = make_tiny_config(gpa=True, teacher=dict(source="checkpoint", path=str(back)))  # as a frozen teacher
    model = teacher_lib.teacher_model(cfg, model_from_config(cfg.model).encoder)
    jax.tree.map(np.testing.assert_array_equal, teacher_lib.load_checkpoint_params(str(back), model), want["encoder"])


def test_import_flags_that_disagree_with_the_export_record_are_refused(trained_run, tmp_path, capsys):
    exported = tmp_path / "vit"
    assert mimjax(capsys, "export", "--workdir", trained_run, "--format", "timm", "--out", exported)[0] == 0
    before = listing(tmp_path)
    status, printed, lines = mimjax(capsys, "import", "--in", exported, "--out", tmp_path / "back", "--img_size", "64")
    assert (status, printed, lines) == (2, "", [
        f"mimjax import: --img_size=64 disagrees with {exported}/config.json, the export record of these weights "
        f"(img_size 32); leave --img_size out: the record gives the architecture"])
    assert listing(tmp_path) == before


@pytest.mark.parametrize("planted", ["file", "link"])
def test_import_never_replaces_a_config_json_it_did_not_write(trained_run, tmp_path, capsys, planted):
    exported, out = tmp_path / "vit.safetensors", tmp_path / "mine"
    assert mimjax(capsys, "export", "--workdir", trained_run, "--format", "timm", "--out", exported)[0] == 0
    out.mkdir()
    if planted == "file":
        (out / "config.json").write_text('{"the user": "own notes"}\n')
    else:
        (tmp_path / "target.json").write_text("the user's file\n")
        os.symlink(tmp_path / "target.json", out / "config.json")
    before = listing(tmp_path)
    status, printed, lines = mimjax(capsys, "import", "--in", exported, "--out", out)
    assert (status, printed, lines) == (2, "", [
        f"mimjax import: --out {str(out)!r}: {out}/config.json exists; import writes a new directory (config.json and "
        f"checkpoints/) and replaces no file: choose a new or empty directory"])
    assert listing(tmp_path) == before


def test_pth_export_without_pytorch_is_one_line_before_any_work(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    out = str(tmp_path / "mae.pth")
    status, printed, lines = mimjax(capsys, "export", "--workdir", trained_run, "--format", "mae", "--out", out)
    assert (status, printed, lines) == (2, "", [
        f"mimjax export: --out {out!r}: .pth files need PyTorch, which is not installed (pip install torch, or the "
        f"[torch] extra); .safetensors files do not"])
    assert os.listdir(tmp_path) == []
