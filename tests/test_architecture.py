"""The code's shape as the README draws it: layers that import one way, no import circles, short modules.

Layers, top to bottom: entry points (``jobs.entry``) -> lifecycle stages (one package per command) -> models (what
travels with a trained model) -> platform. A module imports only from its own layer or the ones below, inline
imports included; stages import each other only along the edges listed here, so a new one is a decision.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

JOBS = Path(__file__).resolve().parents[1] / "jobs"
STAGES = ("ingest", "validation", "features", "training", "scoring", "monitoring", "promotion", "lineage", "backtest")
LAYER = {"entry": 3, **dict.fromkeys(STAGES, 2), "models": 1, "platform": 0}
# stage -> the other stages it may import (what it reads of theirs)
STAGE_EDGES = {
    "validation": {"ingest", "features"},  # the landed raw file; which features a re-validation made stale
    "training": {"features"},  # the freshness check before a window is trained
    "lineage": {"ingest"},  # the raw file a bronze row came from
    "promotion": {"monitoring"},  # the shadow weeks a challenger won
    "monitoring": {"validation"},  # the service page: the months landed, their verdicts and Data Docs pages
    # the operating loop replayed: the jobs the DAGs run, in calendar order
    "backtest": {"ingest", "validation", "features", "scoring", "monitoring", "training"},
}
MAX_MODULE_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(JOBS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``jobs.*`` module ``path`` imports, at the top or inline (``from jobs.x import y`` counts ``jobs.x.y``
    when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import (the layers read better with absolute ones)")
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jobs"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("jobs"))
    return found - {"jobs"}


MODULES = {_module_name(p): p for p in JOBS.rglob("*.py")}


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_belongs_to_a_layer():
    assert {_area(m) for m in MODULES if m != "jobs"} == set(LAYER)


def test_imports_run_downward_and_stages_import_only_listed_stages():
    wrong = []
    for module, path in MODULES.items():
        if module == "jobs":
            continue
        src = _area(module)
        for target in _imports(path):
            dst = _area(target)
            if LAYER[dst] > LAYER[src]:
                wrong.append(f"{module} -> {target} (up from {src} to {dst})")
            elif LAYER[src] == 2 and dst != src and LAYER[dst] == 2 and dst not in STAGE_EDGES.get(src, set()):
                wrong.append(f"{module} -> {target} (stage {src} reads stage {dst}: not in STAGE_EDGES)")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = {m: {t for t in _imports(p) if t in MODULES} for m, p in MODULES.items()}
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_modules_stay_short():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_scoring_and_monitoring_never_reach_training():
    """Serving a model needs what travels with it (jobs.models), not how it was trained."""
    reach = [
        f"{m} -> {t}"
        for m, p in MODULES.items()
        if _area(m) in ("scoring", "monitoring")
        for t in _imports(p)
        if _area(t) == "training"
    ]
    assert not reach, reach


def test_every_registry_write_goes_through_the_registry_module():
    writes = ("set_registered_model_alias", "delete_registered_model_alias", "set_model_version_tag", "register_model")
    found = [
        f"{m}: {w}"
        for m, p in MODULES.items()
        if m != "jobs.models.registry"
        for w in writes
        if f".{w}(" in p.read_text()
    ]
    assert not found, found


def test_no_function_runs_long_or_takes_many_parameters():
    """A job's run() reads as its steps: no function over 80 lines or 8 parameters."""
    too_long, too_wide = [], []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if node.end_lineno - node.lineno + 1 > 80:
                    too_long.append(f"{module}.{node.name}")
                if len(node.args.args) + len(node.args.kwonlyargs) > 8:
                    too_wide.append(f"{module}.{node.name}")
    assert not too_long and not too_wide, (too_long, too_wide)
