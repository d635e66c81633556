"""Workloads: a user's model, written outside the repository, resolved from `--model SPEC` the way
the built-ins are, and held to the same invariants (accumulation equivalence, determinism)."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
import torch

from trainkit.engine.spec.config import ConfigError, RunConfig
from trainkit.engine.workloads.models import BUILTINS
from trainkit.engine.workloads.resolve import build_workload, model_choice, plugins, resolve
from trainkit.engine.workloads.workload import Workload, WorkloadError

from .conftest import REPO, flat_params, train

EXAMPLE = os.path.join(REPO, "examples", "my-workload")

USER_MODULE = '''
import torch
import torch.nn.functional as F
from torch import nn

from trainkit.engine.workloads import Workload


def batch(n, generator, device):
    x = torch.randn(n, 32, generator=generator, device=device)
    return x, (x[:, :8].sum(dim=1) > 0).long()


def tiny(width=64):
    return Workload(name="tiny", build=lambda: nn.Sequential(nn.Linear(32, width), nn.ReLU(), nn.Linear(width, 2)),
                    loss_fn=F.cross_entropy, make_batch=batch)


def tiny_bn():
    return Workload(name="tiny-bn", build=lambda: nn.Sequential(nn.Linear(32, 16), nn.BatchNorm1d(16),
                                                                 nn.Linear(16, 2)),
                    loss_fn=F.cross_entropy, make_batch=batch)


def named_gpt():
    return Workload(name="gpt", build=lambda: nn.Linear(32, 2), loss_fn=F.cross_entropy, make_batch=batch)


def not_a_workload():
    return nn.Linear(2, 2)


class EncoderClassifier(nn.Linear):
    pass


def an_encoder():
    return EncoderClassifier(2, 2)


def raises():
    raise RuntimeError("no GPU here")


def builds_badly():
    return Workload(name="badly", build=lambda: {}["width"], loss_fn=F.cross_entropy, make_batch=batch)


def wrong_batch():
    return Workload(name="wrong", build=lambda: nn.Linear(32, 2), loss_fn=F.cross_entropy,
                    make_batch=lambda n, g, d: torch.zeros(n, 32))
'''


def write_user_module(directory, name: str = "usermodels", text: str = USER_MODULE) -> str:
    path = os.path.join(directory, f"{name}.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A directory outside the repository holding the user's module, as the current directory."""
    assert not str(tmp_path).startswith(REPO)
    write_user_module(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("usermodels", None)


def user_config(spec: str, **changes: object) -> RunConfig:
    chosen = model_choice(spec)
    values: dict[str, object] = {"model": chosen.model, "workload": chosen.workload, "batch_size": 8, "steps": 3,
                                 "warmup_steps": 0, "device": "cpu", "lr": 0.1}
    values.update(changes)
    return RunConfig(**values)  # type: ignore[arg-type]


def test_the_built_in_models_are_workloads_registered_the_same_way():
    for name in BUILTINS:
        config = RunConfig(model=name, image_size=32 if name.startswith("resnet") else None)
        workload = build_workload(config)
        assert isinstance(workload, Workload) and workload.name == name and workload.source == "built-in"
        assert model_choice(name).workload is None
    assert build_workload(RunConfig(model="resnet18", image_size=32)).has_batchnorm
    assert build_workload(RunConfig(model="gpt")).target_shape == (64,)


def test_module_function_with_options_and_the_minimal_module_form(user_dir):
    workload = resolve("usermodels:tiny?width=16")
    assert (workload.name, workload.source, workload.has_batchnorm) == ("tiny", "module", False)
    assert workload.input_shape == (32,) and workload.target_shape == () and not workload.tokens
    assert sum(p.numel() for p in workload.build().parameters()) == 32 * 16 + 16 + 16 * 2 + 2
    assert resolve("usermodels:tiny_bn").has_batchnorm  # found in the module, not declared
    minimal = resolve(os.path.join(EXAMPLE, "tk_example", "minimal.py"))
    assert (minimal.name, minimal.input_shape) == ("tiny-regressor", (16,))
    chosen = model_choice("usermodels.py:tiny")
    assert chosen.model == "tiny" and chosen.workload == os.path.join(str(user_dir), "usermodels.py:tiny")


@pytest.mark.parametrize("spec, message", [
    ("nosuchmodule:fn", "no module named 'nosuchmodule' in the current directory"),
    ("nosuchmodule:fn", "give the file's path instead (--model path/to/nosuchmodule.py:FUNCTION), which works "
                        "from any directory"),
    ("usermodels:missing", "module 'usermodels' has no 'missing'"),
    ("usermodels:not_a_workload",
     "usermodels:not_a_workload() returned a Linear, not a trainkit.engine.workloads.Workload"),
    ("usermodels:an_encoder", "usermodels:an_encoder() returned an EncoderClassifier, not a trainkit"),
    ("usermodels:named_gpt", "named 'gpt', which is a built-in model's name"),
    ("usermodels:wrong_batch", "make_batch(2, ...) must return two tensors"),
    ("usermodels:tiny?depth=3", "usermodels:tiny(depth) failed"),
    ("usermodels", "usermodels.py does not define build, loss, batch (the minimal form), so it is not run; name "
                   "the function that returns your Workload: --model usermodels:FUNCTION"),
    ("gtp", "is not a built-in model (mlp, cnn, resnet18, resnet50, gpt), an installed plugin"),
    ("broken:fn", "module 'broken' does not import: ZeroDivisionError: division by zero (at broken.py:2)"),
    ("usermodels:raises", "usermodels:raises() failed: RuntimeError: no GPU here (at usermodels.py:"),
    ("usermodels:builds_badly", "build() failed: KeyError: 'width' (at usermodels.py:"),
])
def test_a_bad_spec_is_one_line_naming_what_is_wrong(user_dir, spec, message):
    write_user_module(user_dir, "broken", "import os\nx = 1 / 0\n")
    with pytest.raises(WorkloadError) as caught:
        resolve(spec)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_adapter_whose_library_is_missing_gives_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what an uninstalled package looks like to import
    monkeypatch.setitem(sys.modules, "timm", None)
    hint = r"needs transformers, which is not installed: pip install 'trainkit\[hf\]'"
    with pytest.raises(WorkloadError, match=hint):
        resolve("hf:llama?hidden_size=64")
    with pytest.raises(WorkloadError, match=r"pip install 'trainkit\[timm\]'"):
        resolve("timm:resnet18")


def write_dist_info(directory, dist: str, entry_points: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata finds one: a *.dist-info with its entry points."""
    info = os.path.join(directory, f"{dist.replace('-', '_')}-0.1.dist-info")
    os.makedirs(info)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write("[trainkit.workloads]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))


def example_entry_points() -> dict[str, str]:
    import tomllib

    with open(os.path.join(EXAMPLE, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]["entry-points"]["trainkit.workloads"]


def test_the_example_package_is_a_plugin_by_its_declared_entry_points(tmp_path, monkeypatch):
    write_dist_info(tmp_path, "tk-example-workload", example_entry_points())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(EXAMPLE)
    assert {"resmlp", "resmlp-bn"} <= set(plugins())
    resmlp, bn = resolve("resmlp"), resolve("resmlp-bn?width=32")
    assert (resmlp.name, resmlp.source, resmlp.has_batchnorm) == ("resmlp", "plugin", False)
    assert (bn.name, bn.has_batchnorm) == ("resmlp-bn", True)


def test_a_plugin_that_does_not_load_is_named_with_its_entry_point(tmp_path, monkeypatch):
    write_dist_info(tmp_path, "broken-plugin", {"brokenplug": "no_such_package.models:fn"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(WorkloadError, match=r"plugin 'brokenplug' \(no_such_package.models:fn\) does not load"):
        resolve("brokenplug")


def test_a_config_never_gives_a_workload_a_built_in_name_or_real_data():
    with pytest.raises(ConfigError, match="is a built-in model's name"):
        RunConfig(model="gpt", workload="usermodels:tiny")
    with pytest.raises(ConfigError, match="is not a workload name"):
        RunConfig(model="my model", workload="usermodels:tiny")
    with pytest.raises(ConfigError, match="model='tiny' is not valid"):
        RunConfig(model="tiny")
    with pytest.raises(ConfigError, match="reads synthetic data"):
        RunConfig(model="tiny", workload="usermodels:tiny", data="mnist", data_root="/tmp")
    assert RunConfig(model="tiny", workload="usermodels:tiny").cell_id == "tiny-fp32-bs64-ga1-gpus1"


def test_a_renamed_workload_is_not_mistaken_for_the_config_s(user_dir):
    with pytest.raises(WorkloadError, match="is now named 'tiny', not 'old-name'"):
        build_workload(RunConfig(model="old-name", workload="usermodels:tiny"))


def test_a_user_workload_passes_the_built_ins_invariants(user_dir):
    """tests/test_equivalence.py's: batch 8 x accum 4 == batch 32 x accum 1, and the same seed
    gives the same run."""
    accumulated = train(user_config("usermodels:tiny", batch_size=8, grad_accum=4, steps=12))
    whole = train(user_config("usermodels:tiny", batch_size=32, grad_accum=1, steps=12))
    torch.testing.assert_close(accumulated.loss_curve(), whole.loss_curve(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(flat_params(accumulated), flat_params(whole), rtol=1e-5, atol=1e-7)
    curve = accumulated.loss_curve()
    assert curve[-3:].mean() < curve[:3].mean() - 0.02  # it does learn
    again = train(user_config("usermodels:tiny", batch_size=8, grad_accum=4, steps=12))
    assert torch.equal(again.loss_curve(), accumulated.loss_curve())


def test_batchnorm_makes_accumulation_inexact_and_the_workload_says_so(user_dir):
    accumulated = train(user_config("usermodels:tiny_bn", batch_size=8, grad_accum=4, steps=3))
    whole = train(user_config("usermodels:tiny_bn", batch_size=32, grad_accum=1, steps=3))
    assert accumulated.workload.has_batchnorm
    assert not torch.allclose(flat_params(accumulated), flat_params(whole), rtol=1e-5, atol=1e-7)


def test_a_workload_s_own_data_set_is_read_in_epochs(monkeypatch):
    monkeypatch.syspath_prepend(EXAMPLE)
    config = user_config("tk_example.workloads:resmlp", data="workload", epochs=2, batch_size=100, grad_accum=2)
    trainer = train(config)
    # 1024 samples, a fifth (204) held out for the eval loss: 820 in windows of 200, the last one short.
    assert trainer.data.steps_per_epoch == 5 and trainer.step_samples == [200, 200, 200, 200, 20] * 2
    assert trainer.data.eval_set[0].shape == (204, 64) and trainer.evaluate() > 0
    with pytest.raises(WorkloadError, match="has no data set"):
        train(user_config("tk_example.minimal", data="workload", epochs=1))


def test_a_bare_name_runs_only_a_module_of_the_minimal_form(user_dir):
    """`--model setup` must not run setup.py (nor let its SystemExit out): a bare name is a module of
    the minimal form, read before it is run; MODULE:FUNCTION and a .py path are what run user code."""
    write_user_module(user_dir, "setup", "import pathlib\npathlib.Path('ran').touch()\nraise SystemExit('setup ran')\n")
    with pytest.raises(WorkloadError, match=r"setup.py does not define build, loss, batch .*--model setup:FUNCTION"):
        resolve("setup")
    assert not (user_dir / "ran").exists() and "setup" not in sys.modules
    # Named with a function, the module does run: its SystemExit is one line, never an exit.
    with pytest.raises(WorkloadError, match=r"module 'setup' does not import: SystemExit: exit status setup ran "
                                            r"\(at setup.py:3\)"):
        resolve("setup:workload")
    sys.modules.pop("setup", None)


def test_a_user_file_never_replaces_a_module_of_the_standard_library(user_dir):
    path = write_user_module(user_dir, "json", USER_MODULE)
    import json

    assert resolve(f"{path}:tiny").name == "tiny"
    assert sys.modules["json"] is json and hasattr(sys.modules["json"], "dumps")


CONSTANT_MODULE = '''
import torch
import torch.nn.functional as F
from torch import nn

from trainkit.engine.workloads import Workload

OFFSET = torch.linspace(-1, 1, 16)  # made outside build(): a meta-device build cannot combine it


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(OFFSET * 0.1 + torch.zeros(16))
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(x + self.bias + OFFSET)


def batch(n, generator, device):
    x = torch.randn(n, 16, generator=generator, device=device)
    return x, (x[:, 0] > 0).long()


def net():
    return Workload(name="net", build=Net, loss_fn=F.cross_entropy, make_batch=batch)
'''


def test_a_build_that_cannot_run_on_the_meta_device_is_built_for_real(user_dir):
    path = write_user_module(user_dir, "constants", CONSTANT_MODULE)
    workload = resolve(f"{path}:net")
    assert workload.has_batchnorm is False
    trainer = train(user_config(f"{path}:net", steps=1))
    assert torch.isfinite(trainer.loss_curve()).all()
