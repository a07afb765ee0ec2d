"""Tiny teachers and pools for the inversion tests (no checkpoints on disk)."""

from __future__ import annotations

from pathlib import Path

import torch

from purer.models.backbones import build_backbone
from purer.models.manifest import TeacherEntry
from purer.seeding import make_generator


def entry(
    index: int,
    classes: list[int],
    architecture: str = "conv4",
    image_size: int = 16,
    channels: int = 3,
    dataset: str = "toy",
    num_outputs: int = 3,
    arch_kwargs: dict | None = None,
) -> TeacherEntry:
    """A manifest entry whose checkpoint is never read."""
    mean = (0.5,) * channels
    std = (0.25,) * channels
    return TeacherEntry(
        index=index,
        architecture=architecture,
        arch_kwargs=dict(arch_kwargs if arch_kwargs is not None else ({"width": 4} if architecture == "conv4" else {})),
        checkpoint=Path(f"teacher_{index:02d}.pt"),
        dataset=dataset,
        classes=tuple(classes),
        local_classes=tuple(classes),
        num_outputs=num_outputs,
        image_size=image_size,
        channels=channels,
        mean=mean,
        std=std,
        val_accuracy=None,
    )


def teacher(e: TeacherEntry, seed: int = 0) -> torch.nn.Module:
    """A frozen eval-mode teacher with random weights and random BN running statistics."""
    with torch.random.fork_rng():
        torch.manual_seed(seed * 100 + e.index)
        model = build_backbone(e.architecture, e.num_outputs, e.channels, e.image_size, running_stats=True, **e.arch_kwargs)
    generator = make_generator(seed, "test-teacher", e.index)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(0.3 * torch.randn(c, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
            module.weight.data.copy_(1 + 0.1 * torch.randn(c, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(c, generator=generator))
    return model.eval().requires_grad_(False)


def loaded(entries: list[TeacherEntry], seed: int = 0) -> list[tuple[TeacherEntry, torch.nn.Module]]:
    """(entry, module) pairs as ``purer.models.manifest.load_pool`` returns them."""
    return [(e, teacher(e, seed)) for e in entries]


def conv4_pool_entries() -> list[TeacherEntry]:
    """Three 3-way conv4 teachers over 8 classes: the last block is short (2 classes)."""
    return [entry(0, [0, 1, 2]), entry(1, [3, 4, 5]), entry(2, [6, 7])]


def mixed_pool_entries() -> list[TeacherEntry]:
    """Conv4 and ResNet-10 teachers over two domains, 16 px grey and 20 px RGB, with a short block."""
    grey = {"image_size": 16, "channels": 1, "dataset": "grey"}
    rgb = {"image_size": 20, "channels": 3, "dataset": "rgb"}
    return [
        entry(0, [0, 1, 2], **grey),
        entry(1, [3, 4, 5], "resnet10", **grey),
        entry(2, [6, 7, 8], "resnet10", **grey),
        entry(3, [9, 10, 11], **grey),
        entry(4, [12, 13, 14], **rgb),
        entry(5, [15, 16], **rgb),
    ]
