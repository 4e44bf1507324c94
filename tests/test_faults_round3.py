"""Issue 36 (nothing outside the run is touched, no wrong result exits 0), round 3: `export`
onto a file it did not write or through a symbolic link (BAD 3); `eval knn` with a k,
temperature or batch size outside its domain, and what knn.json records (BAD 4); a teacher
with non-finite weights, at `import` and when a run loads it (BAD 7). Through
`mimjax.cli.main` in this process on the session's trained tiny run, and once end to end."""
import json
import os

import jax
import numpy as np
import pytest

from mimjax import export
from scaffold import listing, run_cli_here as mimjax  # tests/scaffold.py: `mimjax ARGS` in this process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPA = os.path.join(REPO, "configs/gpa_mae.py") + ":vit_tiny_patch16,runlocal"


# --- BAD 3: export ----------------------------------------------------------------------
@pytest.mark.parametrize("fmt, name, taken", [("timm", "dl.safetensors", "dl.safetensors"),
                                              ("mae", "mine.pth", "mine.pth"),
                                              ("timm", "vit", "vit/model.safetensors")])
def test_export_never_replaces_a_file_it_did_not_write(trained_run, tmp_path, capsys, fmt, name, taken):
    os.makedirs(os.path.dirname(tmp_path / taken), exist_ok=True)
    (tmp_path / taken).write_bytes(b"the user's own weights")
    before = listing(tmp_path)
    out, record = tmp_path / name, (tmp_path / "vit/config.json" if name == "vit" else f"{tmp_path / name}.json")
    status, printed, lines = mimjax(capsys, "export", "--workdir", trained_run, "--format", fmt, "--out", out)
    assert (status, printed, lines) == (2, "", [
        f"mimjax export: --out {str(out)!r}: {tmp_path / taken} exists and was not written by `mimjax export` (no "
        f"export record {record} beside it); it is not overwritten: choose another path"])
    assert listing(tmp_path) == before


def test_export_replaces_its_own_file_and_writes_through_no_link(trained_run, tmp_path, capsys):
    mine = tmp_path / "vit.safetensors"
    for _ in range(2):  # its record, vit.safetensors.json, says it is an export: replaced
        status, printed, lines = mimjax(capsys, "export", "--workdir", trained_run, "--format", "timm", "--out", mine)
        assert status == 0 and not lines and "checkpoint step 2" in printed
    user = tmp_path / "user.bin"
    user.write_bytes(b"the user's own file")
    os.symlink(user, tmp_path / "link.safetensors")  # a link to a user file
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.safetensors")  # a link to no file yet
    os.symlink(user, tmp_path / "side.safetensors.json")  # the record a file export would write
    (tmp_path / "folder").mkdir()
    os.symlink(user, tmp_path / "folder" / "model.safetensors")
    before = listing(tmp_path)
    for out, link, to in [("link.safetensors", "link.safetensors", user),
                          ("dangling.safetensors", "dangling.safetensors", tmp_path / "nowhere"),
                          ("side.safetensors", "side.safetensors.json", user),
                          ("folder", "folder/model.safetensors", user)]:
        status, printed, lines = mimjax(capsys, "export", "--workdir", trained_run, "--format", "timm", "--out",
                                        tmp_path / out)
        assert (status, printed, lines) == (2, "", [
            f"mimjax export: --out {str(tmp_path / out)!r}: {tmp_path / link} is a symbolic link (to {str(to)!r}); "
            f"export never writes through a link: choose another path"])
    assert listing(tmp_path) == before and not (tmp_path / "nowhere").exists()


# --- BAD 4: eval knn ----------------------------------------------------------------------
@pytest.mark.parametrize("flag, value, why", [
    ("--temperature", "0", "expected a finite number > 0 (each vote weighs exp(cosine / temperature))"),
    ("--temperature", "nan", "expected a finite number > 0 (each vote weighs exp(cosine / temperature))"),
    ("--temperature", "-1", "expected a finite number > 0 (each vote weighs exp(cosine / temperature))"),
    ("--temperature", "1e-30", "expected > 0.0112711; below it a vote's weight exp(cosine / temperature) "
                               "overflows float32 to inf and the votes no longer rank"),
    ("--k", "0", "expected at least 1 neighbour"),
    ("--k", "-3", "expected at least 1 neighbour"),
    ("--batch_size", "0", "expected at least 1 image per forward pass"),
])
def test_eval_knn_refuses_numbers_outside_their_domain_before_any_work(trained_run, capsys, flag, value, why):
    good = os.path.join(trained_run, "knn.json")
    with open(good, "w") as f:
        f.write('{"top1": 98.0, "k": 20, "temperature": 0.07, "step": 2}')
    try:
        status, printed, lines = mimjax(capsys, "eval", "knn", "--workdir", trained_run, flag, value)
        shown = {"0": "0.0", "-1": "-1.0"}.get(value, value) if flag == "--temperature" else value
        assert (status, printed, lines) == (2, "", [f"mimjax eval knn: {flag}={shown}: {why}"])
        assert open(good).read() == '{"top1": 98.0, "k": 20, "temperature": 0.07, "step": 2}'
    finally:
        os.remove(good)


