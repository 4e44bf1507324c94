"""The documentation stays true to the repository: every `mimjax <command> --flag` written in
README.md, docs/ and bench/README.md is a flag of that command (by its own `--help`); every
citation `docs/method.md §N` in the code names a section of docs/method.md.
Each checker is also run on a small broken example, so that it is seen to fail. Links, anchors
and code fences, under a CommonMark parser: tests/test_docs_markdown.py."""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import pytest

from scaffold import run_cli_process  # tests/scaffold.py: `mimjax ARGS` in a fresh process

ROOT = Path(__file__).resolve().parent.parent
METHOD = ROOT / "docs" / "method.md"
CITING_DIRS = ("mimjax", "tests", "bench", "configs", "scripts", "launch", "docs")
OLD_SPEC = "GPA" + "_SPEC"  # the method's former name outside the repository (spelled so this file does not cite it)


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


# --- Markdown code blocks and inline code (links, anchors: tests/test_docs_markdown.py) ------

FENCE = re.compile(r"^\s*(```|~~~)")


def split_code(text: str) -> tuple[list[str], str]:
    """(the fenced code blocks, each one string; the text outside them)."""
    blocks, prose, current = [], [], None
    for line in text.split("\n"):
        if FENCE.match(line):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
        else:
            prose.append(line)
    return blocks, "\n".join(prose)


INLINE_CODE = re.compile(r"`([^`]+)`")


# --- mimjax <command> --flag -----------------------------------------------------------------

def _cli_help(*command: str) -> str:
    r = run_cli_process(*command, "--help", timeout=120)
    assert r.returncode == 0, f"mimjax {' '.join(command)} --help exited {r.returncode}: {r.stderr[-2000:]}"
    return r.stdout


@functools.lru_cache(maxsize=None)
def commands() -> frozenset[str]:
    """The commands `mimjax --help` lists ("train", "eval knn", ...)."""
    out = _cli_help()
    names = re.findall(r"^  ([a-z]+(?: [a-z]+)?)\s{2,}\S", out, re.M)
    assert "train" in names, out
    return frozenset(names)


@functools.lru_cache(maxsize=None)
def command_flags(command: str) -> frozenset[str]:
    """The flags `mimjax <command> --help` lists, without dashes; `--[no]x` gives x and nox;
    `--config.KEY=VALUE` gives config.KEY."""
    out = _cli_help(*command.split())
    flags = {"help"}
    for no, name in re.findall(r"^ {2}--(\[no\])?([A-Za-z][\w.]*)", out, re.M):
        flags.add(name)
        if no:
            flags.add("no" + name)
    assert len(flags) > 1, out
    return frozenset(flags)


def command_lines(text: str) -> list[str]:
    """Every piece of code in a Markdown text, one logical line each: fenced lines (a
    trailing backslash joins the next line) and inline code spans (whitespace collapsed)."""
    blocks, prose = split_code(text)
    lines = []
    for block in blocks:
        lines += block.replace("\\\n", " ").split("\n")
    lines += [" ".join(span.split()) for span in INLINE_CODE.findall(prose)]
    return lines


INVOCATION = re.compile(r"(?<![\w./-])mimjax\s+([a-z][\w-]*)(?:\s+([a-z][\w-]*))?(.*)")


def bad_flags(text: str) -> list[str]:
    """`mimjax <command> [<sub>] --flag` in `text` where the command or the flag does not exist."""
    problems = []
    for line in command_lines(text):
        line = re.sub(r"\s#.*", "", line)  # a shell comment
        for m in INVOCATION.finditer(line):
            first, second, rest = m.group(1), m.group(2), m.group(3)
            if second and f"{first} {second}" in commands():
                command = f"{first} {second}"
            elif first in commands():
                command, rest = first, f" {second or ''}{rest}"
            else:
                if re.search(r"(?<![\w-])--[A-Za-z]", f"{second or ''}{rest}"):
                    problems.append(f"unknown command 'mimjax {first}' in {line.strip()!r}")
                continue
            rest = re.split(r"\s(?:\||;|&&)\s", rest)[0]  # up to a pipe or the next command
            for flag in re.findall(r"(?<![\w-])--([A-Za-z][\w.-]*)", rest):
                name = "config.KEY" if flag.startswith("config.") else flag.rstrip(".")
                if name not in command_flags(command):
                    problems.append(f"'mimjax {command}' has no flag --{flag} (its --help lists "
                                    f"{sorted(command_flags(command))}), in {line.strip()!r}")
    return problems


# --- files and names the docs point at ---------------------------------------------------------

REPO_PATH = re.compile(r"^(?:mimjax|configs|bench|tests|scripts|launch|docs|\.ci)/[\w/.-]*$")
DEFINED_IN = re.compile(r"`((?:mimjax|configs|bench)/[\w/]+\.py): ([\w.]+)")


