"""`mimjax config show`: every key of every pre-training, fine-tuning and linear-probe recipe,
resolved as its command resolves it, with its value and a one-line meaning; overrides and
config errors as in train."""
import json
import re

import pytest

from mimjax import cli, configs, schema
from mimjax.eval import config as classifier_config
from mimjax.train import config as config_lib

LINE = re.compile(r"^(\S+) = (.*?)\s+# (.+)$")
RECIPES = ["demo", "mae:vit_base_patch16", "gpa_mae:vit_base_patch16", "gpa_mae:vit_base_patch16,feature",
           "gpa_mae:vit_base_patch16,feature_early", "gpa_mae:vit_base_patch16,ema", "simmim:vit_base_patch16,feature",
           "gpa_mae:vit_base_patch16,runlocal", "finetune:vit_base_patch16,gpa", "finetune:runlocal", "linprobe",
           "linprobe:runlocal"]
# The teacher block / head the recipes leave unset, as the authors chose them: block 9 and head 11
# of a ViT-B teacher; runlocal's teacher is its tiny student (2 blocks, 4 heads): the last of each.
FOLLOWED = {"gpa_mae:vit_base_patch16,runlocal": (1, 3)}


def recipe(spec: str):
    """The recipe's config, loaded by ml_collections' own loader (not through the command)."""
    file, _, arg = configs.resolve(spec).partition(":")
    return schema.load_config_file(file, arg or None)


def shown(capsys, *args) -> dict:
    assert cli.main(["mimjax", "config", "show", *args]) == 0
    out = capsys.readouterr().out.splitlines()
    table = {}
    for line in out:
        m = LINE.match(line)
        assert m, line
        table[m.group(1)] = (m.group(2), m.group(3))
    assert len(table) == len(out)  # one line per key
    return table


@pytest.mark.parametrize("lib", [config_lib, classifier_config])
def test_every_schema_key_has_a_one_line_meaning(lib):
    keys = schema.dotted_keys(lib.base_config())
    assert sorted(lib.MEANINGS) == sorted(keys)  # a new key without a meaning fails here
    assert all(m.strip() and "\n" not in m for m in lib.MEANINGS.values())


def test_the_shipped_recipes_are_all_covered():
    assert {s.split(":")[0] for s in RECIPES} == set(configs.names()) - {"study"}  # study: a study of several configs


@pytest.mark.parametrize("spec", RECIPES)
def test_every_key_of_each_recipe_appears_with_its_value_and_meaning(spec, capsys):
    cfg = recipe(spec)
    meanings = config_lib.MEANINGS if "masking" in cfg else classifier_config.MEANINGS
    table = shown(capsys, "--config", spec)
    assert sorted(table) == sorted(schema.dotted_keys(cfg))
    for key, (value, meaning) in table.items():
        want = cfg
        for part in key.split("."):
            want = want[part]
        if want is None:  # the teacher block / head the recipe leaves to the teacher
            want = dict(zip(("teacher.block", "teacher.head"), FOLLOWED.get(spec, (9, 11))))[key]
        want = tuple(want) if isinstance(want, (list, tuple)) else want
        assert value == (repr(want) if isinstance(want, str) else str(want)), key
        assert meaning == meanings[key] and meaning.strip()


def test_overrides_show_up_and_json_holds_the_same(capsys):
    table = shown(capsys, "--config", "gpa_mae:vit_base_patch16,feature", "--config.batch_size=256",
                  "--config.masking.mask_ratio=0.6", "--config.teacher.path=teachers/mae_b16")
    assert table["batch_size"][0] == "256" and table["masking.mask_ratio"][0] == "0.6"
    assert table["teacher.path"][0] == "'teachers/mae_b16'" and table["model.gpa_head_late_start"][0] == "True"
    assert cli.main(["mimjax", "config", "show", "--config", "demo", "--config.batch_size=16", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["batch_size"] == {"value": 16, "meaning": config_lib.MEANINGS["batch_size"]}
    assert got["masking.hard"]["value"] == list(recipe("demo").masking.hard)


@pytest.mark.parametrize("args, want", [
    (["--config", "demo", "--config.batchsize=16"],
     "unknown config key config.batchsize (did you mean config.batch_size?)"),
    (["--config", "demo", "--config.masking.mask_ratio=1.5"],
     "config error: config.masking.mask_ratio=1.5: expected a fraction in (0, 1)"),
    (["--config", "nosuch.py"], "config file 'nosuch.py' not found (--config nosuch.py)"),
    (["--config", "linprobe", "--config.pool=max"], "config error: config.pool='max': expected avg or token"),
    (["--config", "demo", "--config.model.remat=maybe"],
     "config error: config.model.remat='maybe': expected True, False or 'auto'"),
    (["--config", "finetune", "--config.model.remat=auto"], "--config.model.remat=auto: expected True or False"),
    ([], "--config is required"),
])
def test_a_bad_config_is_one_line_and_exit_2(args, want, capsys):
    assert cli.main(["mimjax", "config", "show", *args]) == 2  # as mimjax train / plan
    captured = capsys.readouterr()
    assert captured.err.startswith(f"mimjax config show: {want}") and captured.err.count("\n") == 1, captured.err
    assert not captured.out


@pytest.mark.parametrize("command", ["finetune", "eval linprobe"])
def test_the_classifiers_help_points_at_config_show(command, capsys):
    assert cli.main(["mimjax", *command.split(), "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "`mimjax config show --config FILE` lists them with their meanings" in out
    assert "mimjax/eval/config.py" not in out


@pytest.mark.parametrize("spec, given, unset", [
    ("linprobe", "total_steps=7", "total_epochs"),  # a recipe in epochs, run for steps
    ("gpa_mae:vit_base_patch16", "total_steps=7", "total_epochs"),
    ("demo", "total_epochs=2", "total_steps"),  # a recipe in steps, run for epochs
])
def test_a_run_length_given_alone_is_the_run_length(spec, given, unset, capsys):
    key, value = given.split("=")
    table = shown(capsys, "--config", spec, f"--config.{given}")
    assert (table[key][0], table[unset][0]) == (value, "-1")
    assert cli.main(["mimjax", "config", "show", "--config", spec, f"--config.{given}", f"--config.{unset}=3"]) == 2
    assert "expected exactly one of total_steps / total_epochs > 0" in capsys.readouterr().err  # both: say so


def test_a_study_run_length_given_alone_is_the_run_length():
    fv = cli.parse(cli.COMMANDS["study"], ["--config", "study", "--out", "S", "--config.finetune.total_epochs", "2"])
    assert (fv.config.finetune.total_epochs, fv.config.finetune.total_steps) == (2, -1)
    assert (fv.config.pretrain.total_steps, fv.config.pretrain.total_epochs) == (400, -1)  # untouched
