"""`--config NAME[:ARG]` finds the recipes shipped in the package (mimjax/configs)."""
import os

import pytest

from mimjax import cli, configs

PACKAGED = os.path.join(os.path.dirname(os.path.abspath(configs.__file__)))


def test_the_recipes_are_in_the_package():
    assert configs.names() == ["demo", "finetune", "gpa_mae", "linprobe", "mae", "simmim", "study"]


@pytest.mark.parametrize("spec,want", [
    ("demo", "demo.py"), ("demo.py", "demo.py"), ("gpa_mae:vit_base_patch16", "gpa_mae.py:vit_base_patch16"),
    ("configs/finetune.py:runlocal", "finetune.py:runlocal")])
def test_names_resolve_to_the_packaged_files_outside_a_clone(spec, want, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert configs.resolve(spec) == os.path.join(PACKAGED, want)


def test_a_file_that_exists_is_taken_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo.py").write_text("def get_config(arg=None):\n    return None\n")
    assert configs.resolve("demo.py:x") == "demo.py:x"
    (tmp_path / "demo").write_text("raise SystemExit('a file of the current directory ran')\n")
    assert configs.resolve("demo:mae") == os.path.join(PACKAGED, "demo.py:mae")  # a bare name: only the packaged recipe
    assert configs.resolve("./demo:mae") == "./demo:mae"
    assert configs.resolve("elsewhere/demo.py") == "elsewhere/demo.py"  # a path to another folder: not ours
    assert configs.resolve("nope") == "nope"


def test_the_cli_names_the_packaged_recipes_when_a_config_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cli.UsageError, match=r"config file 'dmeo' not found \(--config dmeo\); the packaged "
                                             r"recipes are demo, finetune, gpa_mae, linprobe, mae, simmim, study"):
        cli.parse(cli.COMMANDS["train"], ["--config", "dmeo", "--workdir", "w"])
    fv = cli.parse(cli.COMMANDS["train"], ["--config=demo:mae", "--workdir", "w"])
    assert fv.config.masking.strategy == "random"


def test_a_command_line_names_its_recipe_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    demo = os.path.join(PACKAGED, "demo.py")
    argv = ["mimjax train", "--config", "demo:mae", "--workdir", "configs/demo.py", "--config.batch_size=8",
            "--noconfig.model.gpa_head", "--config.optimizer.lr", "1e-4"]
    assert configs.resolve_argv(argv) == [*argv[:2], f"{demo}:mae", *argv[3:7], "--config.optimizer.lr=1e-4"]
    assert configs.resolve_argv(["x", "--config.teacher.head", "-1", "--config.model.remat", "auto", "--noconfig.y",
                                 "--config.z", "--workdir", "w"]) == [
        "x", "--config.teacher.head=-1", "--config.model.remat=auto", "--noconfig.y", "--config.z", "--workdir", "w"]
    assert configs.resolve_argv(["mimjax plan", "-config=gpa_mae:vit_base_patch16,feature"]) == [
        "mimjax plan", f"-config={os.path.join(PACKAGED, 'gpa_mae.py')}:vit_base_patch16,feature"]
    assert configs.config_arg(argv) == "demo:mae" and configs.config_arg(["x", "--config=a.py:b"]) == "a.py:b"
    assert configs.config_arg(["x", "--config"]) is None and configs.config_arg(["x", "--workdir", "w"]) is None
    assert configs.overrides(argv) == ["batch_size", "model.gpa_head", "optimizer.lr"]


def test_a_missing_config_file_is_one_line_naming_the_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text("def get_config(arg=None):\n    return None\n")
    (tmp_path / "folder").mkdir()
    assert configs.missing("mine.py:arg") is None and configs.missing(None) is None
    recipes = "the packaged recipes are demo, finetune, gpa_mae, linprobe, mae, simmim, study"
    assert configs.missing("nope.py:x") == f"config file 'nope.py' not found (--config nope.py:x); {recipes}"
    assert configs.missing("folder") == f"config file 'folder' is not a file (--config folder); {recipes}"