def test_the_smallest_temperature_is_where_float32_exp_overflows():
    from mimjax.eval import knn
    from mimjax.errors import UsageError

    with np.errstate(over="ignore"):
        assert np.isfinite(np.exp(np.float32(1 / 0.0113))) and not np.isfinite(np.exp(np.float32(1 / 0.0112)))
    knn.check_args(1, 0.0113, 1)
    with pytest.raises(UsageError, match="expected > 0.0112711"):
        knn.check_args(1, 0.0112, 1)


def test_knn_json_records_k_temperature_and_the_step_it_evaluated(trained_run, capsys):
    try:
        status, printed, lines = mimjax(capsys, "eval", "knn", "--workdir", trained_run, "--k", "5",
                                        "--temperature", "0.1")
        assert status == 0 and not lines, lines
        result = json.loads(printed.strip().splitlines()[-1])
        assert (result["k"], result["temperature"], result["step"]) == (5, 0.1, 2)
        assert json.load(open(os.path.join(trained_run, "knn.json"))) == result
    finally:
        os.remove(os.path.join(trained_run, "knn.json"))


# --- BAD 7: a teacher with non-finite weights ---------------------------------------------
def timm_state_dict(bad: dict) -> dict:
    """A finite timm state dict of ViT-Ti/16 at 32 px, then `bad` {key: value} written over
    a tensor's first `count` values: {key: (count, value)}."""
    from mimjax.models import vit

    model = vit("vit_tiny_patch16", img_size=32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32)))
    params = jax.tree.map(lambda s: np.full(s.shape, 0.01, np.float32), abstract["params"])
    sd = export.to_timm_state_dict(params, "vit_tiny_patch16", img_size=32)
    for key, (count, value) in bad.items():
        sd[key].reshape(-1)[:count] = value
    return sd


def test_import_refuses_non_finite_weights_writing_nothing(tmp_path, capsys):
    from safetensors.numpy import save_file

    f = str(tmp_path / "nan.safetensors")
    save_file(timm_state_dict({"blocks.3.attn.qkv.weight": (576 * 192, np.nan), "norm.weight": (1, np.inf)}), f)
    status, printed, lines = mimjax(capsys, "import", "--in", f, "--out", tmp_path / "teacher", "--name",
                                    "vit_tiny_patch16", "--img_size", "32")
    assert (status, printed, lines) == (2, "", [
        f"mimjax import: --in {f!r} holds non-finite weights: blocks.3.attn.qkv.weight has 110592 of its 110592 "
        f"values NaN or inf (2 tensors hold 110593 non-finite values in all); expected finite weights (the scores "
        f"of NaN or inf weights say nothing)"])
    assert sorted(os.listdir(tmp_path)) == ["nan.safetensors"]


def test_a_checkpoint_teacher_with_non_finite_weights_stops_the_run_before_any_step(tmp_path, capsys):
    from mimjax import interop
    from mimjax.models import init_model, model_from_config
    from mimjax.schema import load_config_file

    c = load_config_file(*GPA.rsplit(":", 1))
    abstract = jax.eval_shape(lambda: init_model(model_from_config(c.model), jax.random.key(0)))
    params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), abstract)
    params["encoder"]["norm"]["scale"][:] = np.nan
    teacher = str(tmp_path / "teacher")
    interop.write_params_dir(teacher, c, params, {})
    status, printed, lines = mimjax(capsys, "train", "--config", GPA, "--workdir", tmp_path / "w",
                                    "--config.teacher.source=checkpoint", f"--config.teacher.path={teacher}")
    assert (status, lines) == (2, [
        f"mimjax train: config error: teacher checkpoint {teacher!r} holds non-finite weights: norm.scale has 64 "
        f"of its 64 values NaN or inf; expected finite weights (the scores of NaN or inf weights say nothing)"])
    assert not (tmp_path / "w").exists()


# --- End to end -----------------------------------------------------------------------
@pytest.mark.slow
def test_each_refusal_is_one_line_and_exit_2_from_the_command(trained_run, tmp_path, run_cli):
    from safetensors.numpy import save_file

    (tmp_path / "dl.safetensors").write_bytes(b"downloaded")
    save_file(timm_state_dict({"cls_token": (192, np.nan)}), str(tmp_path / "nan.safetensors"))
    before, knn_json = listing(tmp_path), os.path.join(trained_run, "knn.json")
    knn_before = open(knn_json).read() if os.path.exists(knn_json) else None
    for args, start in [
        (["export", "--workdir", trained_run, "--format", "timm", "--out", tmp_path / "dl.safetensors"],
         f"mimjax export: --out {str(tmp_path / 'dl.safetensors')!r}: {tmp_path / 'dl.safetensors'} exists and "
         f"was not written by `mimjax export`"),
        (["eval", "knn", "--workdir", trained_run, "--temperature", "1e-30"],
         "mimjax eval knn: --temperature=1e-30: expected > 0.0112711"),
        (["import", "--in", tmp_path / "nan.safetensors", "--out", tmp_path / "teacher", "--name",
          "vit_tiny_patch16", "--img_size", "32"],
         f"mimjax import: --in {str(tmp_path / 'nan.safetensors')!r} holds non-finite weights: cls_token has 192 "
         f"of its 192 values NaN or inf;")]:
        p = run_cli(*args)
        assert (p.returncode, p.stdout) == (2, ""), p.stderr[-2000:]
        assert p.stderr.strip().startswith(start) and len(p.stderr.strip().splitlines()) == 1, p.stderr[-2000:]
    assert listing(tmp_path) == before
    assert (open(knn_json).read() if os.path.exists(knn_json) else None) == knn_before
