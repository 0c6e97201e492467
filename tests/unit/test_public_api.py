"""The public surface is exactly ``stream_monitor.__all__``, and the pure core stays pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stream_monitor

pytestmark = pytest.mark.unit

PACKAGE = Path(stream_monitor.__file__).parent


def test_all_names_exist_and_are_sorted() -> None:
    assert sorted(stream_monitor.__all__) == list(stream_monitor.__all__)
    for name in stream_monitor.__all__:
        assert hasattr(stream_monitor, name), name


def test_importing_the_package_does_not_load_faust_or_kafka() -> None:
    import subprocess
    import sys

    code = (
        "import stream_monitor, sys; "
        "print(sorted(m for m in ('faust', 'confluent_kafka', 'redis') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "path", sorted((PACKAGE / "core").rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE / "core"))
)
def test_core_imports_only_the_standard_library_numpy_and_river(path: Path) -> None:
    allowed_third_party = {"numpy", "river", "orjson"}
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            assert top in allowed_third_party or top == "stream_monitor" or top in _stdlib(), (
                f"{path.name}: {name}"
            )
            if top == "stream_monitor":
                assert name.startswith("stream_monitor.core"), f"{path.name} imports {name} outside core"


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names) | {"__future__"}


def _runtime_core_imports(path: Path) -> set[str]:
    """The stream_monitor.core modules ``path`` imports when it runs (at module level or lazily in a
    function), leaving out imports made only for type checkers."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stream_monitor.core"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("stream_monitor.core"))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def test_the_core_import_graph_has_no_cycle() -> None:
    """A cycle (even through a lazy import inside a function) means two modules are one idea split in
    two; the shared part belongs in a module both can import."""
    graph: dict[str, set[str]] = {}
    for path in (PACKAGE / "core").rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[name] = _runtime_core_imports(path)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], module, dep] if dep in path else [module, dep])
            elif dep not in state:
                walk(dep, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [])
    assert cycles == []
