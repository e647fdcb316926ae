"""The package layout: imports run one way, top to bottom, and the front doors know only their wire.

    ds01cli -> ds01d -> {gateway, authz_plugin} -> policy -> allocator -> formats

Every module's imports (lazy and ``TYPE_CHECKING`` ones included) are read with ``ast``, so a
new arrow running back up fails here, naming the module and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Higher rank = higher layer; a package may import only packages of a lower rank (or config).
RANK = {
    "ds01cli": 5,
    "ds01d": 4,
    "gateway": 3,
    "authz_plugin": 3,
    "policy": 2,
    "allocator": 1,
    "formats": 0,
}
# Data files only (the default policy, the schema): anyone may read them.
SHARED = {"config"}
FRONT_DOORS = {"gateway", "authz_plugin"}


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path``, relative ones resolved."""
    module, is_package = _module_name(path)
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def _edges() -> list[tuple[str, str, str]]:
    """(importing package, imported package, 'file:line imports X') between DS01's packages."""
    edges = []
    for package in RANK:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, name in _imported(path):
                target = name.split(".")[0]
                if target in RANK and target != package:
                    where = f"{path.relative_to(ROOT)}:{line} imports {name}"
                    edges.append((package, target, where))
    return edges


EDGES = _edges()


def test_the_layout_has_every_package() -> None:
    """The check reads real files: every package of the layout exists and has imports to check."""
    for package in RANK:
        assert (ROOT / package / "__init__.py").is_file(), package
    assert {(a, b) for a, b, _ in EDGES} >= {("ds01d", "policy"), ("policy", "allocator")}


def test_no_import_runs_back_up() -> None:
    """A package imports only packages below it."""
    upward = [where for src, dst, where in EDGES if RANK[dst] >= RANK[src]]
    assert upward == [], "imports against the layout order:\n" + "\n".join(upward)


@pytest.mark.parametrize("door", sorted(FRONT_DOORS))
def test_front_doors_know_only_their_wire(door: str) -> None:
    """gateway/ and authz_plugin/ import nothing of DS01's but the value formats."""
    wrong = [where for src, dst, where in EDGES if src == door and dst not in {"formats"} | SHARED]
    assert wrong == [], f"{door} imports DS01 internals:\n" + "\n".join(wrong)


def test_no_cycle_between_packages() -> None:
    """The package graph is acyclic (checked on its own, not only through the ranks)."""
    graph: dict[str, set[str]] = {package: set() for package in RANK}
    for src, dst, _ in EDGES:
        graph[src].add(dst)
    done: set[str] = set()

    def visit(package: str, path: tuple[str, ...]) -> None:
        assert package not in path, "import cycle: " + " -> ".join([*path, package])
        if package in done:
            return
        for target in sorted(graph[package]):
            visit(target, (*path, package))
        done.add(package)

    for package in sorted(graph):
        visit(package, ())


def test_the_checker_sees_relative_and_lazy_imports() -> None:
    """``_imported`` resolves ``from .x import y`` and finds imports inside functions."""
    relative = {name for _, name in _imported(ROOT / "allocator" / "ledger.py")}
    assert "allocator.inventory" in relative
    lazy = {name for _, name in _imported(ROOT / "ds01cli" / "cli.py")}
    assert "ds01cli.doctor" in lazy
