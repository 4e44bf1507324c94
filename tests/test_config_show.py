"""`mimjax config show`: every key of every pre-training recipe, resolved as `mimjax train`
resolves it, with its value and a one-line meaning; overrides and config errors as in train."""
import json
import re

import pytest

from mimjax import cli, configs, schema
from mimjax.train import config as config_lib

LINE = re.compile(r"^(\S+) = (.*?)\s+# (.+)$")
RECIPES = ["demo", "mae:vit_base_patch16", "gpa_mae:vit_base_patch16", "gpa_mae:vit_base_patch16,feature",
           "gpa_mae:vit_base_patch16,feature_early", "gpa_mae:vit_base_patch16,ema", "simmim:vit_base_patch16,feature",
           "gpa_mae:vit_base_patch16,runlocal"]


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


def test_every_schema_key_has_a_one_line_meaning():
    keys = schema.dotted_keys(config_lib.base_config())
    assert sorted(config_lib.MEANINGS) == sorted(keys)  # a new key without a meaning fails here
    assert all(m.strip() and "\n" not in m for m in config_lib.MEANINGS.values())


def test_the_shipped_pretraining_recipes_are_all_covered():
    assert {s.split(":")[0] for s in RECIPES} == set(configs.names()) - {"finetune", "linprobe", "study"}  # study: a study, not a pre-training config


@pytest.mark.parametrize("spec", RECIPES)
def test_every_key_of_each_recipe_appears_with_its_value_and_meaning(spec, capsys):
    cfg = recipe(spec)
    table = shown(capsys, "--config", spec)
    assert sorted(table) == sorted(schema.dotted_keys(cfg))
    for key, (value, meaning) in table.items():
        want = cfg
        for part in key.split("."):
            want = want[part]
        want = tuple(want) if isinstance(want, (list, tuple)) else want
        assert value == (repr(want) if isinstance(want, str) else str(want)), key
        assert meaning == config_lib.MEANINGS[key] and meaning.strip()


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
    (["--config", "finetune"], "a fine-tuning / linear-probe config: config show lists pre-training configs"),
    ([], "--config is required"),
])
def test_a_bad_config_is_one_line_and_exit_2(args, want, capsys):
    assert cli.main(["mimjax", "config", "show", *args]) == 2  # as mimjax train / plan
    captured = capsys.readouterr()
    assert captured.err.startswith(f"mimjax config show: {want}") and captured.err.count("\n") == 1, captured.err
    assert not captured.out
