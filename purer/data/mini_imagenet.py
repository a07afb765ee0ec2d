"""``mini-imagenet``: the Ravi & Larochelle few-shot split of ImageNet (64/16/20 classes x 600 images).

Accepted layouts (``path``):

* a folder with ``images/`` and ``train.csv``, ``val.csv``, ``test.csv`` (columns ``filename,label``),
  or a folder whose ``mini-imagenet/`` subfolder is one;
* the zip as distributed, read in place: the CSVs and ``images/`` may sit under any inner folder
  (e.g. ``mini-imagenet/train.csv``), found automatically.

Images are decoded once, converted to RGB (or greyscale when ``channels: 1``) and resized to a
square of ``image_size`` (plain antialiased bilinear resize, no crop; docs/method.md §1.4), in worker
processes. Labels (WordNet ids) are sorted per split; images keep CSV order, so each class's images
keep their CSV order. Normalisation defaults to the ImageNet mean/std.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import posixpath
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from purer.config import DatasetConfig
from purer.data.cache import SplitData
from purer.data.images import ImageRef, decode_all, normalisation, open_zip
from purer.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EXPECTED = (
    "a folder with images/ and train.csv, val.csv, test.csv (Ravi layout, columns filename,label), "
    "or the zip that contains them"
)


@dataclass(frozen=True)
class RaviLayout:
    """Where the CSVs and images are.

    Attributes:
        root: the folder, or the zip file.
        prefix: inside a zip, the folder holding the CSVs (``""`` or e.g. ``"mini-imagenet/"``).
        members: inside a zip, every member name (for existence checks); None for a folder.
    """

    root: Path
    prefix: str = ""
    members: frozenset[str] | None = None

    @property
    def is_zip(self) -> bool:
        return self.members is not None

    def describe(self, name: str) -> str:
        return f"{self.prefix + name!r} inside {self.root}" if self.is_zip else str(self.root / name)


def locate(path: str | None) -> RaviLayout:
    """Find the Ravi layout at ``path`` (folder or zip)."""
    if path is None:
        raise DataError(f"no `path` set: download mini-ImageNet and set `path` to {EXPECTED}")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"mini-ImageNet not found at {root}: expected {EXPECTED} there (or set `path` to where it is)")
    if root.is_dir():
        for folder in (root, root / "mini-imagenet"):
            if all((folder / f"{split}.csv").is_file() for split in SPLITS):
                return RaviLayout(folder)
        raise DataError(f"{root} has no train.csv, val.csv and test.csv: expected {EXPECTED}")
    return _locate_in_zip(root)


def _locate_in_zip(archive: Path) -> RaviLayout:
    try:
        members = frozenset(open_zip(archive).namelist())
    except DataError as exc:
        raise DataError(f"{exc}: expected {EXPECTED}") from None
    prefixes = sorted(
        (name[: -len("train.csv")] for name in members if name.endswith("train.csv")),
        key=lambda p: (p.count("/"), p),
    )
    for prefix in prefixes:
        if (prefix == "" or prefix.endswith("/")) and all(f"{prefix}{s}.csv" in members for s in SPLITS):
            return RaviLayout(archive, prefix, members)
    raise DataError(f"zip {archive} has no train.csv, val.csv and test.csv side by side: expected {EXPECTED}")


def read_text(layout: RaviLayout, name: str) -> str:
    """A text file of the layout (e.g. ``train.csv``), decoded as UTF-8."""
    try:
        if layout.is_zip:
            return open_zip(layout.root).read(layout.prefix + name).decode("utf-8-sig")
        return (layout.root / name).read_text(encoding="utf-8-sig")
    except (OSError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {layout.describe(name)}: {exc}") from None


def parse_csv(text: str, where: str) -> list[tuple[str, str]]:
    """``(filename, label)`` rows of a Ravi CSV, in file order.

    Raises:
        DataError: a wrong header, a malformed row, or no rows.
    """
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise DataError(f"{where}: expected the header 'filename,label', got {rows[0] if rows else 'an empty file'}")
    parsed = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{where} line {line}: expected 'filename,label', got {','.join(row)!r}")
        parsed.append((row[0].strip(), row[1].strip()))
    if not parsed:
        raise DataError(f"{where}: no images listed")
    return parsed


def read_split(layout: RaviLayout, split: str) -> list[tuple[str, str]]:
    """The rows of ``<split>.csv``."""
    return parse_csv(read_text(layout, f"{split}.csv"), layout.describe(f"{split}.csv"))


def image_refs(layout: RaviLayout, rows: list[tuple[str, str]], split: str) -> list[ImageRef]:
    """One :class:`ImageRef` per row; DataError naming the first row whose image is missing."""
    if layout.is_zip:
        names = [f"{layout.prefix}images/{filename}" for filename, _ in rows]
        present = layout.members
    else:
        folder = layout.root / "images"
        names = [str(folder / filename) for filename, _ in rows]
        present = {str(folder / f) for f in os.listdir(folder)} if folder.is_dir() else set()
    for (filename, label), name in zip(rows, names, strict=True):
        if name not in present:
            raise DataError(
                f"{layout.describe(split + '.csv')} lists {filename} (label {label}), but "
                f"{layout.describe('images/' + filename)} does not exist"
            )
    archive = str(layout.root) if layout.is_zip else None
    return [ImageRef(name, archive) for name in names]


def check_disjoint(tables: dict[str, list[tuple[str, str]]], layout: RaviLayout) -> None:
    """Raise DataError if a label appears in two splits (few-shot splits have disjoint classes)."""
    seen: dict[str, str] = {}
    for split, rows in tables.items():
        for label in sorted({label for _, label in rows}):
            if label in seen:
                raise DataError(
                    f"label {label} is in both {seen[label]}.csv and {split}.csv of {layout.root}: "
                    "the splits must have disjoint classes"
                )
            seen[label] = split


def check_disjoint_files(tables: dict[str, list[tuple[str, str]]], layout: RaviLayout) -> None:
    """Raise DataError if an image file is listed in two splits' CSVs (the same image in train and test)."""
    seen: dict[str, str] = {}
    for split, rows in tables.items():
        for filename, _ in rows:
            key = posixpath.normpath(filename.replace("\\", "/"))
            if key in seen and seen[key] != split:
                raise DataError(
                    f"{layout.describe('images/' + filename)} is listed in both {seen[key]}.csv and {split}.csv of "
                    f"{layout.root}: the splits must not share images"
                )
            seen.setdefault(key, split)


