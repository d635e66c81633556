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
  NUM_CLASSES, TOKENS_PER_SAMPLE and `dataset()`.

Modules import from the current directory (it is put on sys.path, in the worker too) or from the
environment. Values after `?` are Python literals where they parse as one (64, 1e-5, True), else
strings. A run's config keeps the workload's name in `model` (cell ids, report groups) and the spec
in `workload`, which the worker resolves again.
"""

from __future__ import annotations

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
from .models import BUILTINS, build_spec
from .workload import Workload, WorkloadError, split_query

ENTRY_POINT_GROUP = "trainkit.workloads"
MINIMAL_FORM = ("build", "loss", "batch")
"""What a module must define to be a workload by itself (`--model MODULE`)."""


def plugins() -> dict[str, metadata.EntryPoint]:
    """The installed plugins: entry points of the group trainkit.workloads, by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _import_file(path: str, spec: str) -> ModuleType:
    """A module from a .py file (`--model path/to/mymodel.py:FUNCTION`), under the file's stem."""
    name = os.path.splitext(os.path.basename(path))[0]
    if not os.path.isfile(path):
        raise WorkloadError(f"--model {spec!r}: {path!r} is not a file")
    loader_spec = importlib.util.spec_from_file_location(name, path)
    assert loader_spec is not None and loader_spec.loader is not None
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        loader_spec.loader.exec_module(module)
    except Exception as exc:  # any import-time error of the user's file is a bad spec
        del sys.modules[name]
        first = (str(exc).strip().splitlines() or [""])[0]
        raise WorkloadError(f"--model {spec!r}: {path!r} does not import: {type(exc).__name__}: {first}") from None
    return module


def _import(module_name: str, spec: str) -> ModuleType:
    if module_name.endswith(".py"):
        return _import_file(module_name, spec)
    # `python -m trainkit` puts the current directory on sys.path, a fork server's child may not
    # (it has the path the server started with): the worker must find what the command found.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name and ":" not in spec.partition("?")[0]:  # a bare name: a typo of a model's?
            raise WorkloadError(f"--model {spec!r} is not a built-in model ({', '.join(BUILTINS)}), an installed "
                                f"plugin ({', '.join(plugins()) or 'none'}), an adapter (hf:..., timm:...) nor an "
                                f"importable module (No module named {module_name!r})") from None
        raise WorkloadError(f"--model {spec!r}: module {module_name!r} does not import: "
                            f"ModuleNotFoundError: {exc}") from None
    except Exception as exc:  # any import-time error of the user's module is a bad spec
        first = (str(exc).strip().splitlines() or [""])[0]
        raise WorkloadError(f"--model {spec!r}: module {module_name!r} does not import: "
                            f"{type(exc).__name__}: {first}") from None


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
    except TypeError as exc:
        raise WorkloadError(f"--model {spec!r}: {what}({', '.join(params)}) failed: {exc}") from None
    if not isinstance(result, Workload):
        raise WorkloadError(f"--model {spec!r}: {what}() returned a {type(result).__name__}, not a "
                            "trainkit.engine.workloads.Workload")
    return result


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
                    tokens_per_sample=getattr(module, "TOKENS_PER_SAMPLE", None))


def _user(spec: str) -> Workload:
    target, params = split_query(spec)
    plugin = plugins().get(target)
    if plugin is not None:
        try:
            obj = plugin.load()
        except Exception as exc:  # a broken plugin is a bad spec, named with its entry point
            first = (str(exc).strip().splitlines() or [""])[0]
            raise WorkloadError(f"--model {spec!r}: plugin {target!r} ({plugin.value}) does not load: "
                                f"{type(exc).__name__}: {first}") from None
        return dataclasses.replace(_from_object(obj, params, spec, plugin.value), source="plugin")
    module_name, colon, attr = target.partition(":")
    if not module_name or (colon and not attr):
        raise WorkloadError(f"--model {spec!r} is not a workload spec: write a built-in model "
                            f"({', '.join(BUILTINS)}), MODULE:FUNCTION, MODULE, a plugin's name, hf:... or timm:...")
    module = _import(module_name, spec)
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
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            module = workload.build()
        if not isinstance(module, nn.Module):
            raise WorkloadError(f"--model {spec!r}: build() returned a {type(module).__name__}, not a torch.nn.Module")
        workload = dataclasses.replace(workload, has_batchnorm=workload.batchnorm_in(module))
    workload.probe  # noqa: B018 - make_batch's contract, checked once, here, in one line
    return workload


def resolve(spec: str, config: RunConfig | None = None) -> Workload:
    """The workload a spec names; WorkloadError (one line) when it cannot be had. `config` gives the
    adapters and built-ins their run's shapes (sequence length, image size, task seed)."""
    config = config if config is not None else RunConfig()
    if spec in BUILTINS:
        return build_spec(config.replace(model=spec, workload=None))
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
        return build_spec(config, num_classes)
    workload = resolve(config.workload, config)
    if workload.name != config.model:
        raise WorkloadError(f"workload {config.workload!r} is now named {workload.name!r}, not {config.model!r} "
                            "as in this config: re-run the command with --model to take the new name")
    return workload
