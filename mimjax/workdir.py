"""A run directory (workdir): what every command reads and writes in it.

    W/config.json          the run's full config (pre-training schema, or the classifier's)
    W/checkpoints/<step>/  Orbax checkpoints (mimjax.train.checkpoint)
    W/metrics.jsonl, W/tb/, W/snapshots/, W/curves.png

A directory written by `mimjax import` has the same shape (config.json + checkpoints/0/),
so it serves wherever a pre-training workdir does (teacher.path, finetune, eval, export).
"""
from __future__ import annotations

import json
import os

import ml_collections

CONFIG = "config.json"
CHECKPOINTS = "checkpoints"


def config_path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG)


def checkpoints_dir(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINTS)


def is_workdir(path: str) -> bool:
    """True when `path` holds config.json and checkpoints/ (a run or an imported model)."""
    return os.path.isfile(config_path(path)) and os.path.isdir(checkpoints_dir(path))


def read_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The workdir's config.json as a ConfigDict, or None if there is none."""
    if not os.path.isfile(config_path(workdir)):
        return None
    with open(config_path(workdir)) as f:
        return ml_collections.ConfigDict(json.load(f))


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(config_path(workdir), "w") as f:
        f.write(config.to_json_best_effort(indent=2))


def model_config(workdir: str) -> ml_collections.ConfigDict | None:
    """The `model` section of the workdir's config.json, or None if there is none."""
    c = read_config(workdir)
    return None if c is None else c.model


def load_state(workdir: str) -> dict:
    """The latest checkpoint's train state as saved (nested dicts of arrays)."""
    from mimjax.train import checkpoint  # Orbax: imported only when a checkpoint is read

    return checkpoint.load_state(checkpoints_dir(workdir))


def load_params(workdir: str):
    """`params` of the latest checkpoint, as saved (no target needed)."""
    return load_state(workdir)["params"]
