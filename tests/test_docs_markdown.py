"""The documentation renders as its author meant, read by a CommonMark parser (markdown-it-py,
what GitHub's renderer follows), not by a regex: every fenced code block is closed by a bare
fence, so no heading is swallowed by a code block (a line "```text" meant to close a block
opens nothing and leaves it open); every relative link, `FILE.md#anchor` or `#anchor`,
reaches a file and a heading of it by GitHub's anchor rule. Each checker is also run on a
small broken example, so that it is seen to fail. And the README names the last column of the
snapshot PNGs as they title it."""
from __future__ import annotations

import functools
import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
MD = MarkdownIt("commonmark").enable("table")  # GitHub: CommonMark and its tables
SCHEME = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)  # https:, mailto:, //host: not a file here


def tokens(text: str) -> list:
    """markdown-it's block tokens of `text`, each inline token's children after it."""
    out = []
    for tok in MD.parse(text):
        out += [tok, *(tok.children or [])]
    return out


# --- Code blocks -----------------------------------------------------------------------------

def fence_problems(text: str) -> list[str]:
    """Fenced code blocks that are not closed by a bare fence, lines inside a block that start
    like its closing fence but carry text (a "```text" meant to close it), and "##" heading
    lines a code block swallowed."""
    lines, problems = text.split("\n"), []
    for tok in MD.parse(text):
        if tok.type not in ("fence", "code_block"):
            continue
        first, end = tok.map  # source lines [first, end): the block, its fences included
        body = first + 1 + (tok.type == "fence")  # the 1-based line number of the block's first code line
        code = tok.content.split("\n")
        if tok.type == "fence":
            closing = re.compile(rf"{re.escape(tok.markup[0])}{{{len(tok.markup)},}}\s*")
            if end - 1 == first or not closing.fullmatch(lines[end - 1].lstrip(" >")):
                problems.append(f"line {first + 1}: the code block opened by {lines[first].strip()!r} is never "
                                f"closed (it runs to line {end})")
            opener = re.compile(rf"{re.escape(tok.markup[0])}{{{len(tok.markup)},}}\s*\S")
            problems += [f"line {body + i}: {line.strip()!r} inside the code block of line {first + 1}: a "
                         f"closing fence takes no text after it, so this one closes nothing"
                         for i, line in enumerate(code) if opener.match(line.lstrip())]
        if tok.info.split(" ")[0] not in ("markdown", "md"):  # an example of Markdown shows its headings as code
            problems += [f"line {body + i}: heading {line.strip()!r} is inside the code block of line {first + 1}"
                         for i, line in enumerate(code) if re.match(r" {0,3}#{2,6} \S", line)]
    return problems


# --- Headings and links ----------------------------------------------------------------------

def slug(text: str) -> str:
    """GitHub's anchor of a heading's rendered text: lower case, every character but letters,
    digits, "_", "-" and spaces dropped, each space a "-"."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def headings(text: str) -> list[str]:
    """The rendered text of every heading markdown-it sees, in order (code spans and link
    text kept, their markup dropped)."""
    toks, out = MD.parse(text), []
    for opening, inline in zip(toks, toks[1:]):
        if opening.type == "heading_open":
            out.append("".join(c.content if c.type in ("text", "code_inline") else " " if c.type.endswith("break")
                               else "" for c in inline.children))
    return out


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of `text`: a repeated slug gets -1, -2, ..."""
    seen, out = {}, set()
    for h in headings(text):
        base = s = slug(h)
        while s in seen:
            seen[base] += 1
            s = f"{base}-{seen[base]}"
        seen[s] = 0
        out.add(s)
    return out


@functools.lru_cache(maxsize=None)
def anchors_of(path: Path) -> frozenset[str]:
    return frozenset(anchors(path.read_text(encoding="utf-8")))


def link_problems(path: Path, text: str) -> list[str]:
    """Relative links and images of `text` (the file at `path`) whose file does not exist, or
    whose `#anchor` is no heading of the Markdown file it names."""
    problems = []
    for tok in tokens(text):
        target = tok.attrGet("href") if tok.type == "link_open" else tok.attrGet("src") if tok.type == "image" else None
        if target is None or SCHEME.match(target):
            continue
        file_part, _, anchor = unquote(target).partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if dest != path and not dest.exists():
            problems.append(f"{path.name}: link {target!r}: no file {dest}")
        elif anchor and (dest.suffix != ".md" or dest.is_dir()):
            problems.append(f"{path.name}: link {target!r}: an anchor into a file that is not Markdown")
        elif anchor and anchor not in (anchors(text) if dest == path else anchors_of(dest)):
            problems.append(f"{path.name}: link {target!r}: no heading #{anchor} in {dest.name}")
    return problems


