"""``folder``: any image tree ``<path>/{train,val,test}/<class>/<image>`` (bring your own dataset).

Every non-hidden file in a class folder is an image Pillow can read (JPEG, PNG, BMP, ...); images of
a class are taken in file-name order and class names are the folder names (sorted). Greyscale or
RGB: with ``channels`` null the dataset is greyscale (1 channel) if every image is greyscale (mode
``1``/``L``/``LA``/``I``/``F``), else RGB; a given ``channels`` converts every image. Images are
resized to a square of ``image_size`` (no crop); 16-bit greyscale is scaled to 8 bits. The splits
must not overlap: a class name in two splits is an error, and byte-identical image files in two
splits are reported with a warning. Normalisation defaults to the train split's own per-channel mean/std.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from purer.config import DatasetConfig
from purer.data.cache import SplitData
from purer.data.images import GREY_MODES, ImageRef, decode_all, normalisation, too_large_message
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
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.mode
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(too_large_message(str(path), exc)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None


def infer_channels(files: list[Path]) -> int:
    """1 if every image is greyscale, else 3."""
    return 1 if all(image_mode(p) in GREY_MODES for p in files) else 3


Scanned = dict[str, tuple[list[Path], torch.Tensor, tuple[str, ...]]]  # split -> scan_split's result


def check_disjoint_classes(root: Path, scanned: Scanned) -> None:
    """Raise DataError if a class name is in two splits (few-shot splits have disjoint classes)."""
    seen: dict[str, str] = {}
    for split, (_, _, class_names) in scanned.items():
        for name in class_names:
            if name in seen:
                raise DataError(
                    f"class {name!r} is in both {root / seen[name]} and {root / split}: "
                    "the splits must have disjoint classes"
                )
            seen[name] = split


def shared_images(scanned: Scanned) -> list[tuple[Path, Path]]:
    """Pairs of byte-identical image files in two different splits (first file, later file).

    Cheap: only files whose size occurs in two splits are read and hashed (SHA-256).
    """
    by_size: dict[int, list[tuple[str, Path]]] = {}
    for split, (files, _, _) in scanned.items():
        for path in files:
            by_size.setdefault(path.stat().st_size, []).append((split, path))
    pairs = []
    for candidates in by_size.values():
        if len({split for split, _ in candidates}) < 2:
            continue
        first: dict[str, tuple[str, Path]] = {}
        for split, path in candidates:
            other = first.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), (split, path))
            if other[0] != split:
                pairs.append((other[1], path))
    return sorted(pairs)


def warn_shared_images(scanned: Scanned) -> None:
    """Log a warning when splits share byte-identical images (a copied file; blank frames can match too)."""
    pairs = shared_images(scanned)
    if pairs:
        log.warning(
            "folder: %d image(s) appear in two splits with identical bytes, e.g. %s and %s: "
            "check that no image was copied into two splits",
            len(pairs),
            *pairs[0],
        )


def build(config: DatasetConfig) -> dict[str, SplitData]:
    """Decode the three splits (see the module docstring)."""
    root = root_of(config)
    scanned = {split: scan_split(root, split) for split in SPLITS}
    check_disjoint_classes(root, scanned)
    warn_shared_images(scanned)
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
