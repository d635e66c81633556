"""The layers the folders show, held against every import the code makes.

    applications   trainkit/commands (python -m trainkit), reports/ (python -m reports), nightly/,
         |         bench/ (nightly reads bench's presets)
         |
    trainkit/reports    tables, pages, verdicts and history from records and documents
         |
    trainkit/analysis   pure analyses over records: the plan search, the parity statistics
         |
    trainkit/engine     what a run is, how it trains and how it is measured

A module may import its own layer and the layers below it, never one above. Imports inside
functions and under `if TYPE_CHECKING:` count too: a deferred import is still a dependency.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainkit", "reports", "nightly", "bench")

# Layer of a module, by the longest matching prefix; a higher number stands higher.
LAYERS = {
    "trainkit.engine": 0,
    "trainkit.analysis": 1,
    "trainkit.reports": 2,
    "trainkit.commands": 3,
    "reports": 3,
    "trainkit.__main__": 3,
    "nightly": 3,
    "bench": 3,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "examples" not in path.parts:
                modules[module_name(path)] = path
    return modules


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `module` imports, relative imports resolved, `from pkg import mod` as pkg.mod."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            # A module's own packages are initialised before it by Python itself: importing a
            # sibling through them (`from . import cells`) is no dependency on their faces.
            if target and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def test_every_module_has_a_layer(graph):
    assert [m for m in graph if layer_of(m) is None and m not in PACKAGES + ("trainkit",)] == []


def test_no_module_imports_a_layer_above_its_own(graph):
    upward = []
    for module, targets in graph.items():
        own = layer_of(module)
        if own is None:
            continue
        upward += [f"{module} -> {t}" for t in targets if (layer_of(t) or 0) > own]
    assert upward == []


def test_the_engine_imports_no_report_and_no_application(graph):
    engine = {m: t for m, t in graph.items() if m.startswith("trainkit.engine")}
    assert len(engine) > 10
    above = {m: sorted(t for t in targets if not t.startswith("trainkit.engine")) for m, targets in engine.items()}
    assert {m: t for m, t in above.items() if t} == {}


def test_no_import_cycle(graph):
    # Package faces (__init__) hand names on; a cycle through one is still a cycle.
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the loop


def test_the_check_sees_a_planted_upward_import(tmp_path, graph):
    # The rule above is only worth something if it can fail: an engine module importing the
    # reports is caught.
    planted = {**graph, "trainkit.engine.loop": graph["trainkit.engine.loop"] | {"trainkit.reports.build"}}
    own = layer_of("trainkit.engine.loop")
    assert [t for t in planted["trainkit.engine.loop"] if (layer_of(t) or 0) > own] == ["trainkit.reports.build"]
    cyclic = {**graph, "trainkit.engine.config": graph["trainkit.engine.config"] | {"trainkit.engine.loop"}}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(cyclic).prepare()
