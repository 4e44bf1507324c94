"""The recipes, shipped inside the package: `--config NAME[:ARG]` names one without a path,
so `mimjax train --config demo --workdir W` works after `pip install` outside a clone.

In a clone `configs/` is a link to this folder, so `--config configs/demo.py` is the same
file; outside a clone that path (which is what the README shows) falls back to the
packaged recipe of that name. A file that exists is always taken as it is.
"""
from __future__ import annotations

import os

DIR = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
    """The packaged recipes: ['demo', 'finetune', 'gpa_mae', ...]."""
    return sorted(f[:-3] for f in os.listdir(DIR) if f.endswith(".py") and not f.startswith("_"))


def resolve(spec: str) -> str:
    """`FILE[:ARG]` with FILE an existing file -> unchanged; `NAME[:ARG]`, `NAME.py[:ARG]` or
    `configs/NAME.py[:ARG]` (no such file here) with NAME a packaged recipe -> its path in
    the package, `:ARG` kept; anything else -> unchanged (the caller says it is missing)."""
    file, sep, arg = spec.partition(":")
    if os.path.isfile(file):
        return spec
    folder, name = os.path.split(file)
    name = name.removesuffix(".py")
    if folder in ("", "configs") and name in names():
        return os.path.join(DIR, f"{name}.py") + sep + arg
    return spec
