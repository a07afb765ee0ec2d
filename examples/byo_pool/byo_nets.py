"""A custom teacher architecture for the bring-your-own-pool example (examples/byo_pool/README.md).

The config names this factory under ``custom_architectures`` (``small_conv: "byo_nets:make_small_conv"``);
the pool manifest only says ``architecture: small_conv``.
"""

from __future__ import annotations

import torch
from torch import nn

from purer.models.backbones import RecordingBatchNorm2d


class SmallConv(nn.Module):
    """Two [3x3 conv -> BN -> ReLU -> 2x2 max-pool] blocks, global average pool, linear head.

    Args of forward: x [B, C, H, W] (normalised). Returns: logits [B, num_classes].
    """

    def __init__(self, num_classes: int, in_channels: int, width: int, running_stats: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(2):
            # RecordingBatchNorm2d is nn.BatchNorm2d that also reports its input statistics to the
            # inversion's BatchNorm-matching loss (a plain nn.BatchNorm2d gives that loss nothing).
            layers += [nn.Conv2d(channels, width, 3, padding=1), RecordingBatchNorm2d(width, track_running_stats=running_stats),
                       nn.ReLU(), nn.MaxPool2d(2)]
            channels = width
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=(2, 3)))


def make_small_conv(
    num_classes: int, in_channels: int, image_size: int, running_stats: bool, width: int = 16
) -> nn.Module:
    """The factory: purer calls it as it calls its built-in backbones.

    ``image_size`` is unused (global pooling); ``width`` comes from the manifest's ``arch_kwargs``.
    """
    del image_size
    return SmallConv(num_classes, in_channels, width, running_stats)
