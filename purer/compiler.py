"""``torch.compile`` with the project's kernel choices: every compiled graph goes through :func:`compile_graph`.

One choice so far, **native max-pooling on CPU**. TorchInductor rewrites ``max_pool2d`` with indices
(a "low-memory" offsets form) and its backward (a ``scatter_add``), and generates C++ kernels for
them that index memory indirectly and do not vectorise: in a compiled Conv4 data step on an AVX2
CPU the max-pool backward was the largest single item (about a third of the step,
benchmarks/README.md, "CPU without native bf16"). :func:`native_max_pool_on_cpu` makes inductor
call ATen's own CPU kernels for these two operators instead (the kernels eager mode runs, vectorised
and channels-last aware). The values are those of eager mode exactly; the graph's autograd is
unchanged (AOT autograd still differentiates ``max_pool2d_with_indices`` with ATen's formulas, so
second-order MAML through the pooling stays exact). On CUDA, inductor's own kernels stay.

The switch edits two of inductor's tables (decompositions and lowerings) for these operators only,
on CPU tensors only; it is applied once per process, before the first compilation. Inductor's on-disk
caches do not see such edits: a graph compiled and cached by a process without the switch (an older
purer, a benchmark of it) would be loaded as it was. So the switch also installs an empty
post-grad pass whose ``uuid`` (:data:`KERNEL_CHOICES`) enters every cache key. Where this torch does
not have those tables in the expected form, compilation goes on with inductor's defaults and a
warning says so (slower, same values).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)

# enters inductor's cache keys: graphs compiled with other kernel choices are not loaded
KERNEL_CHOICES = "purer-native-max-pool-1"

_STATE: dict[str, bool] = {}


def native_max_pool_on_cpu() -> bool:
    """Make inductor call ATen's CPU kernels for ``max_pool2d_with_indices`` and its backward
    (idempotent). Returns: whether the switch is in effect."""
    if "native_max_pool" in _STATE:
        return _STATE["native_max_pool"]
    try:
        import torch._inductor.config as inductor_config
        from torch._inductor import decomposition, lowering
        from torch._inductor.custom_graph_pass import CustomGraphPass

        aten = torch.ops.aten
        ops = (aten.max_pool2d_with_indices.default, aten.max_pool2d_with_indices_backward.default)
        tables = [(decomposition.decompositions[op], lowering.lowerings[op]) for op in ops]
        fallbacks = [lowering.fallback_handler(op, add_to_fallback_set=False) for op in ops]
    except (ImportError, AttributeError, KeyError, TypeError) as error:
        return _keep_inductor_kernels(f"this torch {torch.__version__} lacks the expected tables ({error})")
    if inductor_config.post_grad_custom_post_pass is not None:
        return _keep_inductor_kernels(
            f"inductor's post_grad_custom_post_pass is taken ({inductor_config.post_grad_custom_post_pass!r})")
    for op, (decompose, lower), fallback in zip(ops, tables, fallbacks, strict=True):
        decomposition.decompositions[op] = _unless_cpu_decomposition(decompose)
        lowering.lowerings[op] = _cpu_fallback_lowering(lower, fallback)
    inductor_config.post_grad_custom_post_pass = _cache_key_pass(CustomGraphPass)
    _STATE["native_max_pool"] = True
    logger.debug("compiled max-pooling calls ATen's CPU kernels")
    return True


def _keep_inductor_kernels(reason: str) -> bool:
    """Leave inductor's tables alone, say why once; returns False (the switch is not in effect)."""
    logger.warning("compiled max-pooling keeps inductor's own CPU kernels (slower, same values): %s", reason)
    _STATE["native_max_pool"] = False
    return False


def _cache_key_pass(base: type) -> Any:
    """A post-grad pass that changes nothing; its ``uuid`` keys inductor's caches by the kernel choices."""
    class KernelChoicesKey(base):  # type: ignore[misc, valid-type]
        def __call__(self, graph: torch.fx.Graph) -> None:
            return None

        def uuid(self) -> str:
            return KERNEL_CHOICES

    return KernelChoicesKey()


def _unless_cpu_decomposition(decompose: Callable[..., Any]) -> Callable[..., Any]:
    """The decomposition for non-CPU tensors; on CPU ``NotImplemented`` keeps the operator itself."""
    def decomposition(*args: Any, **kwargs: Any) -> Any:
        if args[0].device.type == "cpu":
            return NotImplemented
        return decompose(*args, **kwargs)

    return decomposition


def _cpu_fallback_lowering(lower: Callable[..., Any], fallback: Callable[..., Any]) -> Callable[..., Any]:
    """Inductor's lowering for non-CPU buffers; on CPU a call of the ATen kernel."""
    def lowering(*args: Any, **kwargs: Any) -> Any:
        if args[0].get_device().type == "cpu":
            return fallback(*args, **kwargs)
        return lower(*args, **kwargs)

    return lowering


def compile_graph(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile(fn, dynamic=False)`` after :func:`native_max_pool_on_cpu`: the project's one way
    to compile (static shapes: each shape of episode or batch gets its own graph)."""
    native_max_pool_on_cpu()
    return torch.compile(fn, dynamic=False)
