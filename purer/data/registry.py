"""The dataset registry and ``purer prepare``'s library side: build each split once and cache it.

``DATASETS`` maps a source name (``DatasetConfig.source``) to its builder
``build(config: DatasetConfig) -> dict[str, SplitData]``. :func:`prepare_dataset` writes the three
cached splits and, last, a ``dataset.json`` recording what they were built from: the dataset config
(without ``path``/``download``) and the source data (the resolved ``path`` and a signature of its
content, :func:`source_signature`: never of modification times, so a re-copy of the same bytes keeps
the cache). Everything is written into a
temporary folder that then replaces ``<data_dir>/<name>/<size>px`` as a whole, so a cache is never a
mix of two builds. Existing caches are reused when the record is present, readable and matches the
current config and source; otherwise (including no record: an interrupted or hand-made cache) they
are rebuilt.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from purer.config import DatasetConfig, ExperimentConfig, to_dict
from purer.data import cifar_fs, folder, glyphs, mini_imagenet
from purer.data.cache import SplitData, save_split
from purer.errors import ConfigError, DataError
from purer.io import atomic_dir, load_torch, write_json
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


def _cifar_archive(root: Path) -> Path:
    """The archive cifar-fs reads at ``root``: ``root`` itself, or ``root/cifar-100-python.tar.gz``."""
    return root if root.is_file() or root.name.endswith((".tar.gz", ".tgz")) else root / cifar_fs.OFFICIAL_NAME


# what a source reads below a folder `path`, when not the whole folder (signed by source_signature)
SIGNED_PATHS: dict[str, Callable[[Path], Path]] = {"cifar-fs": _cifar_archive}

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
    """The ``dataset.json`` of an existing cache, or None if absent, unreadable or incomplete."""
    path = record_path(config, name)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None
    splits = record.get("splits")
    complete = isinstance(splits, dict) and all(
        isinstance(splits.get(split), dict) and isinstance(splits[split].get("n_classes"), int)
        for split in SPLITS
    )
    return record if complete else None


def source_signature(dataset: DatasetConfig) -> dict[str, Any] | None:
    """Where the source data is and a signature of its content, or None (no ``path``).

    ``path`` is resolved (symlinks, ``~``, relative to the working folder). The signature is a
    SHA-256 over, for a file (an archive), its size and the SHA-256 of its bytes; for a folder, the
    relative path and size of every visible file below it (hidden names skipped, as the sources skip
    them; symlinked folders followed once), or the content of the one file the source reads there
    (:data:`SIGNED_PATHS`: cifar-fs reads ``<path>/cifar-100-python.tar.gz``). Modification times
    are never signed: copying the same data again (new times, same bytes) keeps the signature, so
    neither ``purer prepare`` nor Snakemake's ``prepare_<name>`` rebuilds the cache.

    A file is read once per process (its digest is remembered by its identity, size and times; a
    changed time only makes it read again). The files of a folder are not read, which would cost too
    much at each workflow build for an image folder: an edit that keeps a folder file's name and size
    is not detected; rebuild after such an edit with ``purer prepare --force`` or
    ``snakemake -R prepare_<name>``. A missing path gets signature None.
    """
    if dataset.path is None:
        return None
    root = Path(dataset.path).expanduser().resolve()
    signed = SIGNED_PATHS.get(dataset.source, lambda path: path)(root)
    digest = hashlib.sha256()
    if signed.is_file():
        stat = signed.stat()
        identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        content = _file_digest(str(signed), *identity)
        digest.update(f"{stat.st_size}\t{content}".encode())
    elif signed.is_dir():
        for relative, stat in _walk_files(signed):
            line = f"{relative}\t{stat.st_size}\n"
            digest.update(line.encode("utf-8", "surrogateescape"))
    else:
        return {"path": str(root), "signature": None}
    return {"path": str(root), "signature": digest.hexdigest()}


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, device: int, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """SHA-256 (hex) of the bytes of ``path``, read in chunks; remembered per identity, size and times."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _walk_files(root: Path) -> list[tuple[str, os.stat_result]]:
    """``(relative path, stat)`` of every visible file under ``root``, sorted by path."""
    found = []
    seen_dirs = set()
    for current, dirs, files in os.walk(root, followlinks=True):
        stat = os.stat(current)
        if (stat.st_dev, stat.st_ino) in seen_dirs:  # a symlink loop
            dirs[:] = []
            continue
        seen_dirs.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            full = os.path.join(current, name)
            try:
                found.append((os.path.relpath(full, root), os.stat(full)))
            except OSError:  # a dangling symlink: the source reports it when it reads the file
                continue
    return sorted(found, key=lambda item: item[0])


