"""The house's rules, read from the sources: no import circles, and dependencies point one way.

fleet (cli, fleet_*, report, hostdata...) -> deploys / operations / facts (and run, the pyinfra
helpers they share; templates) -> firmware / printer / data -> nothing of ours. The virtual farm (sim) may use the product, never
the other way round (the CLI's ``sim`` and ``demo`` commands load it). Imports inside functions
count too: a circle hidden in a function is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the top-level pyinfra folders are installed as pyinfra_ratos.<folder> (setup.py)
FOLDERS = {"deploys": "deploys", "facts": "facts", "operations": "operations", "inventory": "inventory",
           "templates": "templates"}
CORE = ("pyinfra_ratos.firmware", "pyinfra_ratos.printer", "pyinfra_ratos.data")
PYINFRA_SIDE = ("pyinfra_ratos.deploys", "pyinfra_ratos.operations", "pyinfra_ratos.facts", "pyinfra_ratos.run",
                "pyinfra_ratos.templates")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] in FOLDERS:
        parts = ["pyinfra_ratos", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sources() -> dict[str, Path]:
    found = {}
    for top in ("pyinfra_ratos", *FOLDERS):
        for path in (ROOT / top).rglob("*.py"):
            if "klipper_tree" in path.parts or "__pycache__" in path.parts:
                continue  # the virtual Pi's mini-Klipper is a Klipper checkout, not our package
            found[module_name(path)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ours that ``name`` imports, anywhere in its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:
            target = target.rsplit(".", 1)[0] if "." in target else ""
        if target and target != name:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found


def graph() -> dict[str, set[str]]:
    found = sources()
    known = set(found)
    return {name: imports(name, path, known) for name, path in found.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle (as the strongly connected groups of more than one module, or a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_no_import_circles_anywhere() -> None:
    assert circles(graph()) == []


def test_the_core_imports_nothing_above_it() -> None:
    wrong = {name: sorted(t for t in targets if not t.startswith(CORE))
             for name, targets in graph().items() if name.startswith(CORE)}
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_the_pyinfra_side_never_imports_the_fleet_or_the_farm() -> None:
    allowed = CORE + PYINFRA_SIDE
    wrong = {name: sorted(t for t in targets if not t.startswith(allowed))
             for name, targets in graph().items() if name.startswith(PYINFRA_SIDE)}
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_the_product_never_imports_the_virtual_farm_but_from_the_cli() -> None:
    wrong = {name: sorted(t for t in targets if t.startswith("pyinfra_ratos.sim"))
             for name, targets in graph().items()
             if not name.startswith("pyinfra_ratos.sim") and name != "pyinfra_ratos.fleet.cli"}
    assert {name: targets for name, targets in wrong.items() if targets} == {}


def test_a_circle_added_back_is_caught() -> None:
    edges = {name: set(targets) for name, targets in graph().items()}
    edges["pyinfra_ratos.firmware.catalog"].add("pyinfra_ratos.firmware.builder")
    assert any("pyinfra_ratos.firmware.catalog" in group for group in circles(edges))


@pytest.mark.parametrize("room", ["firmware", "printer", "data", "run", "sim"])
def test_every_room_says_what_it_owns_and_may_import(room: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / "pyinfra_ratos" / room / "__init__.py").read_text()))
    assert doc and "import" in doc
