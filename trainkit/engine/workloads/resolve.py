"""`--model SPEC`: from a spec to a Workload, the same way in every command and in the worker.

A spec is one of (tried in this order):

- a built-in model: mlp, cnn, resnet18, resnet50, gpt;
- `hf:TARGET?key=value&...` or `timm:NAME?key=value&...`: an adapter (trainkit.engine.workloads.adapters);
- `MODULE:FUNCTION?key=value&...`: FUNCTION(**keys) returns a Workload (or FUNCTION is one);
  MODULE may be a .py file's path (`models/mine.py:workload`);
- the name of an installed plugin: an entry point of the group `trainkit.workloads` whose object
  is such a function (or a module of the minimal form below);
- `MODULE` (or a .py file's path): the minimal form, a module with `build()`, `loss(output, target)` and
  `batch(batch_size, generator, device)`, and optionally NAME, HAS_BATCHNORM, FLOPS_PER_SAMPLE,
  NUM_CLASSES, TOKENS_PER_SAMPLE, CHECKPOINT_BLOCKS and `dataset()`. A bare name runs a module only
  when its source defines those three functions (read first, not run): `--model setup` is no reason
  to run setup.py.

Modules import from the environment or from the current directory (put last on sys.path, in the
worker too, so a user's file never hides the standard library); a .py file is loaded under its
stem unless that would replace a module already loaded or a standard one (a user's json.py). Values
after `?` are Python literals where they parse as one (64, 1e-5, True), else strings. Whatever the
user's code raises while it is imported, called or built (SystemExit included) is one WorkloadError
line naming their file and line. A run's config keeps the workload's name in `model` (cell ids,
report groups) and the spec in `workload`, which the worker resolves again.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..spec.config import RunConfig
from . import adapters
from .models import BUILTINS, build_builtin
from .workload import PROBE_SAMPLES, Workload, WorkloadError, describe_error, split_query

ENTRY_POINT_GROUP = "trainkit.workloads"
MINIMAL_FORM = ("build", "loss", "batch")
"""What a module must define to be a workload by itself (`--model MODULE`)."""


def plugins() -> dict[str, metadata.EntryPoint]:
    """The installed plugins: entry points of the group trainkit.workloads, by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _find_source(module_name: str) -> str | None:
    """The source file a bare module name would import, found without running it (None: none)."""
    _add_current_directory()
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    return found.origin if found is not None and found.origin and found.origin.endswith(".py") else None


