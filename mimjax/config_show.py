"""`mimjax config show`: a config as its command resolves it, one line per key with its
meaning: a pre-training config as `mimjax train` resolves it (`mimjax.train.config.MEANINGS`),
a fine-tuning or linear-probe config as `mimjax finetune` / `mimjax eval linprobe` do
(`mimjax.eval.config.MEANINGS`).

    mimjax config show --config gpa_mae:vit_base_patch16,feature --config.batch_size=1024
    seed = 0  # all randomness: init, data order, augmentation, masks
    ...

The config is checked as `mimjax plan` checks it (`config.validate` / the classifiers'
`check`, for one device): keys, types, ranges and combinations, the same checks the command
runs before it starts, without reading the files the run would read (teacher checkpoint,
encoder, data folders), so a recipe can be shown before its teacher or encoder exists.
"""
from __future__ import annotations

import ml_collections

from mimjax.eval import config as classifier_config
from mimjax.train import config as config_lib


def is_classifier(cfg: ml_collections.ConfigDict) -> bool:
    """Whether `cfg` is a fine-tuning / linear-probe config (mimjax/eval/config.py's schema)."""
    return "augment" in cfg and "masking" not in cfg


def resolve(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config its command would start from (a pre-training config: missing keys filled
    in, an unset teacher block / head set where known without reading), checked; a
    ConfigError with one line otherwise."""
    if is_classifier(cfg):
        classifier_config.check(cfg)
        return cfg
    cfg = config_lib.fill_missing(cfg)
    config_lib.validate(cfg)
    return cfg


def rows(cfg: ml_collections.ConfigDict) -> list[tuple[str, object, str]]:
    """(dotted key, value, meaning) for every key of a `resolve`d config, in the schema's order."""
    meanings = classifier_config.MEANINGS if is_classifier(cfg) else config_lib.MEANINGS
    return [(key, _get(cfg, key), meaning) for key, meaning in meanings.items()]


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def _literal(value) -> str:
    """A value as it would be written after --config.KEY= (strings quoted, tuples as tuples)."""
    return repr(value) if isinstance(value, str) else str(tuple(value) if isinstance(value, list) else value)


def format_rows(table) -> str:
    """`key = value  # meaning` lines, the comments aligned (up to a width)."""
    lefts = [f"{key} = {_literal(value)}" for key, value, _ in table]
    width = min(max(map(len, lefts)), 44)
    return "\n".join(f"{left:<{width}}  # {meaning}" for left, (_, _, meaning) in zip(lefts, table))


def as_json(table) -> dict:
    """{dotted key: {"value": ..., "meaning": ...}} (tuples as lists)."""
    return {key: {"value": list(value) if isinstance(value, tuple) else value, "meaning": meaning}
            for key, value, meaning in table}
