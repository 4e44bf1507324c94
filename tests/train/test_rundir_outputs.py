"""What cannot poison a run directory (issue 25), through `mimjax.cli.main` in this process
(each a few seconds): outputs into a run, learning rates outside their domain, a config.json
that is not JSON, an unreachable or read-only workdir for `eval knn`, a teacher.path that is no
run, export's step and file modes, a folder with a symlink back into itself."""
import json
import os
import stat

import pytest

from mimjax import workdir as workdir_lib
from scaffold import run_cli_here as mimjax  # tests/scaffold.py: `mimjax ARGS` in this process

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPA = os.path.join(REPO, "configs/gpa_mae.py") + ":vit_tiny_patch16,runlocal"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory holding the tiny MAE's initial params as checkpoint step 0."""
    import jax

    from mimjax.models import init_model, model_from_config
    from mimjax.schema import load_config_file
    from mimjax.train import checkpoint

    w = str(tmp_path_factory.mktemp("run") / "w")
    c = load_config_file(os.path.join(REPO, "configs/mae.py"), "vit_tiny_patch16,runlocal")
    workdir_lib.write_config(w, c)
    ck = checkpoint.Checkpointer(workdir_lib.checkpoints_dir(w), async_save=False)
    ck.save(0, {"params": init_model(model_from_config(c.model), jax.random.key(0))}, {})
    ck.wait()
    ck.close()
    return w


def listing(d):
    return {os.path.relpath(os.path.join(r, f), d): os.stat(os.path.join(r, f)).st_mtime_ns
            for r, _, fs in os.walk(d) for f in fs}


def test_outputs_into_a_run_directory_or_its_checkpoints_are_refused(run, tmp_path, capsys):
    before = listing(run)
    status, _, lines = mimjax(capsys, "export", "--workdir", run, "--format", "timm", "--out", run)
    assert (status, lines) == (2, [f"mimjax export: --out {run!r} is the run directory being read ({run}); writing "
                                   f"there would overwrite its files: choose another path"])
    inside = os.path.join(run, "checkpoints", "vit")
    status, _, lines = mimjax(capsys, "export", "--workdir", run, "--format", "mae", "--out", inside + ".pth")
    assert (status, lines) == (2, [f"mimjax export: --out {inside + '.pth'!r} lies inside the run {run}'s "
                                   f"checkpoints/, which holds only its checkpoints: choose a path outside it"])
    other = tmp_path / "other"  # another run: not an output either
    status, _, lines = mimjax(capsys, "visualize", "--workdir", run, "--out", run)
    assert status == 2 and lines[0].startswith(f"mimjax visualize: --out {run!r} is the run directory being read")
    (other / "checkpoints").mkdir(parents=True)
    status, _, lines = mimjax(capsys, "visualize", "--workdir", run, "--out", other)
    assert status == 2 and lines == [f"mimjax visualize: --out {str(other)!r} is a run directory (it holds "
                                     f"checkpoints/, config_history.jsonl or run.lock); writing there would "
                                     f"overwrite the run's files: choose another path"]
    status, _, lines = mimjax(capsys, "prepare", "imagenet", "--folder", tmp_path, "--out", inside)
    assert status == 2 and "lies inside the run" in lines[0], lines
    assert listing(run) == before


def test_export_never_overwrites_a_user_file_and_says_its_step(run, tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "config.json").write_text('{"my": "settings"}')
    status, _, lines = mimjax(capsys, "export", "--workdir", run, "--format", "timm", "--out", user)
    assert status == 2 and lines == [f"mimjax export: --out {str(user)!r}: {user / 'config.json'} exists and was "
                                     f"not written by `mimjax export`; it is not overwritten: choose another path"]
    assert (user / "config.json").read_text() == '{"my": "settings"}'

    out = tmp_path / "vit"
    for _ in range(2):  # an earlier export is replaced
        status, printed, lines = mimjax(capsys, "export", "--workdir", run, "--format", "timm", "--out", out)
        assert status == 0 and not lines
        assert printed.strip().startswith(f"wrote {out}/model.safetensors (") and "checkpoint step 0)" in printed
    assert json.loads((out / "config.json").read_text())["mimjax"]["step"] == 0
    f = tmp_path / "vit.safetensors"
    assert mimjax(capsys, "export", "--workdir", run, "--format", "timm", "--out", f)[0] == 0
    for p in (out / "model.safetensors", f, tmp_path / "vit.safetensors.json"):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644, p
    assert json.loads((tmp_path / "vit.safetensors.json").read_text())["step"] == 0