def _defines_minimal_form(path: str) -> list[str]:
    """Which of the minimal form's functions a module's source defines at its top level (read,
    not run: a bare name must not run a module that is not a workload, such as setup.py)."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return []
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return [name for name in MINIMAL_FORM if name in names]


def _module_name_for(path: str) -> str:
    """The name a .py file is registered under in sys.modules: its stem, unless that would replace
    a module already imported or one of the standard library (a user's json.py must not)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    registered = sys.modules.get(stem)
    if stem in sys.stdlib_module_names or (registered is not None and
                                           getattr(registered, "__file__", None) != os.path.abspath(path)):
        return f"trainkit_workload_{stem}"
    return stem


def _run_module(loader_spec: Any, name: str, spec: str, where: str) -> ModuleType:
    module = importlib.util.module_from_spec(loader_spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        loader_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # anything the user's module raises is a bad spec, in one line
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        raise WorkloadError(f"--model {spec!r}: {where} does not import: {describe_error(exc)}") from None
    return module


def _import_file(path: str, spec: str) -> ModuleType:
    """A module from a .py file (`--model path/to/mymodel.py:FUNCTION`)."""
    if not os.path.isfile(path):
        raise WorkloadError(f"--model {spec!r}: {path!r} is not a file")
    name = _module_name_for(path)
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == os.path.abspath(path):
        return sys.modules[name]
    loader_spec = importlib.util.spec_from_file_location(name, os.path.abspath(path))
    assert loader_spec is not None and loader_spec.loader is not None
    return _run_module(loader_spec, name, spec, repr(path))


def _add_current_directory() -> None:
    # `python -m trainkit` puts the current directory on sys.path, a fork server's child may not
    # (it has the path the server started with): the worker must find what the command found. It
    # goes last, so a user's file never shadows the standard library or an installed package.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())


def _not_found(spec: str, module_name: str) -> WorkloadError:
    return WorkloadError(
        f"--model {spec!r}: no module named {module_name!r} in the current directory ({os.getcwd()}) or the "
        f"environment; give the file's path instead (--model path/to/{module_name.replace('.', '/')}.py:FUNCTION), "
        "which works from any directory, or run from the module's directory")


def _import(module_name: str, spec: str, bare: bool) -> ModuleType:
    """The module of a spec. A bare name (`--model NAME`, no function) is run only when its source
    defines the minimal form: any other module named so is not a workload, and is not run."""
    if module_name.endswith(".py"):
        if bare and not _defines_minimal_form(module_name) and os.path.isfile(module_name):
            raise _bare_error(spec, module_name, module_name)
        return _import_file(module_name, spec)
    _add_current_directory()
    if bare:
        loaded = sys.modules.get(module_name)
        source = getattr(loaded, "__file__", None) if loaded is not None else _find_source(module_name)
        if source is None:
            raise WorkloadError(f"--model {spec!r} is not a built-in model ({', '.join(BUILTINS)}), an installed "
                                f"plugin ({', '.join(plugins()) or 'none'}), an adapter (hf:..., timm:...) nor an "
                                f"importable module (no module named {module_name!r} in {os.getcwd()} or the "
                                "environment)")
        if len(_defines_minimal_form(source)) < len(MINIMAL_FORM):
            raise _bare_error(spec, module_name, source)
    try:
        return importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # anything the user's module raises is a bad spec, in one line
        if isinstance(exc, ModuleNotFoundError) and exc.name == module_name:
            raise _not_found(spec, module_name) from None
        raise WorkloadError(f"--model {spec!r}: module {module_name!r} does not import: "
                            f"{describe_error(exc)}") from None


def _bare_error(spec: str, module_name: str, source: str) -> WorkloadError:
    return WorkloadError(f"--model {spec!r}: {os.path.basename(source)} does not define "
                         f"{', '.join(MINIMAL_FORM)} (the minimal form), so it is not run; name the function "
                         f"that returns your Workload: --model {module_name}:FUNCTION")


def _from_object(obj: Any, params: dict[str, Any], spec: str, what: str) -> Workload:
    """A Workload from what a spec points at: a Workload, a function returning one, or a module of
    the minimal form."""
    if isinstance(obj, ModuleType):
        if params:
            raise WorkloadError(f"--model {spec!r}: a module of the minimal form takes no ?key=value options")
        return _from_module(obj, spec)
    if isinstance(obj, Workload):
        return obj
    if not callable(obj):
        raise WorkloadError(f"--model {spec!r}: {what} is a {type(obj).__name__}, not a function returning a Workload")
    try:
        result = obj(**params)
    except (Exception, SystemExit) as exc:  # anything the user's function raises is a bad spec, in one line
        raise WorkloadError(f"--model {spec!r}: {what}({', '.join(params)}) failed: {describe_error(exc)}") from None
    if not isinstance(result, Workload):
        raise WorkloadError(f"--model {spec!r}: {what}() returned {_article(type(result).__name__)}, not a "
                            "trainkit.engine.workloads.Workload")
    return result


def _article(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _from_module(module: ModuleType, spec: str) -> Workload:
    missing = [name for name in MINIMAL_FORM if not callable(getattr(module, name, None))]
    if missing:
        raise WorkloadError(f"--model {spec!r}: module {module.__name__!r} is not a workload: it lacks "
                            f"{', '.join(missing)} (the minimal form defines {', '.join(MINIMAL_FORM)})")
    return Workload(name=getattr(module, "NAME", module.__name__.rpartition(".")[2]), build=module.build,
                    loss_fn=module.loss, make_batch=module.batch, dataset=getattr(module, "dataset", None),
                    has_batchnorm=getattr(module, "HAS_BATCHNORM", None),
                    flops_per_sample=getattr(module, "FLOPS_PER_SAMPLE", None),
                    num_classes=getattr(module, "NUM_CLASSES", None),
                    tokens_per_sample=getattr(module, "TOKENS_PER_SAMPLE", None),
                    checkpoint_blocks=getattr(module, "CHECKPOINT_BLOCKS", None))


def _user(spec: str) -> Workload:
    target, params = split_query(spec)
    plugin = plugins().get(target)
    if plugin is not None:
        try:
            obj = plugin.load()
        except (Exception, SystemExit) as exc:  # a broken plugin is a bad spec, named with its entry point
            raise WorkloadError(f"--model {spec!r}: plugin {target!r} ({plugin.value}) does not load: "
                                f"{describe_error(exc)}") from None
        return dataclasses.replace(_from_object(obj, params, spec, plugin.value), source="plugin")
    module_name, colon, attr = target.partition(":")
    if not module_name or (colon and not attr):
        raise WorkloadError(f"--model {spec!r} is not a workload spec: write a built-in model "
                            f"({', '.join(BUILTINS)}), MODULE:FUNCTION, MODULE, a plugin's name, hf:... or timm:...")
    module = _import(module_name, spec, bare=not colon)
    if not colon:
        return _from_object(module, params, spec, module_name)
    if not hasattr(module, attr):
        raise WorkloadError(f"--model {spec!r}: module {module_name!r} has no {attr!r}")
    return _from_object(getattr(module, attr), params, spec, f"{module_name}:{attr}")


def _finish(workload: Workload, spec: str) -> Workload:
    """Checks every resolved non-built-in workload passes, and has_batchnorm made definite."""
    if workload.name in BUILTINS:
        raise WorkloadError(f"--model {spec!r}: its workload is named {workload.name!r}, which is a built-in "
                            "model's name; give it another")
    if workload.has_batchnorm is None:
        module = _build_to_look(workload, spec)
        if not isinstance(module, nn.Module):
            raise WorkloadError(f"--model {spec!r}: build() returned {_article(type(module).__name__)}, not a "
                                "torch.nn.Module")
        workload = dataclasses.replace(workload, has_batchnorm=workload.batchnorm_in(module))
    try:
        workload.probe  # noqa: B018 - make_batch's contract, checked once, here, in one line
    except WorkloadError:
        raise
    except (Exception, SystemExit) as exc:  # anything the user's make_batch raises, in one line
        raise WorkloadError(f"--model {spec!r}: make_batch({PROBE_SAMPLES}, ...) failed: "
                            f"{describe_error(exc)}") from None
    return workload


def _build_to_look(workload: Workload, spec: str) -> nn.Module:
    """The built module, to look at its layers: on the meta device (shapes only: no memory, no
    initialisation cost) where it builds there, else for real on the CPU (a build that combines a
    tensor made outside it, a module-level constant, cannot run on the meta device)."""
    try:
        with torch.device("meta"):
            return workload.build()
    except Exception:  # noqa: BLE001 - any failure on the meta device: the real build says what is wrong
        pass
    try:
        return workload.build()
    except (Exception, SystemExit) as exc:  # anything the user's build raises, in one line
        raise WorkloadError(f"--model {spec!r}: build() failed: {describe_error(exc)}") from None


def resolve(spec: str, config: RunConfig | None = None) -> Workload:
    """The workload a spec names; WorkloadError (one line) when it cannot be had. `config` gives the
    adapters and built-ins their run's shapes (sequence length, image size, task seed)."""
    config = config if config is not None else RunConfig()
    if spec in BUILTINS:
        return build_builtin(config.replace(model=spec, workload=None))
    adapter = adapters.ADAPTERS.get(spec.partition(":")[0])
    workload = adapter.build(spec, config) if adapter is not None else _user(spec)
    return _finish(workload, spec)


@dataclass(frozen=True)
class ModelChoice:
    """What `--model SPEC` sets in a run's config: the workload's name and, unless built in, the spec."""

    model: str
    workload: str | None


def model_choice(spec: str) -> ModelChoice:
    """The config fields of `--model SPEC`, after resolving it here (so a bad spec fails before any
    cell starts); WorkloadError (one line) when it cannot be had. A .py file's path is made
    absolute: workers may start elsewhere."""
    if spec in BUILTINS:
        return ModelChoice(spec, None)
    target, question, query = spec.partition("?")
    module_name, colon, attr = target.partition(":")
    if module_name.endswith(".py") and not module_name.startswith(tuple(adapters.ADAPTERS)):
        spec = f"{os.path.abspath(module_name)}{colon}{attr}{question}{query}"
    return ModelChoice(resolve(spec).name, spec)


def workload_dataset(workload: Workload) -> Dataset:
    """The workload's own data set (`--data workload`), or WorkloadError saying it has none."""
    if workload.dataset is None:
        raise WorkloadError(f"data=workload: workload {workload.name!r} has no data set (its dataset is None); "
                            "use data=synthetic")
    return workload.dataset()


def build_workload(config: RunConfig, num_classes: int = 10) -> Workload:
    """The workload of a run: its built-in model, or its spec resolved (in the worker, too)."""
    if config.workload is None:
        return build_builtin(config, num_classes)
    workload = resolve(config.workload, config)
    if workload.name != config.model:
        raise WorkloadError(f"workload {config.workload!r} is now named {workload.name!r}, not {config.model!r} "
                            "as in this config: re-run the command with --model to take the new name")
    return workload