# --- The tests -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_are_closed_and_swallow_no_heading(path):
    assert fence_problems(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_reach_a_file_and_a_heading(path):
    assert link_problems(path, path.read_text(encoding="utf-8")) == []


# The defect of docs/recipes.md: "```text" meant to close the block opened a second time,
# and "## The recipes" became code.
SWALLOWED = "# Recipes\n\n```bash\nmimjax train\n```text\nsee below\n\n## The recipes\n\nthe list\n"


def test_fence_checker_fails_on_an_unclosed_block_and_a_swallowed_heading():
    assert headings(SWALLOWED) == ["Recipes"]  # what a reader sees: one heading
    problems = fence_problems(SWALLOWED)
    assert len(problems) == 3, problems
    assert "never closed" in problems[0] and "'```text'" in problems[1] and "'## The recipes'" in problems[2]
    fixed = SWALLOWED.replace("```text\n", "```\n")
    assert fence_problems(fixed) == [] and headings(fixed) == ["Recipes", "The recipes"]
    nested = "````markdown\n```bash\nx\n```\n## shown as code, meant so\n````\n"  # a longer fence may hold ```
    assert fence_problems(nested) == [] and len(fence_problems(nested.replace("markdown", "text"))) == 1
    assert fence_problems("- item\n  ```bash\n  x\n  ```\n- next\n\n~~~\n# a shell comment\n~~~\n") == []
    assert "never closed" in fence_problems("- item\n  ```bash\n  x\n- next\n")[0]  # the list item ends it


def test_link_checker_fails_on_broken_links(tmp_path):
    doc = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# Pre-flight: will it fit? (`mimjax plan`)\n## metrics.jsonl\n## metrics.jsonl\n")
    (tmp_path / "c.py").write_text("")
    good = ("# Top\n[b](b.md#pre-flight-will-it-fit-mimjax-plan) [dup](b.md#metricsjsonl-1) [up](#top) "
            "[web](https://example.org/x#y) [code](c.py)\n| t | [in a table](b.md#metricsjsonl) |\n|---|---|\n"
            "```\n[in code](nope.md)\n```\n`[inline code](nope.md)`\n")
    assert link_problems(doc, good) == []
    bad = ("# Top\n[a](no_such.md) [b](b.md#no-such-heading) [c](#nowhere) [d](c.py#L1) ![e](no.png)\n"
           "| t | [f](b.md#metricsjsonl-2) |\n|---|---|\n[g][ref]\n\n[ref]: b.md#top\n")
    problems = link_problems(doc, bad)
    assert len(problems) == 7, problems
    assert "no heading #metricsjsonl-2" in problems[5] and "b.md#top" in problems[6]
    assert link_problems(doc, "[r](#the-recipes)\n\n" + SWALLOWED) != []  # a heading swallowed is no anchor


def test_slug_follows_github():
    assert slug("Pre-flight: will it fit, and how fast can it go? (mimjax plan)") == \
        "pre-flight-will-it-fit-and-how-fast-can-it-go-mimjax-plan"
    assert slug("4. GPA as a feature (the GPA head)") == "4-gpa-as-a-feature-the-gpa-head"
    assert slug("Cores to feed 8 x H100") == "cores-to-feed-8-x-h100" and slug("A  b_c") == "a--b_c"
    assert headings("# The `mimjax plan` [command](x.md) *now*\n") == ["The mimjax plan command now"]
    assert anchors("# A\n## A\n## A-1\n```\n# not a heading\n```\n") == {"a", "a-1", "a-1-1"}


def test_readme_names_the_snapshots_last_column_as_the_pngs_title_it():
    """The README's legend of `snapshots/step_*.png` names the last column's mask as the
    PNGs title it: at the end of training early on, at its start later, the final one included."""
    from mimjax.train import pictures

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    legend = " ".join(readme.split("`snapshots/step_*.png`", 1)[1].split(" and TensorBoard", 1)[0].split())
    for progress in (0.0, 1.0):  # the first snapshot and the final one
        title = pictures.column_titles(gpa=True, mask_at=pictures.other_progress(progress))[-1]
        assert f'"{title}"' in legend, (title, legend)
