"""The package layout as rules: the import graph of mimjax/ (every import, including those
inside functions, read with `ast`) has no cycle, and the layers keep their promises."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "mimjax"


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(path: pathlib.Path) -> set[str]:
    """The mimjax modules a file imports anywhere in it: `from a.b import c` is an import of
    a.b.c when that is a module, else of a.b."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "mimjax"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mimjax":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in MODULES else node.module)
    return out


GRAPH = {m: imports_of(p) - {m} for m, p in MODULES.items()}


def find_cycle(graph):
    """One cycle as a list of modules, or None (depth-first search, three colours)."""
    colour, stack = {}, []

    def visit(m):
        colour[m] = "grey"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if colour.get(n) == "grey":
                return stack[stack.index(n):] + [n]
            if n not in colour and (found := visit(n)):
                return found
        colour[m] = "black"
        stack.pop()
        return None

    for m in sorted(graph):
        if m not in colour and (found := visit(m)):
            return found
    return None


def reachable(graph, module) -> set[str]:
    """The modules `module` imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        for n in graph.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_the_graph_is_read_and_the_cycle_finder_works():
    assert "mimjax.train.step" in GRAPH["mimjax.train.pretrain"]  # what this test relies on, checked
    assert "mimjax.masking" in GRAPH["mimjax.train.step"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert reachable({"a": {"b"}, "b": {"c", "a"}, "c": set(), "d": {"a"}}, "a") == {"a", "b", "c"}


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle)


NEVER = {  # package -> packages it must never import
    "mimjax.masking": ("mimjax.models", "mimjax.data", "mimjax.train", "mimjax.eval", "mimjax.export",
                       "mimjax.parallel", "mimjax.cli", "mimjax.workdir", "mimjax.schema", "mimjax.interop"),
    "mimjax.models": ("mimjax.train", "mimjax.eval", "mimjax.data", "mimjax.export", "mimjax.parallel", "mimjax.cli"),
    "mimjax.export": ("mimjax.train", "mimjax.eval", "mimjax.cli"),
    "mimjax.data": ("mimjax.train", "mimjax.eval", "mimjax.cli"),
    "mimjax.train": ("mimjax.eval", "mimjax.cli"),
}


@pytest.mark.parametrize("package", sorted(NEVER))
def test_layers_import_only_what_they_may(package):
    inside = [m for m in GRAPH if (m == package or m.startswith(package + ".")) and not m.endswith(".__main__")]
    assert inside, package  # (a package's __main__ is an entry point, like the CLI)
    bad = sorted(f"{m} imports {n}" for m in inside for n in GRAPH[m]
                 if any(n == f or n.startswith(f + ".") for f in NEVER[package]))
    assert not bad, bad


def test_masking_imports_nothing_of_ours_but_itself():
    inside = [m for m in GRAPH if m.startswith("mimjax.masking")]
    assert all(n.startswith("mimjax.masking") for m in inside for n in GRAPH[m]), {m: GRAPH[m] for m in inside}


def test_the_run_loop_reaches_none_of_its_callers():
    """`Run` (mimjax.train.loop) serves every trainer's loop: no import of it, direct or
    through other modules, reaches pre-training, the evaluation commands or the CLI."""
    assert all("mimjax.train.loop" in GRAPH[m] for m in ("mimjax.train.pretrain", "mimjax.eval.classify"))
    callers = ("mimjax.train.pretrain", "mimjax.eval", "mimjax.cli")
    bad = sorted(n for n in reachable(GRAPH, "mimjax.train.loop")
                 if any(n == c or n.startswith(c + ".") for c in callers))
    assert not bad, bad
