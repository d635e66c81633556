"""The layers the folders show, held against every import the code makes.

    applications   trainkit/commands (trainkit), trainkit/nightly (trainkit-nightly), trainkit/bench
         |         (the matrix's pytest plugin); the checkout's reports/, nightly/ and bench/ call them.
         |         No application imports another: what two share is the library's.
         |
    trainkit/reports    tables, pages, verdicts and history from records and documents
         |
    trainkit/analysis   pure analyses over records: the plan search, the parity statistics
         |
    trainkit/engine     what a run is, how it trains and how it is measured

A module may import its own layer and the layers below it, never one above. Imports inside
functions and under `if TYPE_CHECKING:` count too: a deferred import is still a dependency.

Inside the engine the same rule holds between its rooms, from the ground up:

    cluster     cells as cluster jobs (SLURM, submitit)
    cell        one cell run: launcher, worker, protocol, failure board, record, profile passes
    estimate    what a run would cost before it runs; the checks of a workload
    train       the loop, precision policies, main gradients, FP8, compile, checkpointing
    measure     instruments: timing, memory, NVML, FLOPs, conditions, environment, CPUs
    workloads   what is trained: the Workload type, built-in models, resolver, adapters, data
    spec        what a run is: config, options, axes, choices, precision facts, schema (no torch)
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
    "trainkit.nightly": 3,
    "trainkit.bench": 3,
    "reports": 3,
    "trainkit.__main__": 3,
    "nightly": 3,
    "bench": 3,
}


# The engine's rooms, from the ground up: a room may import its own modules and the rooms below it.
ROOMS = ("spec", "workloads", "measure", "train", "estimate", "cell", "cluster")
MAX_MODULES_PER_FOLDER = 15


def room_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["trainkit", "engine"] or len(parts) < 3:
        return None
    return ROOMS.index(parts[2]) if parts[2] in ROOMS else None


def rooms_crossed(graph: dict[str, set[str]]) -> list[str]:
    """Every import from an engine room into a room above it, as 'module -> target'."""
    crossed = []
    for module, targets in graph.items():
        own = room_of(module)
        if own is not None:
            crossed += [f"{module} -> {t}" for t in sorted(targets) if (room_of(t) or 0) > own]
    return crossed


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


APPLICATIONS = ("trainkit.commands", "trainkit.nightly", "trainkit.bench", "reports", "nightly", "bench")


def application_of(module: str) -> str | None:
    return next((app for app in APPLICATIONS if module == app or module.startswith(app + ".")), None)


def apps_crossed(graph: dict[str, set[str]]) -> list[str]:
    """Every import from one application into another, as 'module -> target'. The checkout's thin
    folders (reports/, nightly/, bench/) may call the package's application they stand for."""
    stands_for = {"reports": "trainkit.reports", "nightly": "trainkit.nightly", "bench": "trainkit.bench"}
    crossed = []
    for module, targets in graph.items():
        own = application_of(module)
        if own is None:
            continue
        for target in sorted(targets):
            app = application_of(target)
            if app not in (None, own, stands_for.get(own)):
                crossed.append(f"{module} -> {target}")
    return crossed


def test_no_application_imports_another(graph):
    assert apps_crossed(graph) == []


def test_the_check_sees_an_application_importing_another(graph):
    # nightly once read bench's presets: that import is caught.
    cli = "trainkit.nightly.cli"
    planted = {**graph, cli: graph[cli] | {"trainkit.bench.matrix"}}
    assert apps_crossed(planted) == ["trainkit.nightly.cli -> trainkit.bench.matrix"]


def test_no_import_cycle(graph):
    # Package faces (__init__) hand names on; a cycle through one is still a cycle.
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the loop


def test_the_check_sees_a_planted_upward_import(tmp_path, graph):
    # The rule above is only worth something if it can fail: an engine module importing the
    # reports is caught.
    loop = "trainkit.engine.train.loop"
    planted = {**graph, loop: graph[loop] | {"trainkit.reports.build"}}
    own = layer_of(loop)
    assert [t for t in planted[loop] if (layer_of(t) or 0) > own] == ["trainkit.reports.build"]
    config = "trainkit.engine.spec.config"
    cyclic = {**graph, config: graph[config] | {loop}}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(cyclic).prepare()


def test_every_engine_module_stands_in_a_room(graph):
    loose = [m for m in graph if m.startswith("trainkit.engine.") and room_of(m) is None]
    assert loose == []
    assert {m.split(".")[2] for m in graph if room_of(m) is not None} == set(ROOMS)


def test_no_room_imports_a_room_above_it(graph):
    assert rooms_crossed(graph) == []


def test_the_check_sees_a_planted_import_across_rooms(graph):
    # Only worth something if it can fail: the config (spec, the ground floor) importing the
    # training loop, and a measuring instrument importing the worker, are each caught.
    config, timing = "trainkit.engine.spec.config", "trainkit.engine.measure.timing"
    planted = {**graph, config: graph[config] | {"trainkit.engine.train.loop"},
               timing: graph[timing] | {"trainkit.engine.cell.worker"}}
    assert sorted(rooms_crossed(planted)) == ["trainkit.engine.measure.timing -> trainkit.engine.cell.worker",
                                      "trainkit.engine.spec.config -> trainkit.engine.train.loop"]


def test_the_spec_room_imports_no_torch():
    # bench collects its matrix and the command lines parse their options from spec alone: torch
    # there would cost every one of them seconds.
    heavy = []
    for path in sorted((ROOT / "trainkit/engine/spec").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            heavy += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("torch", "numpy")]
    assert heavy == []


def test_no_folder_holds_more_than_15_modules():
    # A folder is a room a reader can take in at a glance; past 15 modules it wants rooms of its own.
    crowded = {}
    for package in PACKAGES:
        for folder in [ROOT / package, *(p for p in (ROOT / package).rglob("*") if p.is_dir())]:
            modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
            skipped = "examples" in folder.parts or "__pycache__" in folder.parts
            if not skipped and len(modules) > MAX_MODULES_PER_FOLDER:
                crowded[str(folder.relative_to(ROOT))] = len(modules)
    assert crowded == {}
