"""The recipes, shipped inside the package: `--config NAME[:ARG]` names one without a path,
so `mimjax train --config demo --workdir W` works after `pip install` outside a clone.
`resolve_argv` does that for a command line, before absl reads it.

In a clone `configs/` is a link to this folder, so `--config configs/demo.py` is the same
file; outside a clone that path (which is what the README shows) falls back to the
packaged recipe of that name. A bare name (no folder, no `.py`) is only ever a packaged
recipe: a config file is Python that runs with the user's rights, so a file `./mae` in the
current directory must not stand in for `--config mae`. A file named by a path or by a name
ending in `.py` that exists is taken as it is.
"""
from __future__ import annotations

import os
import re

DIR = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
    """The packaged recipes: ['demo', 'finetune', 'gpa_mae', ...]."""
    return sorted(f[:-3] for f in os.listdir(DIR) if f.endswith(".py") and not f.startswith("_"))


def bare(file: str) -> bool:
    """Whether `--config`'s FILE is a bare name (`mae`): no folder and no `.py`."""
    return not (os.sep in file or "/" in file or file.endswith(".py"))


def resolve(spec: str) -> str:
    """`NAME[:ARG]` (a bare name) with NAME a packaged recipe -> its path in the package,
    `:ARG` kept, whatever the current directory holds; `FILE[:ARG]` with FILE an existing file
    named by a path or `.py` -> unchanged; `NAME.py[:ARG]` or `configs/NAME.py[:ARG]` (no such
    file here) with NAME a packaged recipe -> its path in the package; anything else ->
    unchanged (the caller says it is missing)."""
    file, sep, arg = spec.partition(":")
    if os.path.isfile(file) and not bare(file):
        return spec
    folder, name = os.path.split(file)
    name = name.removesuffix(".py")
    if folder in ("", "configs") and name in names():
        return os.path.join(DIR, f"{name}.py") + sep + arg
    return spec


def config_arg(argv) -> str | None:
    """The `FILE[:ARG]` of `--config FILE[:ARG]` / `--config=FILE[:ARG]` in argv, or None."""
    for i, a in enumerate(argv):
        m = re.match(r"^--?config(=(.*))?$", a)
        if m:
            return m.group(2) if m.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
    return None


def overrides(argv) -> list[str]:
    """The dotted keys of the `--config.a.b=value` overrides in argv, in order."""
    keys = []
    for a in argv:
        m = re.match(r"^--?(no)?config\.([^=]+)", a)
        if m:
            keys.append(m.group(2))
    return keys


def resolve_argv(argv: list) -> list:
    """argv with the value of `--config NAME[:ARG]` resolved (`resolve`): a packaged recipe
    named without a path becomes its file in the package; and each `--config.KEY VALUE` as
    `--config.KEY=VALUE`."""
    out = list(argv)
    for i, a in enumerate(out):
        if a in ("--config", "-config") and i + 1 < len(out):
            out[i + 1] = resolve(out[i + 1])
        elif a.startswith(("--config=", "-config=")):
            flag, _, value = a.partition("=")
            out[i] = f"{flag}={resolve(value)}"
    return _join_override_values(out)


def _join_override_values(argv: list) -> list:
    """`--config.KEY VALUE` -> `--config.KEY=VALUE`: absl reads a field that takes any literal
    (model.remat, optimizer.accum_steps: True, 4 or auto) as a boolean flag, which would leave
    VALUE behind as a stray argument; the commands take no positional arguments."""
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        value_next = i + 1 < len(argv) and not re.match(r"^-(?!\d|\.\d)", argv[i + 1])  # a word or a negative number
        if re.match(r"^--?config\.[^=]+$", a) and value_next:
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def missing(spec: str | None) -> str | None:
    """For `--config FILE[:ARG]` (as `resolve` left it) whose FILE is not a file, or is a bare
    name that is no packaged recipe: one line saying so and naming the packaged recipes; None
    when there is nothing to say (no --config: absl says it is required)."""
    file = (spec or "").split(":", 1)[0]
    if spec and bare(file) and os.path.isfile(file):
        return (f"no packaged recipe {file!r} (--config {spec}); the packaged recipes are {', '.join(names())}; "
                f"a config file of your own is named by its path: --config ./{spec}")
    if not spec or os.path.isfile(file):
        return None
    return (f"config file {file!r} {'is not a file' if os.path.exists(file) else 'not found'} (--config {spec}); "
            f"the packaged recipes are {', '.join(names())}")
