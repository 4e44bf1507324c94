"""Checkpoint rules: only unreadable steps are quarantined (a model mismatch is a one-line
error that moves nothing), checkpoints read on any device count, and one-line errors for a
run without checkpoints, a teacher.path without a checkpoint teacher and an import of a
file that is no checkpoint."""
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mimjax.schema import ConfigError
from mimjax.train.checkpoint import Checkpointer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A full-size ViT-Ti/16 at 64 px, so the run also serves as a vit_tiny_patch16 teacher.
TINY = ("--config.model.width=192", "--config.model.num_heads=3", "--config.model.depth=12",
        "--config.model.img_size=64", "--config.model.patch_size=16")


def error_line(p) -> str:
    """The command's error: exit 2 and exactly one line on stderr starting 'mimjax' (besides
    the run's own INFO log lines, e.g. train's '10:49:19 model ...'), no traceback."""
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not re.match(r"\d\d:\d\d:\d\d (?!WARNING|ERROR)", ln)]
    assert p.returncode == 2, p.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("mimjax"), p.stderr[-3000:]
    return lines[0]


def listing(directory) -> dict:
    return {root: sorted(files) for root, _, files in os.walk(directory)}


# --- Checkpointer: mismatch vs corruption -------------------------------------------------

def small_state(n: int = 5):
    return {"params": {"a": jnp.ones((4, 4)), "b": [jnp.arange(n, dtype=jnp.float32), jnp.int32(2)]}}


def abstract(n: int = 5):
    return jax.eval_shape(lambda: small_state(n))


def saved(tmp_path, steps=(1, 2)):
    d = str(tmp_path / "checkpoints")
    ck = Checkpointer(d, async_save=False)
    for s in steps:
        ck.save(s, small_state(), {"position": s})
    ck.wait()
    ck.close()
    return d


def corrupt(step_dir):
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for f in files:  # flip the first bytes of every file of the step
            with open(os.path.join(root, f), "r+b") as fh:
                head = fh.read(64)
                fh.seek(0)
                fh.write(bytes(b ^ 0xFF for b in head))


def test_restore_with_other_shapes_raises_and_moves_nothing(tmp_path):
    d = saved(tmp_path)
    before = listing(d)
    ck = Checkpointer(d, async_save=False)
    with pytest.raises(ConfigError) as e:
        ck.restore_latest(abstract(6))
    ck.close()
    msg = str(e.value)
    assert "\n" not in msg and "step 2" in msg and "params/b/0" in msg and "(6,)" in msg, msg
    assert listing(d) == before  # nothing quarantined


def test_restore_with_other_names_raises_and_moves_nothing(tmp_path):
    d = saved(tmp_path)
    before = listing(d)
    ck = Checkpointer(d, async_save=False)
    other = {"params": {"a": jax.ShapeDtypeStruct((4, 4), jnp.float32), "c": jax.ShapeDtypeStruct((3,), jnp.float32)}}
    with pytest.raises(ConfigError, match=r"params/c.*params/b/0|params/b/0.*params/c"):
        ck.restore_latest(other)
    ck.close()
    assert listing(d) == before


def test_corrupt_step_is_quarantined_and_the_previous_one_used(tmp_path):
    d = saved(tmp_path, (1, 2))
    corrupt(os.path.join(d, "2"))
    ck = Checkpointer(d, async_save=False)
    step, state, data_state = ck.restore_latest(abstract())
    ck.close()
    assert step == 1 and data_state == {"position": 1}
    np.testing.assert_array_equal(state["params"]["b"][0], np.arange(5))
    assert sorted(os.listdir(d)) == ["1", "2.unreadable"]


def test_quarantining_the_same_step_twice(tmp_path):
    d = saved(tmp_path, (1, 2))
    corrupt(os.path.join(d, "2"))
    ck = Checkpointer(d, async_save=False)
    assert ck.restore_latest(abstract())[0] == 1
    ck.save(2, small_state(), {"position": 2})  # the step is saved again, then corrupted again
    ck.wait()
    corrupt(os.path.join(d, "2"))
    ck.manager.reload()
    assert ck.restore_latest(abstract())[0] == 1
    ck.close()
    assert sorted(os.listdir(d)) == ["1", "2.unreadable", "2.unreadable.1"]


# --- one-line errors through the command ----------------------------------------------------

