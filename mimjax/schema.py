"""The one config mechanism every command uses: an ml_collections schema per command
(`mimjax.train.config.base_config` for pre-training, `mimjax.eval.config.base_config` for
the classifiers), checked key by key, and `ConfigError` with one line naming the key, the
value and what was expected."""
from __future__ import annotations

import difflib
import logging

import ml_collections

log = logging.getLogger("mimjax")


class ConfigError(ValueError):
    """A config value that cannot run; the message is one line naming key and value."""


def fail(key: str, value, expected: str):
    raise ConfigError(f"config.{key}={value!r}: expected {expected}")


def in_range(key: str, value, lo, hi, expected: str):
    if not lo <= value <= hi:
        fail(key, value, expected)


def schema_diff(config, schema, prefix: str = "") -> tuple[list[str], list[str]]:
    """(unknown keys, missing keys) of config against schema, dotted."""
    unknown, missing = [], []
    for k in config.keys():
        if k not in schema:
            unknown.append(prefix + k)
        elif isinstance(schema[k], ml_collections.ConfigDict):
            u, m = schema_diff(config[k], schema[k], f"{prefix}{k}.")
            unknown += u
            missing += m
    missing += [prefix + k for k in schema.keys() if k not in config]
    return unknown, missing


def dotted_keys(schema, prefix: str = "") -> list[str]:
    """Every leaf key of a schema, dotted: ["seed", "model.name", ...]."""
    out = []
    for k in schema.keys():
        if isinstance(schema[k], ml_collections.ConfigDict):
            out += dotted_keys(schema[k], f"{prefix}{k}.")
        else:
            out.append(prefix + k)
    return out


def did_you_mean(key: str, schema) -> str:
    """' (did you mean config.x.y?)' for the closest key of the schema, or ''."""
    close = difflib.get_close_matches(key, dotted_keys(schema), n=1, cutoff=0.6)
    return f" (did you mean config.{close[0]}?)" if close else ""


def load_config_file(path: str, arg: str | None = None):
    """`get_config(arg)` of a config file, loaded by path as ml_collections' config_flags
    does (no arg: `get_config()`)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mimjax_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*([] if arg is None else [arg]))


def check_keys(config, schema, where: str) -> None:
    """Raises ConfigError naming the first unknown key (with the closest known one) or the
    missing ones; `where` says where the schema is defined."""
    unknown, missing = schema_diff(config, schema)
    if unknown:
        raise ConfigError(f"unknown config key config.{unknown[0]}{did_you_mean(unknown[0], schema)}"
                          f"{f' and {len(unknown) - 1} more' if len(unknown) > 1 else ''}; the schema is {where}")
    if missing:
        raise ConfigError(f"config lacks key(s) {', '.join(missing)}; the schema is {where}")


def fill_missing(config, schema) -> ml_collections.ConfigDict:
    """`config` with the keys it lacks (a config.json of an older mimjax) taken from
    `schema`'s defaults, with a warning; `config` itself when nothing is missing."""
    _, missing = schema_diff(config, schema)
    if not missing:
        return config
    log.warning("config lacks %s (older mimjax?); using the defaults", ", ".join(missing))
    with schema.unlocked():
        _update(schema, config)
    return schema


def _update(dst, src):
    for k in src.keys():
        if isinstance(src[k], ml_collections.ConfigDict) and k in dst:
            _update(dst[k], src[k])
        else:
            dst[k] = src[k]