def missing_code(text: str) -> list[str]:
    """Repository paths written in code spans (`mimjax/train/loop.py`) that do not exist, and
    `path.py: name` whose file defines no such function, class or constant."""
    problems = []
    for span in INLINE_CODE.findall(split_code(text)[1]):
        path = span.split(":")[0].rstrip(",.")
        if REPO_PATH.match(path) and "*" not in path and not (ROOT / path).exists():
            problems.append(f"no file {path}")
    for path, name in DEFINED_IN.findall(" ".join(text.split())):
        last = name.split(".")[-1]
        src = (ROOT / path).read_text(encoding="utf-8") if (ROOT / path).exists() else ""
        if not re.search(rf"^\s*(?:def|class) {re.escape(last)}\b|^{re.escape(last)}\b.*=", src, re.M):
            problems.append(f"{path} defines no {last}")
    return problems


# --- docs/method.md §N -----------------------------------------------------------------------

CITATION = re.compile(r"docs/method\.md[\s#]*§\s*(\d+)((?:\s*(?:-|,|and|or)\s*§\s*\d+)*)")


def method_sections(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"^## (\d+)\. ", text, re.M)}


def bad_citations(text: str, sections: set[int]) -> list[str]:
    """Citations `docs/method.md §N` (also `§N-§M`, `§N and §M`) naming no section, and any
    citation of the method's former file."""
    problems = []
    for m in CITATION.finditer(text):
        for n in [int(m.group(1)), *map(int, re.findall(r"§\s*(\d+)", m.group(2)))]:
            if n not in sections:
                problems.append(f"cites docs/method.md §{n}, which has no section '## {n}.'")
    if OLD_SPEC in text:
        problems.append(f"cites {OLD_SPEC}, which is not in the repository (cite docs/method.md §N)")
    return problems


def citing_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in CITING_DIRS:
        for dirpath, _, names in os.walk(ROOT / top):
            if "__pycache__" in dirpath or "/results" in dirpath:
                continue
            files += [Path(dirpath) / n for n in names if n.endswith((".py", ".md", ".sh", ".sbatch", ".txt"))]
    return files


# --- the tests -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_written_commands_have_their_flags(path):
    assert bad_flags(path.read_text(encoding="utf-8")) == []


def test_flag_checker_fails_on_a_missing_flag():
    good = ("```bash\nmimjax train --config configs/demo.py --workdir W \\\n"
            "    --config.batch_size=8  # --not_a_flag\n```\n"
            "and `mimjax eval knn --workdir W --dataset embedded_faces | head`, `mimjax plan --json --nojson`")
    assert bad_flags(good) == []
    bad = ("```bash\nmimjax train --config c.py \\\n    --no_such_flag=1\n```\n"
           "`mimjax eval knn --workdir W --epochs 3` and `mimjax evaluate --workdir W`")
    problems = bad_flags(bad)
    assert len(problems) == 3, problems
    assert "--no_such_flag" in problems[0] and "--epochs" in problems[1] and "mimjax evaluate" in problems[2]


def test_method_has_its_six_sections_and_the_citations():
    text = METHOD.read_text(encoding="utf-8")
    assert {1, 2, 3, 4, 5, 6} <= method_sections(text)
    assert "ACM MM 2024" in text or "Multimedia" in text
    assert "Masked Autoencoders Are Scalable Vision Learners" in text


def test_spec_citations_name_existing_sections():
    sections = method_sections(METHOD.read_text(encoding="utf-8"))
    problems, cited = [], 0
    for f in citing_files():
        if f == Path(__file__).resolve():
            continue
        text = f.read_text(encoding="utf-8", errors="replace")
        cited += len(CITATION.findall(text))
        problems += [f"{f.relative_to(ROOT)}: {p}" for p in bad_citations(text, sections)]
    assert problems == []
    assert cited >= 10  # the code does cite the method


def test_citation_checker_fails_on_a_missing_section():
    sections = {1, 2, 3, 4, 5, 6}
    good = "(docs/method.md §4) docs/method.md\n  §2, docs/method.md §4-§5, docs/method.md §1 and §4"
    assert bad_citations(good, sections) == []
    assert len(bad_citations("see docs/method.md §9", sections)) == 1
    assert len(bad_citations("docs/method.md\n    # §4-§12", sections)) == 1
    assert len(bad_citations(f"see {OLD_SPEC}.md section 4", sections)) == 1


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_code_the_docs_name_exists(path):
    assert missing_code(path.read_text(encoding="utf-8")) == []


def test_code_checker_fails_on_missing_code():
    assert missing_code("`mimjax/train/loop.py`, `mimjax/masking/gpa.py: gpa_mask`, `configs/demo.py:runlocal`") == []
    bad = "`mimjax/no_such_module.py` and `mimjax/masking/gpa.py: no_such_function`"
    assert len(missing_code(bad)) == 2


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    for script in ("scripts/demo.sh", "scripts/test.sh"):
        assert f"\nbash {script} " in quick_start and (ROOT / script).exists()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")  # CI runs what the README says
