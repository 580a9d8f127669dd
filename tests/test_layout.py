"""The architecture's rules, checked on the source (docs/principle.rst, "Module map").

1. No import cycles between greenportal's modules, counting imports inside
   functions (only ``if TYPE_CHECKING:`` blocks, which never run, are left
   out).
2. Imports go one way: ``_accel``/``_outcome`` <- ``_portal``/``_await`` <- ``_backends``
   <- everything else <- ``__init__``.
3. Outside ``_backends/`` and the integration modules, no module imports an
   event loop library, looks one up in ``sys.modules`` or compares a value
   with a library's name.
4. No module is much longer than a reader can hold (800 lines, with a little
   slack for the essays).
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

import pytest

SRC = pathlib.Path(__file__).resolve().parent.parent / "src" / "greenportal"
PACKAGE = "greenportal"
LIBRARIES = {"asyncio", "trio", "anyio", "uvloop", "sniffio", "curio", "outcome"}
# Integration modules adapt one library each and may name it.
INTEGRATIONS = {"aiohttp", "asgi", "fastapi", "ipython", "sqlalchemy", "starlette", "pytest_plugin"}
# Tools on top of the library that import the user's modules by name (and know no
# event loop library): only that one finding is allowed them.
TOOLS = {"stubgen"}
MAX_LINES = 820

if not SRC.is_dir():  # pragma: no cover - running from an installed wheel
    pytest.skip("needs the source tree", allow_module_level=True)


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}
# Compiled modules (the accelerator): imported, but not parsed.
EXTENSIONS = {module_name(p) for p in SRC.rglob("*.c")}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node that can run: all of them but ``if TYPE_CHECKING:`` bodies."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(name: str, tree: ast.AST) -> Iterator[str]:
    """Absolute names of the modules *name* imports at run time."""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts)
                if node.module:
                    base = f"{base}.{node.module}"
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if full in MODULES or full in EXTENSIONS else base


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        edges[name] = {m for m in imported_modules(name, tree) if m in MODULES and m != name}
    return edges


def level(name: str) -> int:
    if name == PACKAGE:
        return 4
    short = name.split(".")[1]
    if short in ("_accel", "_outcome", "_version"):
        return 0
    if short in ("_portal", "_await"):
        return 1
    if short == "_backends":
        return 2
    return 3


def test_the_graph_sees_the_modules() -> None:
    edges = graph()
    # A sanity check of the parser itself: known edges are found, lazy ones too.
    assert "greenportal._portal" in edges["greenportal._backends._asyncio"]
    assert "greenportal._backends._asyncio" in edges["greenportal._backends"]  # lazy import
    assert "greenportal._backends._common" in edges["greenportal._backends._trio"]
    assert "greenportal._accel" in edges["greenportal._portal"]


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_go_one_way() -> None:
    wrong = [
        f"{a} (level {level(a)}) imports {b} (level {level(b)})"
        for a, targets in graph().items()
        for b in targets
        if level(b) > level(a)
    ]
    assert not wrong, "upward imports:\n" + "\n".join(sorted(wrong))


def library_knowledge(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Where a module imports, looks up or compares with an event loop library."""

    def names_library(node: ast.expr) -> bool:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value in LIBRARIES
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(names_library(e) for e in node.elts)
        return False

    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES:
                    yield node.lineno, f"imports {alias.name}"
        elif isinstance(node, ast.ImportFrom) and not node.level:
            if (node.module or "").split(".")[0] in LIBRARIES:
                yield node.lineno, f"imports from {node.module}"
        elif isinstance(node, ast.Compare):
            if any(names_library(e) for e in [node.left, *node.comparators]):
                yield node.lineno, "compares with a library name"
        elif isinstance(node, ast.Call):
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr in ("get", "__getitem__")
                and ast.unparse(func.value) == "sys.modules"
                and node.args
                and names_library(node.args[0])
            ):
                yield node.lineno, f"looks up {ast.unparse(node.args[0])} in sys.modules"
            if isinstance(func, ast.Attribute) and func.attr == "import_module":
                yield node.lineno, "imports a module by name"
        elif (
            isinstance(node, ast.Subscript)
            and ast.unparse(node.value) == "sys.modules"
            and names_library(node.slice)
        ):
            yield node.lineno, f"looks up {ast.unparse(node.slice)} in sys.modules"


def test_only_backends_know_event_loop_libraries() -> None:
    found = []
    for name, path in MODULES.items():
        parts = name.split(".")
        if len(parts) > 1 and (parts[1] == "_backends" or parts[1] in INTEGRATIONS):
            continue
        tree = ast.parse(path.read_text(), str(path))
        tool = len(parts) > 1 and parts[1] in TOOLS
        found += [
            f"{name}:{line}: {what}"
            for line, what in library_knowledge(tree)
            if not (tool and what == "imports a module by name")
        ]
    assert not found, "library knowledge outside _backends/:\n" + "\n".join(found)


def test_the_checker_catches_library_knowledge() -> None:
    bad = ast.parse(
        "import sys\n"
        "def f(x):\n"
        "    import trio\n"
        "    if x.name == 'trio':\n"
        "        return sys.modules.get('asyncio')\n"
        "    return x in ('asyncio', 'other') or sys.modules['anyio']\n"
    )
    kinds = sorted(what for _, what in library_knowledge(bad))
    assert kinds == [
        "compares with a library name",
        "compares with a library name",
        "imports trio",
        "looks up 'anyio' in sys.modules",
        "looks up 'asyncio' in sys.modules",
    ]
    type_only = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import trio\n")
    assert not list(library_knowledge(type_only))


def test_modules_a_reader_can_hold() -> None:
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"
