"""The import graph of seqzoo has no circles, counting imports inside functions too.

A circle hides which layer depends on which (the recipe on the tasks, the tasks on the recipe) and turns a
moved function into an ImportError far from the change. The graph is read from the source with ``ast``:
an edge a -> b for every ``import``/``from ... import`` in module a (at any depth) that names module b.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# setup.py installs ops/, train/ and eval/ as seqzoo.ops, seqzoo.train and seqzoo.eval.
PACKAGES = {"seqzoo": "seqzoo", "seqzoo.ops": "ops", "seqzoo.train": "train", "seqzoo.eval": "eval"}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(
                        base[: len(base) - node.level + 1] + ([node.module] if node.module else [])
                    )
                else:
                    base = node.module
                # `from pkg import sub` depends on the submodule; `from pkg import name` on pkg itself.
                subs = [f"{base}.{a.name}" for a in node.names]
                targets = [t for t in subs if t in mods]
                if len(targets) < len(subs):
                    targets.append(base)
            else:
                continue
            edges |= {t for t in map(known, targets) if t and t != name and t.startswith("seqzoo")}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_reads_relative_and_function_level_imports():
    graph = import_graph()
    assert "seqzoo.ops.gla" in graph["seqzoo.ops"]  # from .gla import gla
    assert "seqzoo.eval.tasks" in graph["seqzoo.train.data"]  # an import inside build_data


def test_no_import_circles():
    graph = import_graph()
    found = cycles(graph)
    described = [
        " -> ".join(c) + "  (" + "; ".join(f"{a}->{b}" for a in c for b in graph[a] if b in c) + ")"
        for c in found
    ]
    assert not found, "import circles:\n" + "\n".join(described)
