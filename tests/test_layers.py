"""Imports only run downward, read from the source (function-level imports included, since
a cycle hidden inside a function is still a cycle):

    utilities (errors, paths, registry, checkpoint, _optional, senolab/__init__)
      < cohorts < radiomics < models < fusion, adaptation < pretrain < engine < federated
      < runners < cli

evaluation, explain and tracking stand beside the stack: they never import the engine,
the runners or the command line, and nothing below the engine imports them. The
sub-packages' import graph has no cycle.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "senolab"
RANK = {name: 0 for name in ("__init__", "errors", "paths", "registry", "checkpoint", "_optional")}
RANK |= {"cohorts": 1, "radiomics": 2, "models": 3, "fusion": 4, "adaptation": 4, "pretrain": 5, "engine": 6,
         "federated": 7, "runners": 8, "cli": 9}
BESIDE = {"evaluation", "explain", "tracking"}  # between fusion/adaptation and the engine


def unit(path: Path) -> str:
    """The sub-package (or top-level module) a source file belongs to."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def imported_units(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "senolab" else ["senolab.__init__"]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {name.split(".")[1] for name in names if name.startswith("senolab.")}
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        source = unit(path)
        graph[source] |= imported_units(path) - {source}
    return graph


def test_every_unit_has_a_place():
    units = {unit(p) for p in PACKAGE.rglob("*.py")}
    assert units <= set(RANK) | BESIDE, f"give these a layer: {sorted(units - set(RANK) - BESIDE)}"


def test_imports_only_run_downward():
    wrong = []
    for source, targets in import_graph().items():
        for target in targets:
            if source in BESIDE:
                ok = target in BESIDE or RANK.get(target, 99) < RANK["engine"]
            elif target in BESIDE:
                ok = RANK[source] >= RANK["engine"]
            else:  # utilities may use each other (the cycle test keeps that acyclic)
                ok = RANK[target] < RANK[source] or RANK[target] == RANK[source] == 0
            if not ok:
                wrong.append(f"{source} imports {target}")
    assert not wrong, wrong


def test_no_import_cycle_between_sub_packages():
    graph = import_graph()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    cycles = sorted(source for source in graph if reaches(source, source, {source}))
    assert not cycles, f"sub-packages on an import cycle: {cycles}"


def test_the_check_sees_a_violation(tmp_path):
    """The reader finds function-level imports too (a test that cannot fail is no test)."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from senolab.runners.study import run_study\n")
    assert imported_units(module) == {"runners"}
