"""`mimjax config show`: a pre-training config as `mimjax train` resolves it, one line per
key with its meaning (`mimjax.train.config.MEANINGS`).

    mimjax config show --config gpa_mae:vit_base_patch16,feature --config.batch_size=1024
    seed = 0  # all randomness: init, data order, augmentation, masks
    ...

The config is checked as `mimjax plan` checks it (`config.validate`, for one device): keys,
types, ranges and combinations, without reading the files the run would read (teacher
checkpoint, data folders), so a recipe can be shown before its teacher exists.
"""
from __future__ import annotations

import ml_collections

from mimjax.train import config as config_lib


def resolve(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config `mimjax train` would start from (missing keys filled in), validated; a
    ConfigError with one line otherwise."""
    cfg = config_lib.fill_missing(cfg)
    config_lib.validate(cfg)
    return cfg


def rows(cfg: ml_collections.ConfigDict) -> list[tuple[str, object, str]]:
    """(dotted key, value, meaning) for every key of a `resolve`d config, in the schema's order."""
    return [(key, _get(cfg, key), meaning) for key, meaning in config_lib.MEANINGS.items()]


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
