"""The cached split format every dataset source produces, and every later step reads.

One file per split: ``torch.save`` of a dict with ``images`` (uint8 [N, C, H, W]), ``labels``
(int64 [N], indices into ``class_names``), ``class_names`` (sorted), ``mean``/``std`` (per channel,
in [0, 1] units) and ``format``. Decoding happens once, in ``purer prepare``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from purer.errors import DataError
from purer.io import load_torch, save_torch

CACHE_FORMAT = "purer-split/1"


@dataclass(frozen=True)
class SplitData:
    """One decoded split.

    Attributes:
        images: uint8 [N, C, H, W].
        labels: int64 [N], class index into ``class_names``.
        class_names: sorted class names; index = local class id.
        mean, std: per-channel normalisation in [0, 1] pixel units.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def normalise(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 [..., C, H, W] -> float32 normalised with this split's mean/std."""
        mean = torch.tensor(self.mean, device=images_uint8.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=images_uint8.device).view(-1, 1, 1)
        return (images_uint8.float() / 255.0 - mean) / std

    def class_indices(self) -> list[torch.Tensor]:
        """For each class id, the sorted indices of its images."""
        order = torch.argsort(self.labels, stable=True)
        counts = torch.bincount(self.labels, minlength=self.n_classes).tolist()
        return list(torch.split(order, counts))


def save_split(path: str | Path, split: SplitData) -> None:
    """Atomically write a split in the cache format."""
    save_torch(
        path,
        {
            "format": CACHE_FORMAT,
            "images": split.images.contiguous(),
            "labels": split.labels.to(torch.int64),
            "class_names": list(split.class_names),
            "mean": list(split.mean),
            "std": list(split.std),
        },
    )


def load_split(path: str | Path) -> SplitData:
    """Read a cached split; one clear error if it is missing, truncated or not in the cache format."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"cached split not found: {path} (run `purer prepare` first)")
    raw = load_torch(path, "cached split", error=DataError, advice="; delete it and rerun `purer prepare`")
    if not isinstance(raw, dict) or raw.get("format") != CACHE_FORMAT:
        raise DataError(f"{path} is not a purer split cache (expected format {CACHE_FORMAT})")
    images, labels = raw["images"], raw["labels"]
    if images.dtype != torch.uint8 or images.ndim != 4 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{path}: expected uint8 images [N, C, H, W] and N labels")
    return SplitData(images, labels, tuple(raw["class_names"]), tuple(raw["mean"]), tuple(raw["std"]))
