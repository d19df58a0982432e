"""The package's layering (docs/architecture.md): the import-linter contracts of pyproject.toml hold, and no
two pattlite modules import each other, directly or around a loop, not even inside a function."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pattlite"


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    """(dotted name, is a package's __init__) of a file under `root`."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the pattlite modules it imports}, from every import statement anywhere in its file (top level,
    inside functions and classes, relative imports resolved). `from pattlite.x import y` counts as importing
    `pattlite.x.y` when that is a module, else `pattlite.x`."""
    files = {}
    for path in sorted(package.rglob("*.py")):
        name, is_package = _module_name(path, package.parent)
        files[name] = (path, is_package)
    graph = {}
    for name, (path, is_package) in files.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[: len(here) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    child = f"{module}.{alias.name}"
                    targets.add(child if child in files else module)
        edges = set()
        for target in targets:
            if not (target == "pattlite" or target.startswith("pattlite.")):
                continue
            while target not in files and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in files and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, modules and edges in sorted order)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_among_pattlite_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, (
        "import cycle among pattlite modules: "
        + " -> ".join(cycle)
        + " (imports inside functions count; move the shared names to a lower module)"
    )


def test_the_cycle_finder_finds_cycles_through_function_level_and_relative_imports(tmp_path):
    package = tmp_path / "pattlite"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pattlite import b\n")
    (package / "b.py").write_text("def f():\n    from .sub import c\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("def g():\n    from ..a import x\n")
    (package / "d.py").write_text("import pattlite.a\n")
    graph = import_graph(package)
    assert graph["pattlite.b"] == {"pattlite.sub.c"} and graph["pattlite.sub.c"] == {"pattlite.a"}
    assert find_cycle(graph) == ["pattlite.a", "pattlite.b", "pattlite.sub.c", "pattlite.a"]
    graph["pattlite.sub.c"].clear()
    assert find_cycle(graph) is None


def test_the_import_linter_contracts_hold():
    pytest.importorskip("importlinter", reason="import-linter is a dev dependency (pip install -e .[dev])")
    exe = Path(sys.executable).with_name("lint-imports")
    command = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    done = subprocess.run(
        command + ["--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, "import-linter contracts broken:\n" + done.stdout[-6000:] + done.stderr[-2000:]