def current_source(dataset: DatasetConfig, record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The source to compare a cache's record with: :func:`source_signature`, except when the data
    is gone from the path the cache was built from (e.g. a cache fetched with ``dvc pull`` without
    the raw data): then the record's own signature, so such a cache is kept, not rebuilt."""
    source = source_signature(dataset)
    if source is None or source["signature"] is not None:
        return source
    recorded = record.get("data") if record is not None else None
    if isinstance(recorded, dict) and recorded.get("path") == source["path"]:
        return recorded
    return source


def workflow_source(config: ExperimentConfig, name: str) -> dict[str, Any] | None:
    """The source signature that Snakemake's ``prepare_<name>`` reruns on (a ``params`` entry):
    :func:`current_source`, as :func:`cache_is_current` compares it."""
    return current_source(dataset_config(config, name), read_record(config, name))


def cache_is_current(config: ExperimentConfig, name: str) -> bool:
    """All split files exist and the ``dataset.json`` is readable and matches the current config and source.

    A missing or unreadable record means the cache is incomplete (an interrupted build) or of
    unknown origin: not current. When the source data is gone from the recorded ``path`` (e.g. a
    cache fetched with ``dvc pull`` without the raw data) there is nothing to compare with or rebuild
    from, and the cache counts as current.
    """
    if not all(p.is_file() for p in cache_paths(config, name).values()):
        return False
    record = read_record(config, name)
    if record is None:
        return False
    dataset = config.datasets[name]
    if record.get("config") != fingerprint(dataset):
        return False
    return record.get("data") == current_source(dataset, record)


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
        source = source_signature(dataset)
        if source is not None and source["signature"] is None:
            log.warning("%s: no source data at %s; keeping the cached splits built from it", name, source["path"])
        else:
            log.info("%s: cached splits are up to date in %s", name, paths["train"].parent)
        return paths
    if not force and paths["train"].parent.exists():
        if read_record(config, name) is None:
            folder = paths["train"].parent
            log.warning("%s: the cache in %s has no readable dataset.json (incomplete); rebuilding", name, folder)
        else:
            log.warning(
                "%s: cached splits were built from a different dataset config or source data; rebuilding", name
            )
    builder = get_builder(dataset.source)
    log.info("%s: building from source %r (%d px) into %s", name, dataset.source, dataset.image_size, paths["train"].parent)
    start = time.perf_counter()
    try:
        splits = builder(dataset)
    except DataError as exc:
        raise DataError(f"dataset {name!r} ({dataset.source}): {exc}") from None
    check_splits(splits, dataset, dataset.source)
    record = make_record(dataset, name, splits)  # signed after the build (a download adds the archive)
    folder = paths["train"].parent
    with atomic_dir(folder) as tmp:  # the whole folder is replaced: never old and new splits side by side
        for split, path in paths.items():
            save_split(tmp / path.name, splits[split])
            log.info("%s %s: %d images, %d classes -> %s", name, split, len(splits[split].labels), splits[split].n_classes, path)
        write_json(tmp / RECORD_NAME, record)  # last: its presence marks a complete cache
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
        "data": source_signature(dataset),
        "splits": {
            split: {"n_images": len(data.labels), "n_classes": data.n_classes, "channels": data.channels}
            for split, data in splits.items()
        },
    }


def n_train_classes(config: ExperimentConfig, name: str) -> int:
    """Number of meta-train classes of dataset ``name``, without decoding any image.

    Read from the cache's ``dataset.json`` when it matches the dataset config and the source data
    is unchanged or absent here (e.g. a cache fetched with ``dvc pull`` without the raw data), or
    from the ``train.pt`` class names (memory-mapped) of a hand-made cache without a record;
    otherwise counted by the source (glyphs: ``train_classes``; mini-imagenet: labels in
    ``train.csv``; cifar-fs: the embedded train list; folder: sub-folders of ``<path>/train``).
    Cheap enough to call while a workflow is being parsed.
    """
    dataset = dataset_config(config, name)
    complete = all(p.is_file() for p in cache_paths(config, name).values())
    record = read_record(config, name)
    if complete and record is not None and record.get("config") == fingerprint(dataset):
        source = source_signature(dataset)
        if source is None or source["signature"] is None or record.get("data") == source:
            return int(record["splits"]["train"]["n_classes"])
    if complete and record is None:
        return _cached_class_count(cache_paths(config, name)["train"])  # a hand-made cache without a record
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
