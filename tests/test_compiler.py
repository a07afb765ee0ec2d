"""purer.compiler: compiled max-pooling runs ATen's CPU kernels, with the eager values and gradients."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.func import functional_call

from purer import compiler
from purer.models.backbones import Conv4


def test_compiled_max_pool_calls_the_aten_cpu_kernels(monkeypatch, tmp_path):
    """Without the switch inductor replaces both operators (no ATen call in the profile). An empty
    compile cache: a graph cached by a process without the switch would hide it."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = Conv4(num_classes=5, image_size=16, width=8, running_stats=False)
    params = dict(model.named_parameters())
    x = torch.randn(10, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    y = torch.arange(10) % 5

    def image_gradient(params: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.func.grad(lambda image: F.cross_entropy(functional_call(model, params, image), y))(x)

    compiled = compiler.compile_graph(image_gradient)
    compiled(params, x)
    with torch.profiler.profile() as profile:
        compiled(params, x)
    names = {event.name for event in profile.events()}
    assert {"aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward"} <= names
    torch.testing.assert_close(compiled(params, x), image_gradient(params, x), rtol=1e-5, atol=1e-6)


def test_second_order_maml_through_compiled_pooling_equals_eager(monkeypatch, tmp_path):
    """The outer gradient of a one-step MAML episode (inner ``torch.func.grad``, as the meta step does)
    differentiates through the pooling backward: compiled and eager agree in float64."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16, 5)).double()
    params = dict(model.named_parameters())
    x = torch.randn(10, 3, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y = torch.arange(10) % 5

    def query_loss(params: dict) -> torch.Tensor:
        inner = torch.func.grad(lambda p: F.cross_entropy(functional_call(model, p, x[:5]), y[:5]))(params)
        fast = {name: p - 0.5 * inner[name] for name, p in params.items()}
        return F.cross_entropy(functional_call(model, fast, x[5:]), y[5:])

    eager = torch.autograd.grad(query_loss(params), list(params.values()))
    compiled = torch.autograd.grad(compiler.compile_graph(query_loss)(params), list(params.values()))
    assert compiler.native_max_pool_on_cpu()  # the switched path is the one compared
    for name, a, b in zip(params, eager, compiled, strict=True):
        assert a.abs().max() > 0, name
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=name)


def test_other_devices_keep_inductor_kernels():
    calls = []
    decomposition = compiler._unless_cpu_decomposition(lambda *args: calls.append("decomposed") or "graph")
    lowering = compiler._cpu_fallback_lowering(lambda *args: "inductor", lambda *args: "aten")
    cuda = SimpleNamespace(device=torch.device("cuda"), get_device=lambda: torch.device("cuda"))
    cpu = SimpleNamespace(device=torch.device("cpu"), get_device=lambda: torch.device("cpu"))
    assert decomposition(cuda, 2) == "graph" and calls == ["decomposed"]
    assert decomposition(cpu, 2) is NotImplemented and calls == ["decomposed"]
    assert lowering(cuda) == "inductor" and lowering(cpu) == "aten"


def test_missing_tables_leave_inductor_defaults_with_a_warning(monkeypatch, caplog):
    import torch._inductor.decomposition as decomposition

    monkeypatch.setattr(compiler, "_STATE", {})
    monkeypatch.setattr(decomposition, "decompositions", {})
    with caplog.at_level(logging.WARNING, logger="purer.compiler"):
        assert compiler.native_max_pool_on_cpu() is False
    assert "keeps inductor's own CPU kernels" in caplog.text


_CACHED_GRAPH = """
import sys, torch, torch.nn.functional as F
from purer import compiler
torch.manual_seed(0)
weight, x = torch.randn(4, 3, 3, 3), torch.randn(6, 3, 8, 8).contiguous(memory_format=torch.channels_last)
def image_gradient(weight, x):
    return torch.func.grad(lambda image: F.max_pool2d(F.conv2d(image, weight, padding=1), 2).square().sum())(x)
compiled = compiler.compile_graph(image_gradient) if sys.argv[1] == "switch" else torch.compile(image_gradient)
compiled(weight, x)
with torch.profiler.profile() as profile:
    compiled(weight, x)
print(sorted({e.name for e in profile.events() if e.name.startswith("aten::max_pool2d")}))
"""


def test_a_graph_cached_without_the_switch_is_not_reused(tmp_path):
    """Same function, same shapes, one shared compile cache: the process without the switch fills
    it first; the process with the switch must still reach ATen's kernels (its cache key differs)."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}
    script = tmp_path / "graph.py"
    script.write_text(_CACHED_GRAPH)

    def run(mode: str) -> str:
        done = subprocess.run([sys.executable, str(script), mode], env=env, capture_output=True, text=True,
                              timeout=600, check=True)
        return done.stdout.strip().splitlines()[-1]

    assert run("plain") == "[]"
    assert run("switch") == "['aten::max_pool2d_with_indices', 'aten::max_pool2d_with_indices_backward']"


def test_a_taken_post_grad_pass_leaves_inductor_defaults_with_a_warning(monkeypatch, caplog):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(compiler, "_STATE", {})
    with inductor_config.patch(post_grad_custom_post_pass=object()), \
            caplog.at_level(logging.WARNING, logger="purer.compiler"):
        assert compiler.native_max_pool_on_cpu() is False
    assert "post_grad_custom_post_pass is taken" in caplog.text
