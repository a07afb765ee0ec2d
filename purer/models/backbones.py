"""Backbones: Conv4, ResNet-10 and ResNet-18 for any input size and channel count (docs/method.md §1.3).

Every backbone exposes ``features(x) -> [B, D]`` and a linear ``head``; ``forward = head(features)``.
Teachers keep BatchNorm running statistics (the inversion matches them); the meta model is built
with ``running_stats=False`` so its BatchNorm always normalises with the current batch (as in the
reference MAML code, transductive at test time).

BatchNorm layers are :class:`RecordingBatchNorm2d`: inside :func:`record_bn_stats` they append the
per-channel mean and biased variance of their *input* to a list. This works under
``torch.func.functional_call`` and ``torch.func.vmap`` (where forward hooks cannot be used), which
is how the batched inversion loss gets its BatchNorm statistics explicitly.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from purer.errors import ConfigError

_STATS_SINKS: list[list[BNStats]] = []  # a stack: the innermost record_bn_stats block collects


@dataclass(frozen=True)
class BNStats:
    """Statistics of one BatchNorm input: batch mean/var [C] and the layer's running mean/var [C]."""

    mean: torch.Tensor
    var: torch.Tensor
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None


@contextlib.contextmanager
def record_bn_stats() -> Iterator[list[BNStats]]:
    """Collect a :class:`BNStats` per BatchNorm layer, in forward order, for forwards in the block.

    The sinks are a plain module-level stack (not a ``ContextVar``) so that ``torch.compile``
    traces the recording without a graph break.
    """
    sink: list[BNStats] = []
    _STATS_SINKS.append(sink)
    try:
        yield sink
    finally:
        _STATS_SINKS.pop()


class ChannelStats(torch.autograd.Function):
    """Per-channel mean and biased variance of x [B, C, H, W] over (B, H, W), with a fused backward.

    Same values as ``x.mean((0, 2, 3))`` and ``x.var((0, 2, 3), unbiased=False)`` (two-pass, on
    rows [B·H·W, C]: a view in channels-last memory), but autograd's generic backward of that pair
    makes four passes over x; this one makes one:
    dL/dx = g_mean / n + g_var · 2 (x − mean) / n, with n = B·H·W.
    Works under ``torch.func.vmap`` (generated rule) and ``torch.compile``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        mean = rows.mean(dim=0)
        return mean, (rows - mean).square().mean(dim=0)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - autograd signature
        ctx.save_for_backward(inputs[0], output[0])

    @staticmethod
    def backward(ctx, grad_mean: torch.Tensor, grad_var: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        x, mean = ctx.saved_tensors
        n, shape = x.numel() // x.shape[1], (1, -1, 1, 1)
        deviation = x - mean.view(shape)
        return torch.addcmul((grad_mean / n).view(shape), deviation, (grad_var * (2.0 / n)).view(shape))


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean [C], biased variance [C]) of x [B, C, H, W] in fp32, differentiable."""
    return ChannelStats.apply(x.float())


class RecordingBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that reports its input statistics inside :func:`record_bn_stats`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _STATS_SINKS:
            mean, var = channel_stats(x)
            _STATS_SINKS[-1].append(BNStats(mean, var, self.running_mean, self.running_var))
        return super().forward(x)


def _bn(channels: int, running_stats: bool) -> RecordingBatchNorm2d:
    return RecordingBatchNorm2d(channels, track_running_stats=running_stats)


class Backbone(nn.Module):
    """Base class: ``features`` then a linear ``head``."""

    feature_dim: int
    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        """Args: x [B, C, H, W]. Returns: logits [B, num_classes], or features [B, D] if asked.

        ``return_features`` lets ``torch.func.functional_call`` reach the feature extractor
        (ProtoNet, ANIL, ICFIL) without a second module.
        """
        features = self.features(x)
        return features if return_features else self.head(features)


