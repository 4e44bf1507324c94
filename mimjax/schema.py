"""The one config mechanism every command uses: an ml_collections schema per command
(`mimjax.train.config.base_config` for pre-training, `mimjax.eval.config.base_config` for
the classifiers), checked key by key, and `ConfigError` with one line naming the key, the
value and what was expected; and the one line a command prints for a command-line error in
a config file or its `--config.KEY=VALUE` overrides (`flag_error`, `loading_error`)."""
from __future__ import annotations

import difflib
import logging
import os
import re
import traceback

import ml_collections

log = logging.getLogger("mimjax")


class ConfigError(ValueError):
    """A config value that cannot run; the message is one line naming key and value."""


def fail(key: str, value, expected: str):
    raise ConfigError(f"config.{key}={value!r}: expected {expected}")


def in_range(key: str, value, lo, hi, expected: str):
    if not lo <= value <= hi:
        fail(key, value, expected)


# grain shuffles with a 32-bit seed; pre-training draws its snapshot images with seed + 1
SEED_MAX = 2**32 - 2


def check_seed(seed) -> None:
    """ConfigError unless `seed` is an integer in [0, SEED_MAX] (every command's `seed` key)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        fail("seed", seed, f"an integer in [0, {SEED_MAX}]")


def single_duration(config, overridden: list[str]) -> None:
    """A run length given on the command line alone is the run length: for each overridden
    `[PREFIX.]total_steps` > 0 whose `[PREFIX.]total_epochs` is not overridden too, that one
    becomes -1 (unset), and the other way round; so `--config.total_steps=300` is enough on a
    recipe that counts epochs. Both given: `validate` says to set exactly one."""
    given = set(overridden)
    for key in given:
        prefix, _, name = key.rpartition(".")
        other = {"total_steps": "total_epochs", "total_epochs": "total_steps"}.get(name)
        section = config
        for part in filter(None, prefix.split(".")):
            section = section[part]
        if other and f"{prefix}.{other}".lstrip(".") not in given and other in section and section[name] > 0:
            section[other] = -1


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


# --- Command-line errors of a config command, as one line -------------------------------
# absl and ml_collections' config_flags report a bad flag or a config file that raised in
# their own words (several lines, a traceback, Python's literal-parsing messages); these
# turn them into the one line `mimjax <command>: ...` prints.
def _friendly(message: str) -> str:
    message = re.sub(r"invalid literal for int\(\) with base 10: .*", "expected an integer", message)
    message = re.sub(r"could not convert string to float: .*", "expected a number", message)
    message = re.sub(r"\('Non-boolean argument to boolean flag', .*\)", "expected True or False", message)
    return message


def flag_error(e, known_flags) -> str:
    """One line for an absl `flags.Error` raised while parsing; `known_flags`: the names of
    the command's flags (for "did you mean")."""
    from absl import flags

    msg = str(e)
    if isinstance(e, flags.UnrecognizedFlagError):
        known = [n for n in known_flags if not n.startswith("config.")]
        close = difflib.get_close_matches(e.flagname, known, n=1, cutoff=0.6)
        return f"unknown flag --{e.flagname}" + (f" (did you mean --{close[0]}?)" if close else "")
    m = re.search(r"Flag --(\S+) must have a value other than None", msg)
    if m:
        return f"--{m.group(1)} is required"
    if "Error whilst parsing config file" in msg:  # the config file's get_config() raised
        m = re.search(r"flag --config=([^:\s]+)", msg)
        file = m.group(1) if m else "--config"
        lines = re.findall(rf'File "{re.escape(os.path.abspath(file))}", line (\d+)', msg) or \
            re.findall(rf'File "{re.escape(file)}", line (\d+)', msg)
        where = f":{lines[-1]}" if lines else ""
        last = [line.strip() for line in msg.splitlines() if line.strip()][-1]
        return f"error in the config file {file}{where}: {last}"
    lines = [line.strip() for line in msg.splitlines() if line.strip()]
    return _friendly(" ".join(lines).removeprefix("flag "))


def _unknown_key(config, key: str) -> bool:
    node = config
    for part in key.split("."):
        try:
            if part not in node:
                return True
        except TypeError:
            return True
        node = node[part]
    return False


def loading_error(e: Exception, spec: str | None, overrides: list[str]) -> str:
    """One line for an exception raised while absl loaded `--config spec` (`FILE[:ARG]`) and
    applied the `--config.KEY=...` overrides (their dotted keys): an override of a key the
    config lacks, or the config file itself raising (with its line number)."""
    path = spec or ""
    file, sep, arg = path.partition(":")
    if overrides and isinstance(e, (AttributeError, KeyError)):
        try:
            config = load_config_file(file, arg if sep else None)
        except Exception:  # noqa: BLE001 - the file itself fails; reported below
            config = None
        if config is not None:
            for key in overrides:
                if _unknown_key(config, key):
                    return f"unknown config key config.{key}{did_you_mean(key, config)}"
    where = ""
    for frame in traceback.extract_tb(e.__traceback__):
        if os.path.abspath(frame.filename) == os.path.abspath(file):
            where = f":{frame.lineno}"
    first = (str(e).strip().splitlines() or [""])[0]
    return f"error in the config file {file}{where}: {type(e).__name__}: {first}"


def deferred_load_error(e: OSError, spec: str | None) -> str:
    """One line for the OSError config_flags defers to the first access of a config it
    could not load."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"cannot load --config {spec}: {lines[-1]}"