@pytest.mark.parametrize("overrides, line", [
    (["--config.optimizer.lr=-1", "--config.optimizer.blr=-0.01"],
     "config.optimizer.blr=-0.01: expected a base learning rate >= 0 (lr = blr * batch_size / 256; 0 leaves the "
     "weights unchanged)"),
    (["--config.optimizer.lr=nan"], "config.optimizer.lr=nan: expected a finite number (> 0, or -1.0 for unset: "
                                    "blr * batch_size / 256)"),
    (["--config.optimizer.lr=-0.5"], "config.optimizer.lr=-0.5: expected a learning rate > 0, or -1.0 (unset: "
                                     "blr * batch_size / 256 is used)"),
    (["--config.optimizer.blr=inf"], "config.optimizer.blr=inf: expected a finite number"),
])
def test_learning_rates_outside_their_domain_are_refused(overrides, line, tmp_path, capsys):
    status, _, lines = mimjax(capsys, "train", "--config", GPA, "--workdir", tmp_path / "w", *overrides)
    assert (status, lines) == (2, [f"mimjax train: config error: {line}"])
    assert not (tmp_path / "w").exists()


def test_the_lr_in_use_is_described():
    import ml_collections

    from mimjax.train.schedule import describe_learning_rate

    o = ml_collections.ConfigDict({"lr": -1.0, "blr": 1.5e-4})
    assert describe_learning_rate(o, 512) == ("lr 0.0003 (optimizer.blr 0.00015 x batch 512 / 256; optimizer.lr = "
                                              "-1, unset)")
    o.lr = 1e-3
    assert describe_learning_rate(o, 512) == "lr 0.001 (optimizer.lr)"


def test_a_config_json_that_is_not_json_is_one_line_naming_it(tmp_path, capsys):
    w = tmp_path / "w"
    (w / "checkpoints" / "3").mkdir(parents=True)
    (w / "config.json").write_text("garbage{")
    status, _, lines = mimjax(capsys, "train", "--config", GPA, "--workdir", w)
    why = (f"{w / 'config.json'} is not valid JSON (Expecting value at line 1); restore it (the last line of "
           f"config_history.jsonl holds the config of the run's latest start) or delete it")
    assert (status, lines) == (2, [f"mimjax train: config error: cannot resume {w}: {why}"])
    assert (w / "config.json").read_text() == "garbage{" and sorted(os.listdir(w)) == ["checkpoints", "config.json"]
    status, _, lines = mimjax(capsys, "export", "--workdir", w, "--format", "timm", "--out", tmp_path / "x")
    assert (status, lines) == (2, [f"mimjax export: {why}"])


def test_eval_knn_checks_a_gs_workdir_first(monkeypatch, capsys):
    import time

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")  # nothing listens there
    t0 = time.time()
    status, _, lines = mimjax(capsys, "eval", "knn", "--workdir", "gs://nonexistent-bucket/run")
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("mimjax eval knn: config error: --workdir 'gs://nonexistent-bucket/run': cannot "
                               "connect to the object store at 127.0.0.1:1")
    assert time.time() - t0 < 15


def test_eval_knn_prints_its_result_when_it_cannot_save_it(run, capsys):
    os.mkdir(os.path.join(run, "knn.json"))  # cannot be written (root ignores a read-only mode)
    try:
        status, out, lines = mimjax(capsys, "eval", "knn", "--workdir", run, "--k", "5")
    finally:
        os.rmdir(os.path.join(run, "knn.json"))
    result = json.loads(out.strip().splitlines()[-1])
    assert result["num_test"] == 50 and 0 <= result["top1"] <= 100
    assert (status, lines) == (2, [f"mimjax eval knn: the result above was not saved: cannot write "
                                   f"{os.path.join(run, 'knn.json')} (Is a directory)"])


def test_a_teacher_path_without_a_checkpoint_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    status, _, lines = mimjax(capsys, "train", "--config", GPA, "--workdir", tmp_path / "w",
                              "--config.teacher.source=checkpoint", f"--config.teacher.path={tmp_path / 'empty'}",
                              "--config.model.patch_size=8")  # (not the patch size teacher.name would guess)
    assert (status, lines) == (2, [f"mimjax train: config error: config.teacher.path={str(tmp_path / 'empty')!r}: "
                                   f"not a mimjax run directory (no complete checkpoint in its checkpoints/); "
                                   f"expected a pre-training run directory or a `mimjax import` directory"])
    assert not (tmp_path / "w").exists()


def test_a_symlink_back_into_the_image_folder_is_no_class_of_duplicates(tmp_path):
    from mimjax.data.sources import ImageFolder

    root, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    for d in (root / "a", root / "b", elsewhere):
        d.mkdir(parents=True)
    for d in ("a", "b"):
        (root / d / "1.jpg").write_bytes(b"x")
    (elsewhere / "2.jpg").write_bytes(b"x")
    os.symlink(root / "a", root / "c")  # back inside: skipped
    os.symlink(root, root / "d")
    os.symlink(elsewhere, root / "e")  # outside: a class as before
    folder = ImageFolder(str(root))
    assert folder.classes == ["a", "b", "e"] and len(folder) == 3