class Conv4(Backbone):
    """Four [3x3 conv (bias) -> BN -> ReLU -> 2x2 max-pool] blocks, flatten, linear.

    With 32 filters (PURER) the head input is 32*(s//16)^2: 128 at 32 px, 800 at 84 px.
    ``adaptive_pool=True`` adds a global max-pool before the head (any input size; MH pools).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 32,
        width: int = 32,
        running_stats: bool = True,
        adaptive_pool: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(4):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=True),
                _bn(width, running_stats),
                nn.ReLU(inplace=False),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.encoder = nn.Sequential(*layers)
        self.adaptive_pool = adaptive_pool
        side = image_size
        for _ in range(4):
            side //= 2
        if not adaptive_pool and side < 1:
            raise ConfigError(f"conv4 needs image_size >= 16 (got {image_size}); use adaptive_pool")
        self.feature_dim = width if adaptive_pool else width * side * side
        self.head = nn.Linear(self.feature_dim, num_classes)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x)
        if self.adaptive_pool:
            h = torch.amax(h, dim=(2, 3))
        return h.flatten(1)


class BasicBlock(nn.Module):
    """ResNet basic block; 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, running_stats: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(out_channels, running_stats)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = _bn(out_channels, running_stats)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                _bn(out_channels, running_stats),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(Backbone):
    """CloserLook-style ResNet: 3x3 stem (64, stride 1) + BN, four stages [64,128,256,512], GAP, linear."""

    def __init__(
        self,
        num_classes: int,
        blocks_per_stage: tuple[int, int, int, int],
        in_channels: int = 3,
        image_size: int = 32,
        running_stats: bool = True,
        **_: object,
    ) -> None:
        super().__init__()
        del image_size  # global average pooling makes the head size-independent
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, padding=1, bias=False), _bn(64, running_stats))
        stages: list[nn.Module] = []
        channels = 64
        for stage, width in enumerate((64, 128, 256, 512)):
            for block in range(blocks_per_stage[stage]):
                stride = 2 if stage > 0 and block == 0 else 1
                stages.append(BasicBlock(channels, width, stride, running_stats))
                channels = width
        self.stages = nn.Sequential(*stages)
        self.feature_dim = channels
        self.head = nn.Linear(channels, num_classes)
        _init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


def _init_weights(model: nn.Module) -> None:
    """Fan-out He-normal convs, BN gamma=1 beta=0 (as the reference network.py)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            n = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            module.weight.data.normal_(0, math.sqrt(2.0 / n))
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()


def _conv4(num_classes: int, in_channels: int, image_size: int, running_stats: bool, width: int = 32, **kw):
    return Conv4(num_classes, in_channels, image_size, width, running_stats, kw.get("adaptive_pool", False))


def _resnet10(num_classes: int, in_channels: int, image_size: int, running_stats: bool, **_):
    return ResNet(num_classes, (1, 1, 1, 1), in_channels, image_size, running_stats)


def _resnet18(num_classes: int, in_channels: int, image_size: int, running_stats: bool, **_):
    return ResNet(num_classes, (2, 2, 2, 2), in_channels, image_size, running_stats)


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "conv4": _conv4,
    "resnet10": _resnet10,
    "resnet18": _resnet18,
}


def architecture_registry(custom: Mapping[str, str] | None = None) -> dict[str, Callable[..., nn.Module]]:
    """:data:`BACKBONES` plus the config's ``custom_architectures`` (name -> ``"module:callable"``).

    The factories are imported here, from names the user wrote in the config they run (like a
    Snakefile); a manifest or checkpoint only refers to architecture *names*, so no data file
    causes an import. A factory is called as the built-ins are:
    ``factory(num_classes, in_channels, image_size, running_stats, **arch_kwargs) -> nn.Module``
    (examples/byo_pool/README.md, "The factory's contract").

    Raises:
        ConfigError: a name that shadows a built-in, a module that cannot be imported, or a
            missing or non-callable attribute, naming the ``custom_architectures`` key.
    """
    registry: dict[str, Callable[..., nn.Module]] = dict(BACKBONES)
    for name, target in (custom or {}).items():
        where = f"custom_architectures.{name}"
        if name in BACKBONES:
            raise ConfigError(f"{where}: {name!r} is a built-in architecture; choose another name")
        module_name, _, attribute = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"{where}: cannot import module {module_name!r} ({exc}); is its folder on PYTHONPATH?") from None
        factory = getattr(module, attribute, None)
        if not callable(factory):
            raise ConfigError(f"{where}: module {module_name!r} has no callable {attribute!r}")
        registry[name] = factory
    return registry


def build_backbone(
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    running_stats: bool = True,
    registry: Mapping[str, Callable[..., nn.Module]] | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build a backbone by registry name.

    Args:
        name: one of :data:`BACKBONES`, or of ``registry`` when given.
        num_classes: logits of the head.
        in_channels: 1 (grey) or 3 (RGB).
        image_size: square input side (Conv4 sizes its head from it).
        running_stats: True for teachers, False for the meta model (batch statistics only).
        registry: architectures by name (default :data:`BACKBONES`; see :func:`architecture_registry`).
        **kwargs: ``width`` and ``adaptive_pool`` for Conv4; a custom factory's own arguments.

    Raises:
        ConfigError: an unknown name (listing the known ones), or a factory that did not return
            an ``nn.Module``.
    """
    registry = BACKBONES if registry is None else registry
    if name not in registry:
        raise ConfigError(f"unknown architecture {name!r} (valid: {sorted(registry)})")
    model = registry[name](num_classes, in_channels, image_size, running_stats, **kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"architecture {name!r}: the factory returned {type(model).__name__}, expected an nn.Module")
    return model