def test_export_knn_visualize_without_a_checkpoint_is_one_line(tmp_path, run_cli):
    w = tmp_path / "run"
    os.makedirs(w / "checkpoints")
    import importlib.util

    from mimjax import workdir as workdir_lib

    spec = importlib.util.spec_from_file_location("mae_config", os.path.join(REPO, "configs", "mae.py"))
    mae = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mae)
    workdir_lib.write_config(str(w), mae.get_config("vit_tiny_patch16,runlocal"))  # embedded data
    os.makedirs(w / "checkpoints" / "3.orbax-checkpoint-tmp-1")  # an unfinished save
    for args in (("export", "--workdir", w, "--format", "timm", "--out", tmp_path / "F.safetensors"),
                 ("eval", "knn", "--workdir", w), ("visualize", "--workdir", w, "--out", tmp_path / "vis")):
        line = error_line(run_cli(*args))
        assert str(w) in line and "no complete checkpoint" in line, line
    assert not os.path.exists(tmp_path / "F.safetensors")


def test_teacher_path_needs_a_checkpoint_teacher(tmp_path, run_cli):
    p = run_cli("train", "--config", "configs/gpa_mae.py:vit_tiny_patch16,runlocal", "--workdir", tmp_path / "gpa",
                "--config.teacher.source=ema", f"--config.teacher.path={tmp_path}")
    line = error_line(p)
    assert "teacher.path" in line and "teacher.source" in line, line
    assert not os.path.exists(tmp_path / "gpa" / "checkpoints")


@pytest.mark.parametrize("name", ["notes.txt", "notes.pth", "notes.safetensors"])
def test_import_of_a_file_that_is_not_a_checkpoint(tmp_path, name, run_cli):
    f = tmp_path / name
    f.write_text("these are notes, not weights\n" * 20)
    line = error_line(run_cli("import", "--in", f, "--out", tmp_path / "teacher"))
    assert str(f) in line and "weights_only" not in line, line
    assert not os.path.exists(tmp_path / "teacher" / "checkpoints")


# --- a run saved on 4 devices, read on 1 --------------------------------------------------

@pytest.fixture(scope="module")
def run4(tmp_path_factory, run_cli):
    w = tmp_path_factory.mktemp("fsdp4") / "run"
    p = run_cli("train", "--config", "configs/mae.py:vit_tiny_patch16,runlocal", "--workdir", w,
                "--config.total_steps=2", "--config.parallelism.fsdp=2", *TINY, devices=4)
    assert p.returncode == 0, p.stderr[-3000:]
    assert os.path.isdir(w / "checkpoints" / "2")
    return w


@pytest.mark.slow
def test_a_4_device_run_reads_on_1_device(run4, tmp_path, run_cli):
    p = run_cli("export", "--workdir", run4, "--format", "timm", "--out", tmp_path / "F.safetensors")
    assert p.returncode == 0 and os.path.isfile(tmp_path / "F.safetensors"), p.stderr[-3000:]
    p = run_cli("eval", "knn", "--workdir", run4)
    assert p.returncode == 0 and '"top1"' in p.stdout, p.stderr[-3000:]
    p = run_cli("visualize", "--workdir", run4, "--out", tmp_path / "vis")
    assert p.returncode == 0 and os.path.isfile(tmp_path / "vis" / "reconstruction.png"), p.stderr[-3000:]
    p = run_cli("train", "--config", "configs/gpa_mae.py:vit_tiny_patch16,runlocal", "--workdir", tmp_path / "gpa",
                "--config.teacher.source=checkpoint", f"--config.teacher.path={run4}",
                "--config.teacher.name=vit_tiny_patch16", "--config.teacher.head=2",
                "--config.model.img_size=64", "--config.model.patch_size=16", "--config.total_steps=2")
    assert p.returncode == 0 and os.path.isdir(tmp_path / "gpa" / "checkpoints" / "2"), p.stderr[-3000:]


@pytest.mark.slow
def test_resume_with_another_model_keeps_every_checkpoint(run4, tmp_path, run_cli):
    w = tmp_path / "run"
    shutil.copytree(run4, w)
    before = listing(w / "checkpoints")
    p = run_cli("train", "--config", "configs/mae.py:vit_tiny_patch16,runlocal", "--workdir", w,
                "--config.total_steps=4", "--config.model.name=mae_vit_small_patch16")
    error_line(p)
    assert listing(w / "checkpoints") == before
