"""`mimjax <command>`: one flag mechanism for every command, --help, --version, and every
command-line error as one line on stderr with exit status 2 (no traceback)."""
import os
import subprocess
import sys

import pytest

from mimjax import cli
from mimjax.errors import UsageError
from mimjax.schema import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_COMMANDS = ("train", "plan", "config show", "finetune", "eval linprobe", "study")
WORKDIR_COMMANDS = ("train", "finetune", "eval linprobe", "eval knn", "export", "visualize")


def one_line_error(p, prefix):
    """The one stderr line of a `mimjax` process that exited 2 (no traceback, no stdout)."""
    status, stdout, stderr = p.returncode, p.stdout, p.stderr
    assert status == 2, stderr
    assert "Traceback" not in stderr and not stdout, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(prefix + ": "), lines[0]
    return lines[0]


def test_every_command_is_listed_and_has_a_help(capsys):
    assert set(cli.COMMANDS) == {"train", "plan", "config show", "finetune", "eval knn", "eval linprobe", "export",
                                 "import", "visualize", "prepare imagenet", "study"}


@pytest.mark.parametrize("name", list(cli.COMMANDS))
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_command_help_shows_flags_and_an_example(name, flag, capsys):
    assert cli.main(["mimjax", *name.split(), flag]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mimjax {name} ")
    assert f"  mimjax {name} --" in out  # an example
    assert cli.COMMANDS[name].summary in out
    for req in cli.COMMANDS[name].required:
        assert f"--{req} " in out and "(required)" in out
    assert ("--config FILE[:ARG]" in out and "--config.KEY=VALUE" in out) == (name in CONFIG_COMMANDS)
    assert ("--workdir DIR" in out) == (name in WORKDIR_COMMANDS)


def test_help_flag_anywhere_wins_over_missing_flags(capsys):
    assert cli.main(["mimjax", "train", "--config", "nosuch.py", "--help"]) == 0
    assert "--distributed auto|on|off" in capsys.readouterr().out


def test_top_level_help_version_and_usage(capsys):
    assert cli.main(["mimjax", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in cli.COMMANDS)
    assert cli.main(["mimjax"]) == 2
    assert "usage: mimjax <command>" in capsys.readouterr().err
    assert cli.main(["mimjax", "--version"]) == 0
    assert capsys.readouterr().out.strip() == "mimjax 0.1.0"
    assert cli.main(["mimjax", "eval"]) == 2
    assert "mimjax eval knn|linprobe" in capsys.readouterr().err
    assert cli.main(["mimjax", "eval", "--help"]) == 0
    assert "eval linprobe" in capsys.readouterr().out
    assert cli.main(["mimjax", "help", "export"]) == 0
    assert "--format timm|mae" in capsys.readouterr().out
    assert cli.main(["mimjax", "trian"]) == 2
    assert capsys.readouterr().err.strip() == ("mimjax: unknown command 'trian' (did you mean 'train'?); "
                                               "mimjax --help lists the commands")


def test_version_and_help_in_a_fresh_process_import_no_jax(run_cli):
    code = ("import sys; from mimjax import cli; assert cli.main(['mimjax', 'train', '--help']) == 0; "
            "assert cli.main(['mimjax', 'eval', 'knn', '--workdir']) == 2; "
            "heavy = [m for m in ('jax', 'flax', 'orbax') if m in sys.modules]; assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    p = run_cli("--version", timeout=300)
    assert p.returncode == 0 and p.stdout == "mimjax 0.1.0\n"


@pytest.mark.parametrize("args", [["train", "--help"], ["--help"], ["eval", "--help"], ["--version"]])
def test_help_into_a_closed_pipe_is_quiet(args):
    """`mimjax train --help | head -1`: the reader is gone before the help is written."""
    read, write = os.pipe()
    os.close(read)
    p = subprocess.run([sys.executable, "-m", "mimjax.cli", *args], stdout=write, stderr=subprocess.PIPE, text=True,
                       cwd=REPO)
    os.close(write)
    assert p.returncode == 0 and p.stderr == "", p.stderr


def test_python_m_mimjax_train_is_the_same_command():
    out = subprocess.run([sys.executable, "-m", "mimjax.train", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.startswith("usage: mimjax train --config"), out.stderr


def test_missing_config_file_names_the_path(run_cli):
    line = one_line_error(run_cli("train", "--config", "nosuch.py", "--workdir", "/tmp/x"), "mimjax train")
    assert line == ("mimjax train: config file 'nosuch.py' not found (--config nosuch.py); the packaged recipes are "
                    "demo, finetune, gpa_mae, linprobe, mae, simmim, study")
    line = one_line_error(run_cli("eval", "linprobe", "--config", "configs/nosuch.py:runlocal", "--workdir", "W"),
                          "mimjax eval linprobe")
    assert "'configs/nosuch.py' not found" in line


def test_unknown_config_key_says_did_you_mean(run_cli):
    line = one_line_error(run_cli("train", "--config", "configs/demo.py", "--config.batchsize=8", "--workdir",
                                  "/tmp/x"), "mimjax train")
    assert line == "mimjax train: unknown config key config.batchsize (did you mean config.batch_size?)"
    line = one_line_error(run_cli("finetune", "--config", "configs/finetune.py:runlocal", "--workdir", "W",
                                  "--out", "O", "--config.optimizer.layer_dcay=0.5"), "mimjax finetune")
    assert line.endswith("unknown config key config.optimizer.layer_dcay (did you mean config.optimizer.layer_decay?)")


def test_bad_value_names_key_and_value(run_cli):
    line = one_line_error(run_cli("train", "--config", "configs/demo.py", "--config.batch_size=abc", "--workdir",
                                  "/tmp/x"), "mimjax train")
    assert line == "mimjax train: --config.batch_size=abc: expected an integer"


def test_missing_required_and_unknown_flags(run_cli):
    line = one_line_error(run_cli("train", "--config", "configs/demo.py"), "mimjax train")
    assert line == "mimjax train: --workdir is required"
    line = one_line_error(run_cli("train", "--config", "configs/demo.py", "--workdri", "W"), "mimjax train")
    assert line == "mimjax train: unknown flag --workdri (did you mean --workdir?)"


@pytest.mark.parametrize("args, want", [
    (["eval", "knn"], "mimjax eval knn: --workdir is required"),
    (["eval", "knn", "--workdir", "W", "--k", "abc"], "mimjax eval knn: --k=abc: expected an integer"),
    (["export", "--workdir", "W", "--out", "F", "--format", "onnx"], "mimjax export: --format=onnx: value should be one of <timm|mae>"),
    (["import", "--out", "D"], "mimjax import: --in is required"),
    (["visualize", "--workdir", "W"], "mimjax visualize: --out is required"),
    (["finetune", "--config", "configs/finetune.py", "--workdir", "W"], "mimjax finetune: --out is required"),
    (["train", "--config", "configs/demo.py", "--workdir", "W", "extra"], "mimjax train: unexpected argument(s): extra"),
    (["visualize", "--workdir", "/nonexistent", "--out", "O"],
     "mimjax visualize: '/nonexistent' has no config.json; is it a mimjax workdir?"),
])
def test_errors_in_process_are_one_line(args, want, capsys):
    for _ in range(2):  # a fresh FlagValues each call: commands can run again in one process
        assert cli.main(["mimjax", *args]) == 2
        captured = capsys.readouterr()
        assert captured.err.strip() == want and not captured.out


def test_several_values_after_one_flag():
    assert cli._expand_multi(["--images", "a.jpg", "b.png", "--seed", "1", "--images=c.jpg"], ("images",)) == \
        ["--images=a.jpg", "--images=b.png", "--seed", "1", "--images=c.jpg"]


def _fake(name, error):
    def run(fv):
        raise error
    return cli.Command(name, "fake", ("mimjax fake",), lambda fv, argv: None, run)


def test_exit_statuses_of_the_commands_errors(capsys):
    assert cli._execute(_fake("finetune", ConfigError("config.x=1: expected 2")), None) == 2
    assert capsys.readouterr().err == "mimjax finetune: config error: config.x=1: expected 2\n"
    assert cli._execute(_fake("export", UsageError("bad --out")), None) == 2
    assert capsys.readouterr().err == "mimjax export: bad --out\n"
    from mimjax.errors import DiskFullError, NonFiniteError

    assert cli._execute(_fake("finetune", DiskFullError("disk full while saving")), None) == 4
    assert capsys.readouterr().err == "mimjax finetune: disk full while saving\n"
    assert cli._execute(_fake("train", NonFiniteError("loss is nan at step 3")), None) == 3
    assert capsys.readouterr().err == "mimjax train: loss is nan at step 3\n"
    with pytest.raises(KeyError):  # anything else is a bug: its traceback is kept
        cli._execute(_fake("train", KeyError("x")), None)


def test_init_distributed_takes_its_flags_explicitly(monkeypatch):
    from mimjax.parallel import distributed

    for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_distributed("off", "h:1", 2, 0) is False
    assert distributed.init_distributed("auto") is False
    with pytest.raises(UsageError, match="--coordinator_address needs --num_processes and --process_id"):
        distributed.init_distributed("auto", "h:1")
    assert distributed.cluster_detected({"SLURM_NTASKS": "4"}) and not distributed.cluster_detected({})


def test_export_package_does_not_import_training_or_evaluation():
    import ast

    folder = os.path.join(REPO, "mimjax", "export")
    for f in os.listdir(folder):
        if f.endswith(".py"):
            tree = ast.parse(open(os.path.join(folder, f)).read())
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n.startswith(("mimjax.train", "mimjax.eval")) for n in names), (f, names)


def test_absl_and_config_file_errors_become_one_line(tmp_path):
    from absl import flags

    from mimjax import schema

    assert schema.flag_error(flags.UnrecognizedFlagError("workdri"), ["workdir", "config", "config.seed"]) == \
        "unknown flag --workdri (did you mean --workdir?)"
    assert schema.flag_error(flags.IllegalFlagValueError(
        "flag --k=abc: invalid literal for int() with base 10: 'abc'"), ["k"]) == "--k=abc: expected an integer"
    bad = tmp_path / "bad.py"
    bad.write_text("import ml_collections\n\n\ndef get_config(arg=None):\n    raise ValueError(f'boom {arg}')\n")
    with pytest.raises(UsageError) as e:
        cli.parse(cli.COMMANDS["train"], ["--config", f"{bad}:x", "--workdir", "w"])
    assert str(e.value) == f"error in the config file {bad}:5: ValueError: boom x"
    good = tmp_path / "good.py"
    good.write_text("from mimjax.train.config import base_config\n\n\ndef get_config():\n    return base_config()\n")
    assert schema.loading_error(AttributeError("nmae"), str(good), ["seed", "model.nmae"]) == \
        "unknown config key config.model.nmae (did you mean config.model.name?)"
    with pytest.raises(UsageError, match=r"^unknown config key config.model.nmae \(did you mean config.model.name\?\)$"):
        cli.parse(cli.COMMANDS["train"], ["--config", str(good), "--workdir", "w", "--config.model.nmae=x"])
