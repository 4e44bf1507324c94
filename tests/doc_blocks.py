"""A doc's bash blocks, read as a shell would run them, for the tests that run a doc as written
(tests/test_imagenet_doc.py: docs/imagenet.md's platform blocks; tests/test_own_images.py:
docs/recipes.md's "Your own images"): the fenced ```bash lines under each `## heading`, with
their `\\` continuations joined, each line's words with $VAR and ${VAR} expanded, and the
`mimjax` command a line names."""
from __future__ import annotations

import re
import shlex


def bash_lines(text: str) -> dict[str, list[str]]:
    """{`## heading`: the lines of the fenced bash blocks below it, continuations joined}."""
    out, heading, in_block = {}, None, False
    for line in text.split("\n"):
        if line.startswith("```"):
            in_block = not in_block and line.strip() == "```bash"
        elif in_block:
            out.setdefault(heading, []).append(line)
        elif line.startswith("## "):
            heading = line[3:].strip()
    return {h: "\n".join(lines).replace("\\\n", " ").split("\n") for h, lines in out.items()}


def expand(line: str, env: dict) -> list[str]:
    """The words of a shell line, $VAR and ${VAR} from env (an unknown one is an error)."""
    def var(m):
        name = m.group(1) or m.group(2)
        assert name in env, f"the doc uses ${name}, which its block does not set: {line!r}"
        return env[name]
    return shlex.split(re.sub(r"\$(?:(\w+)|\{(\w+)\})", var, line), comments=True)


def assignment(words: list[str]) -> tuple[str, str] | None:
    """(NAME, value) of a `NAME=value` line's words, else None."""
    if len(words) == 1 and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        name, value = words[0].split("=", 1)
        return name, value
    return None


def command_lines(lines: list[str], site: dict, adjust=lambda name, value: value):
    """(line, words) of each command of a block, in order, its $VARs expanded: the block's own
    `NAME=value` lines set NAME, to site[NAME] where the test gives the path (a site path),
    else to adjust(NAME, value)."""
    env = {}
    for line in lines:
        words = expand(line, {**env, **site})
        if not words:
            continue
        if pair := assignment(words):  # NAME=value
            name, value = pair
            env[name] = site[name] if name in site else adjust(name, value)
            continue
        yield line, words


def command_name(args: list[str]) -> str:
    """`mimjax ARGS`'s command, as cli.py reads it: two words for a group (`eval knn`)."""
    from mimjax import cli

    return " ".join(args[:2]) if args[0] in cli.GROUPS else args[0]


def run_written(args: list[str], extra: list[str], outputs: dict, what: str) -> None:
    """Runs `mimjax ARGS EXTRA` in this process and checks it exited 0 and wrote its output:
    outputs[command] = (the flag naming its directory, the file it writes there)."""
    import os

    from mimjax import cli

    assert cli.main(["mimjax", *args, *extra]) == 0, f"{what} failed"
    flag, written = outputs[command_name(args)]
    where = args[args.index(f"--{flag}") + 1]
    assert os.path.exists(os.path.join(where, written)), f"{what} did not write {where}/{written}"
