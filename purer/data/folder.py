"""``folder``: any image tree ``<path>/{train,val,test}/<class>/<image>`` (bring your own dataset).

Every non-hidden file in a class folder is an image Pillow can read (JPEG, PNG, BMP, ...); images of
a class are taken in file-name order and class names are the folder names (sorted). Greyscale or
RGB: with ``channels`` null the dataset is greyscale (1 channel) if every image is greyscale (mode
``1``/``L``/``LA``/``I``/``F``), else RGB; a given ``channels`` converts every image. Images are
resized to a square of ``image_size`` (no crop). Normalisation defaults to the train split's own
per-channel mean/std.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from purer.config import DatasetConfig
from purer.data.cache import SplitData
from purer.data.images import GREY_MODES, ImageRef, decode_all, normalisation
from purer.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EXPECTED = "<path>/{train,val,test}/<class>/<image>"


def root_of(config: DatasetConfig) -> Path:
    """The dataset root; DataError if unset or missing."""
    if config.path is None:
        raise DataError(f"no `path` set: a folder dataset needs `path` pointing at {EXPECTED}")
    root = Path(config.path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder not found: {root} (expected {EXPECTED})")
    return root


def _visible(entries) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


def class_folders(root: Path, split: str) -> list[Path]:
    """The class folders of one split, sorted by name."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"split folder missing: {folder} (expected {EXPECTED})")
    classes = [p for p in _visible(folder.iterdir()) if p.is_dir()]
    if not classes:
        raise DataError(f"{folder} has no class folders (expected {EXPECTED})")
    return classes


def scan_split(root: Path, split: str) -> tuple[list[Path], torch.Tensor, tuple[str, ...]]:
    """Image files, labels int64 [N] and sorted class names of one split."""
    files: list[Path] = []
    labels: list[int] = []
    classes = class_folders(root, split)
    for label, folder in enumerate(classes):
        images = [p for p in _visible(folder.iterdir()) if p.is_file()]
        if not images:
            raise DataError(f"class folder {folder} has no images")
        files += images
        labels += [label] * len(images)
    return files, torch.tensor(labels, dtype=torch.int64), tuple(p.name for p in classes)


def image_mode(path: Path) -> str:
    """PIL mode of an image file from its header (no decoding); DataError if it is not an image."""
    try:
        with Image.open(path) as image:
            return image.mode
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None


def infer_channels(files: list[Path]) -> int:
    """1 if every image is greyscale, else 3."""
    return 1 if all(image_mode(p) in GREY_MODES for p in files) else 3


def build(config: DatasetConfig) -> dict[str, SplitData]:
    """Decode the three splits (see the module docstring)."""
    root = root_of(config)
    scanned = {split: scan_split(root, split) for split in SPLITS}
    channels = config.channels or infer_channels([f for files, _, _ in scanned.values() for f in files])
    decoded = {}
    for split, (files, labels, class_names) in scanned.items():
        refs = [ImageRef(str(p)) for p in files]
        decoded[split] = (decode_all(refs, channels, config.image_size, f"folder {split}"), labels, class_names)
        log.info("folder %s: %d images, %d classes, %d channel(s)", split, len(files), len(class_names), channels)
    mean, std = normalisation(decoded["train"][0], config.mean, config.std)
    return {split: SplitData(images, labels, names, mean, std) for split, (images, labels, names) in decoded.items()}


def count_train_classes(config: DatasetConfig) -> int:
    """Number of meta-train classes (sub-folders of ``<path>/train``), without reading images."""
    return len(class_folders(root_of(config), "train"))
