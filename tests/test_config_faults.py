"""Config rows of the third round of faults (issue 36): `--config.KEY=auto` wherever the schema
allows "auto", on every recipe; `config show` refuses what `train` refuses, in the same line;
`--config NAME` never runs a file of the current directory."""
import json

import pytest

from scaffold import run_cli_here

# Recipes whose remat / accum_steps are a bool and an int (demo: the schema's defaults;
# runlocal: set by the recipe) and one whose are "auto" (the ImageNet recipes).
CONCRETE = ["demo", "gpa_mae:vit_base_patch16,runlocal", "mae:vit_tiny_patch16,runlocal"]
AUTO = ["gpa_mae:vit_base_patch16", "simmim:vit_base_patch16"]


def shown_json(capsys, *args) -> dict:
    status, out, err = run_cli_here(capsys, "config", "show", "--json", *args)
    assert status == 0, err
    return {key: row["value"] for key, row in json.loads(out).items()}


@pytest.mark.parametrize("spec", CONCRETE + AUTO)
def test_auto_and_concrete_settings_parse_on_every_recipe(spec, capsys):
    auto = shown_json(capsys, "--config", spec, "--config.model.remat=auto", "--config.optimizer.accum_steps=auto")
    assert (auto["model.remat"], auto["optimizer.accum_steps"]) == ("auto", "auto")
    concrete = shown_json(capsys, "--config", spec, "--config.model.remat=True", "--config.optimizer.accum_steps=2")
    assert (concrete["model.remat"], concrete["optimizer.accum_steps"]) == (True, 2)  # a bool and an int, not strings


def test_train_parses_auto_on_a_concrete_recipe():
    from mimjax import cli

    fv = cli.parse(cli.COMMANDS["train"], ["--config", "demo", "--workdir", "w", "--config.model.remat=auto",
                                           "--config.optimizer.accum_steps", "auto"])
    assert (fv.config.model.remat, fv.config.optimizer.accum_steps) == ("auto", "auto")


@pytest.mark.parametrize("args, want", [
    (["--config.model.remat=sometimes"],
     "config error: config.model.remat='sometimes': expected True, False or 'auto'"),
    (["--config.optimizer.accum_steps=0"], "config error: config.optimizer.accum_steps=0: expected an integer >= 1 or "
                                           "'auto'"),
    (["--config.optimizer.accum_steps=2.5"], "config error: config.optimizer.accum_steps=2.5: expected an integer >= 1 "
                                             "or 'auto'"),
])
def test_a_setting_that_is_neither_is_one_line(args, want, capsys):
    status, out, err = run_cli_here(capsys, "config", "show", "--config", "demo", *args)
    assert (status, out, err) == (2, "", [f"mimjax config show: {want}"])


@pytest.mark.parametrize("seed, want", [
    ("-1", "config error: config.seed=-1: expected an integer in [0, 4294967294]"),
    (str(2**32), "config error: config.seed=4294967296: expected an integer in [0, 4294967294]"),
    (str(10**20), "config error: config.seed=100000000000000000000: expected an integer in [0, 4294967294]"),
    ("1e20", "--config.seed=1e20: expected an integer"),
])
def test_config_show_refuses_the_seeds_train_refuses(seed, want, capsys, tmp_path):
    for command in (["config", "show"], ["train", "--workdir", tmp_path / "w"]):
        status, out, err = run_cli_here(capsys, *command, "--config", "demo", f"--config.seed={seed}")
        assert (status, out, err) == (2, "", [f"mimjax {' '.join(command[:2]) if command[0] == 'config' else 'train'}: "
                                              f"{want}"])
    assert not (tmp_path / "w").exists()  # refused before anything was written
    assert shown_json(capsys, "--config", "demo", "--config.seed=4294967294")["seed"] == 4294967294  # the largest


PLANTED = "open({marker!r}, 'w').write('ran')\ndef get_config(arg=None):\n    raise ValueError('planted')\n"


def test_a_bare_recipe_name_never_runs_a_file_of_the_current_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "ran"
    for name in ("mae", "mine"):
        (tmp_path / name).write_text(PLANTED.format(marker=str(marker)))
    assert shown_json(capsys, "--config", "mae:vit_tiny_patch16")["model.name"] == "mae_vit_tiny_patch16"
    status, out, err = run_cli_here(capsys, "config", "show", "--config", "mine")
    assert (status, out) == (2, "") and err == [
        "mimjax config show: no packaged recipe 'mine' (--config mine); the packaged recipes are demo, finetune, "
        "gpa_mae, linprobe, mae, simmim, study; a config file of your own is named by its path: --config ./mine"]
    assert not marker.exists()
    status, _, err = run_cli_here(capsys, "config", "show", "--config", "./mae")  # named by its path: it runs
    assert status == 2 and err == ["mimjax config show: error in the config file ./mae:3: ValueError: planted"]
    assert marker.read_text() == "ran"
