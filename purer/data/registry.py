"""The dataset registry and ``purer prepare``'s library side: build each split once and cache it.

``DATASETS`` maps a source name (``DatasetConfig.source``) to its builder
``build(config: DatasetConfig) -> dict[str, SplitData]``. :func:`prepare_dataset` writes the three
cached splits and, last, a ``dataset.json`` beside them recording the dataset config they were
built from (without ``path``/``download``, which say where the data came from, not what it is).
Existing caches are reused when that record matches the current config and rebuilt otherwise.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from purer.config import DatasetConfig, ExperimentConfig, to_dict
from purer.data import cifar_fs, folder, glyphs, mini_imagenet
from purer.data.cache import SplitData, save_split
from purer.errors import ConfigError, DataError
from purer.io import load_torch, write_json
from purer.paths import SPLITS, dataset_cache

log = logging.getLogger(__name__)

Builder = Callable[[DatasetConfig], dict[str, SplitData]]

DATASETS: dict[str, Builder] = {
    "glyphs": glyphs.build,
    "mini-imagenet": mini_imagenet.build,
    "cifar-fs": cifar_fs.build,
    "folder": folder.build,
}

# number of meta-train classes of a source, without decoding images
TRAIN_CLASS_COUNTERS: dict[str, Callable[[DatasetConfig], int]] = {
    "glyphs": glyphs.count_train_classes,
    "mini-imagenet": mini_imagenet.count_train_classes,
    "cifar-fs": cifar_fs.count_train_classes,
    "folder": folder.count_train_classes,
}

RECORD_NAME = "dataset.json"
RECORD_FORMAT = "purer-dataset/1"


def dataset_config(config: ExperimentConfig, name: str) -> DatasetConfig:
    """``config.datasets[name]``; ConfigError listing the defined names otherwise."""
    if name not in config.datasets:
        raise ConfigError(f"unknown dataset {name!r} (defined under `datasets`: {sorted(config.datasets)})")
    return config.datasets[name]


def get_builder(source: str) -> Builder:
    """The builder registered for ``source``; ConfigError listing the valid names otherwise."""
    if source not in DATASETS:
        raise ConfigError(f"unknown dataset source {source!r} (valid: {sorted(DATASETS)})")
    return DATASETS[source]


def cache_paths(config: ExperimentConfig, name: str) -> dict[str, Path]:
    """``{split: <data_dir>/<name>/<size>px/<split>.pt}``."""
    return {split: dataset_cache(config, name, split) for split in SPLITS}


def record_path(config: ExperimentConfig, name: str) -> Path:
    """The ``dataset.json`` written beside the cached splits."""
    return dataset_cache(config, name, "train").parent / RECORD_NAME


def fingerprint(dataset: DatasetConfig) -> dict[str, Any]:
    """The dataset config fields that determine the cached tensors (all but ``path`` and ``download``)."""
    fields = to_dict(dataset)
    return {k: v for k, v in fields.items() if k not in ("path", "download")}


def read_record(config: ExperimentConfig, name: str) -> dict[str, Any] | None:
    """The ``dataset.json`` of an existing cache, or None if absent or unreadable."""
    path = record_path(config, name)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def cache_is_current(config: ExperimentConfig, name: str) -> bool:
    """All split files exist and (when a ``dataset.json`` is present) match the current dataset config."""
    if not all(p.is_file() for p in cache_paths(config, name).values()):
        return False
    record = read_record(config, name)
    if record is None:
        return True  # hand-made or older cache without a record: trusted as is
    return record.get("config") == fingerprint(config.datasets[name])


def check_splits(splits: dict[str, SplitData], dataset: DatasetConfig, source: str) -> None:
    """Raise DataError unless the builder produced the cache contract (see ``purer/data/cache.py``)."""
    if set(splits) != set(SPLITS):
        raise DataError(f"source {source!r} produced splits {sorted(splits)}, expected {list(SPLITS)}")
    for split, data in splits.items():
        images, labels = data.images, data.labels
        shape_ok = images.ndim == 4 and tuple(images.shape[2:]) == (dataset.image_size, dataset.image_size)
        if images.dtype != torch.uint8 or not shape_ok or labels.dtype != torch.int64 or len(labels) != len(images):
            raise DataError(f"{source} {split}: expected uint8 [N, C, {dataset.image_size}, {dataset.image_size}] and int64 [N]")
        if dataset.channels is not None and data.channels != dataset.channels:
            raise DataError(f"{source} {split}: expected {dataset.channels} channel(s), got {data.channels}")
        if list(data.class_names) != sorted(data.class_names) or len(set(data.class_names)) != data.n_classes:
            raise DataError(f"{source} {split}: class names must be unique and sorted")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= data.n_classes):
            raise DataError(f"{source} {split}: labels outside [0, {data.n_classes})")
        if len(data.mean) != data.channels or len(data.std) != data.channels:
            raise DataError(f"{source} {split}: expected {data.channels} mean/std value(s)")


def prepare_dataset(config: ExperimentConfig, name: str, force: bool = False) -> dict[str, Path]:
    """Build dataset ``name`` and cache its splits (skipped when a current cache exists).

    Args:
        config: the experiment config (``datasets[name]`` and ``data_dir`` are used).
        name: a key of ``config.datasets``.
        force: rebuild even if a current cache exists.

    Returns:
        ``{split: path}`` of the cached ``.pt`` files.
    """
    dataset = dataset_config(config, name)
    paths = cache_paths(config, name)
    if not force and cache_is_current(config, name):
        log.info("%s: cached splits are up to date in %s", name, paths["train"].parent)
        return paths
    if not force and all(p.is_file() for p in paths.values()):
        log.warning("%s: cached splits were built from a different dataset config; rebuilding", name)
    builder = get_builder(dataset.source)
    log.info("%s: building from source %r (%d px) into %s", name, dataset.source, dataset.image_size, paths["train"].parent)
    start = time.perf_counter()
    try:
        splits = builder(dataset)
    except DataError as exc:
        raise DataError(f"dataset {name!r} ({dataset.source}): {exc}") from None
    check_splits(splits, dataset, dataset.source)
    record_path(config, name).unlink(missing_ok=True)  # a record always describes complete splits
    for split, path in paths.items():
        save_split(path, splits[split])
        log.info("%s %s: %d images, %d classes -> %s", name, split, len(splits[split].labels), splits[split].n_classes, path)
    write_json(record_path(config, name), make_record(dataset, name, splits))
    log.info("%s: prepared in %.1f s", name, time.perf_counter() - start)
    return paths


def make_record(dataset: DatasetConfig, name: str, splits: dict[str, SplitData]) -> dict[str, Any]:
    """The ``dataset.json`` content: what the cache was built from, and its split sizes."""
    return {
        "format": RECORD_FORMAT,
        "name": name,
        "source": dataset.source,
        "path": dataset.path,
        "config": fingerprint(dataset),
        "splits": {
            split: {"n_images": len(data.labels), "n_classes": data.n_classes, "channels": data.channels}
            for split, data in splits.items()
        },
    }


def n_train_classes(config: ExperimentConfig, name: str) -> int:
    """Number of meta-train classes of dataset ``name``, without decoding any image.

    Read from a current cache when there is one (its ``dataset.json``, else the ``train.pt`` class
    names, memory-mapped); otherwise counted by the source (glyphs: ``train_classes``;
    mini-imagenet: labels in ``train.csv``; cifar-fs: the embedded train list; folder: sub-folders
    of ``<path>/train``). Cheap enough to call while a workflow is being parsed.
    """
    dataset = dataset_config(config, name)
    if cache_is_current(config, name):
        record = read_record(config, name)
        if record is not None:
            return int(record["splits"]["train"]["n_classes"])
        return _cached_class_count(cache_paths(config, name)["train"])
    if dataset.source not in TRAIN_CLASS_COUNTERS:
        raise ConfigError(f"unknown dataset source {dataset.source!r} (valid: {sorted(TRAIN_CLASS_COUNTERS)})")
    try:
        return TRAIN_CLASS_COUNTERS[dataset.source](dataset)
    except DataError as exc:
        raise DataError(f"dataset {name!r} ({dataset.source}): {exc}") from None


def _cached_class_count(path: Path) -> int:
    """Number of classes in a cached split, memory-mapping the file instead of reading its images."""
    raw = load_torch(path, "cached split", mmap=True, error=DataError, advice="; delete it and rerun `purer prepare`")
    if not isinstance(raw, dict) or not isinstance(raw.get("class_names"), list):
        raise DataError(f"{path} is not a purer split cache (no class_names list); delete it and rerun `purer prepare`")
    return len(raw["class_names"])
