"""The package's import graph, read from the source (every import counts: module level, inside
functions, under ``TYPE_CHECKING``): no two folders of ``context_forge`` import each other, and no
module reaches itself through imports. Top-level modules (``config``, ``registry``, ``metrics``,
``launch_server``) are nodes of their own, not a folder."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "python" / "context_forge"
PKG = "context_forge"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = (PKG, *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports (``from a import b`` counts ``a.b`` when it is one)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]).rstrip(".") \
                    if node.level else node.module or ""
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            edges[name].update(t for t in targets if t in mods and t != name)
    return edges


def _folder(name: str, mods: dict[str, Path]) -> str:
    parts = name.split(".")
    is_folder = len(parts) > 2 or mods[name].name == "__init__.py"
    return parts[1] if is_folder and len(parts) > 1 else name


def test_no_two_folders_import_each_other() -> None:
    mods = _modules()
    between: dict[tuple[str, str], list[str]] = defaultdict(list)
    for a, targets in _edges(mods).items():
        for b in targets:
            fa, fb = _folder(a, mods), _folder(b, mods)
            if fa != fb:
                between[(fa, fb)].append(f"{a} -> {b}")
    both = sorted({tuple(sorted(k)) for k in between if (k[1], k[0]) in between})
    assert not both, "folders importing each other:\n" + "\n".join(
        f"{x} <-> {y}: {between[(x, y)][:3]} / {between[(y, x)][:3]}" for x, y in both)


def test_no_import_cycle() -> None:
    mods = _modules()
    edges = _edges(mods)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(mods):
        if m not in state:
            cycle = visit(m)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_is_read() -> None:
    """The checks above see real edges (a parse that found nothing would pass them vacuously)."""
    mods = _modules()
    edges = _edges(mods)
    assert "context_forge.kv.buffer" in edges["context_forge.attention.base"]
    assert "context_forge.kv.buffer" in edges["context_forge.prefetch.copier"]
    assert "context_forge.cache.radix" in edges["context_forge.cache.tiered"]
    assert sum(len(t) for t in edges.values()) > 200