def build(config: DatasetConfig) -> dict[str, SplitData]:
    """Decode the three splits (see the module docstring)."""
    layout = locate(config.path)
    tables = {split: read_split(layout, split) for split in SPLITS}
    check_disjoint(tables, layout)
    check_disjoint_files(tables, layout)
    channels = config.channels or 3
    decoded = {}
    for split, rows in tables.items():
        refs = image_refs(layout, rows, split)
        class_names = tuple(sorted({label for _, label in rows}))
        index = {name: i for i, name in enumerate(class_names)}
        labels = torch.tensor([index[label] for _, label in rows], dtype=torch.int64)
        images = decode_all(refs, channels, config.image_size, f"mini-imagenet {split}")
        decoded[split] = (images, labels, class_names)
        log.info("mini-imagenet %s: %d images, %d classes", split, len(rows), len(class_names))
    mean, std = normalisation(decoded["train"][0], config.mean, config.std, native=(IMAGENET_MEAN, IMAGENET_STD))
    return {split: SplitData(images, labels, names, mean, std) for split, (images, labels, names) in decoded.items()}


def count_train_classes(config: DatasetConfig) -> int:
    """Number of meta-train classes (distinct labels in ``train.csv``), without decoding images."""
    return len({label for _, label in read_split(locate(config.path), "train")})
