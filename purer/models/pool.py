"""The design of the pool of pre-trained teachers: class partition and teacher specs.

Implements docs/method.md §1.1 (disjoint N-way blocks; PURER-Plus overlapping random sets, §9) with
global class ids over several datasets (docs/architecture.md, "Global class ids"). The pool
manifest that every later step reads is :mod:`purer.models.manifest`; the pool resident on the
device during inversion is :class:`purer.inversion.teacher_pool.ResidentPool`. Class counts come
from the dataset registry without decoding images, so a workflow can size the pool at parse time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from purer import paths
from purer.config import ExperimentConfig
from purer.data.registry import n_train_classes
from purer.errors import ConfigError, DataError
from purer.io import load_torch
from purer.models.backbones import BACKBONES
from purer.seeding import make_generator

logger = logging.getLogger(__name__)

PARTITIONS = ("disjoint", "overlapping")


# --------------------------------------------------------------------------------------------
# Partition and global class ids (docs/method.md §1.1, §9)
# --------------------------------------------------------------------------------------------


def partition_classes(
    n_classes: int,
    n_way: int,
    mode: str = "disjoint",
    n_teachers: int | None = None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Split class ids ``0..n_classes-1`` into the label sets of the teachers.

    ``"disjoint"`` (PURER, docs/method.md §1.1): K = ceil(C / N) consecutive blocks; block i holds
    ``[i*N, min(C, i*N + N))``, so the last block may be short. ``"overlapping"`` (PURER-Plus, §9):
    ``n_teachers`` sets of N distinct classes, each drawn uniformly with ``generator``. A drawn set
    keeps its drawn order, which is the order of the teacher's logits (as the reference
    ``random.sample``).

    Args:
        n_classes: C, the number of classes to partition.
        n_way: N, classes per teacher.
        mode: ``"disjoint"`` or ``"overlapping"``.
        n_teachers: M, required for ``"overlapping"``.
        generator: required for ``"overlapping"`` (no global RNG).

    Returns:
        One list of class ids per teacher.
    """
    if n_classes < 1 or n_way < 1:
        raise ConfigError(f"cannot partition {n_classes} classes into {n_way}-way sets")
    if mode == "disjoint":
        return [list(range(start, min(n_classes, start + n_way))) for start in range(0, n_classes, n_way)]
    if mode != "overlapping":
        raise ConfigError(f"pool.partition: unknown mode {mode!r} (valid: {list(PARTITIONS)})")
    if n_teachers is None or n_teachers < 1 or generator is None:
        raise ConfigError("pool.partition 'overlapping' needs pool.n_teachers >= 1 and a generator")
    if n_way > n_classes:
        raise ConfigError(f"pool.n_way: {n_way} classes per teacher but the dataset has only {n_classes}")
    return [torch.randperm(n_classes, generator=generator)[:n_way].tolist() for _ in range(n_teachers)]


@dataclass(frozen=True)
class DatasetSlot:
    """Where one pool dataset's train classes sit among the global class ids."""

    name: str
    offset: int
    n_classes: int


def dataset_slots(config: ExperimentConfig) -> list[DatasetSlot]:
    """Global id ranges of the pool datasets: offsets are running sums of train class counts.

    Counts come from :func:`purer.data.registry.n_train_classes` (no image decoding).
    """
    slots, offset = [], 0
    for name in config.pool.datasets:
        count = n_train_classes(config, name)
        slots.append(DatasetSlot(name, offset, count))
        offset += count
    return slots


def _local_blocks(config: ExperimentConfig, slots: list[DatasetSlot]) -> list[tuple[DatasetSlot, list[int]]]:
    """(dataset, local class ids) per teacher, before ``max_teachers``.

    Disjoint blocks are cut per dataset, in dataset order. Overlapping sets go round-robin over the
    datasets (teacher i draws from dataset ``i % D``), so a teacher never mixes datasets.
    """
    pool = config.pool
    for slot in slots:  # a teacher of more ways than classes would be padded with classes that do not exist
        if pool.n_way > slot.n_classes:
            raise ConfigError(
                f"pool.n_way: {pool.n_way} classes per teacher, but dataset {slot.name!r} has only "
                f"{slot.n_classes} meta-train classes; set pool.n_way to at most {slot.n_classes}"
            )
    if pool.partition == "disjoint":
        return [(slot, block) for slot in slots for block in partition_classes(slot.n_classes, pool.n_way)]
    generator = make_generator(config.seed, "pool", "partition")
    blocks = []
    for i in range(pool.n_teachers or 0):
        slot = slots[i % len(slots)]
        blocks += [(slot, partition_classes(slot.n_classes, pool.n_way, "overlapping", 1, generator)[0])]
    return blocks


BLOCK_SELECTIONS = ("spread", "first")


def select_blocks(n_blocks: int, k: int | None, selection: str, generator: torch.Generator) -> list[int]:
    """Which of ``n_blocks`` teachers (blocks, in partition order) a pool of at most ``k`` keeps.

    ``"first"``: ``0..k-1``. ``"spread"``: the blocks are cut into k stretches
    ``[floor(i*K/k), floor((i+1)*K/k))`` and one block of each stretch is drawn uniformly with
    ``generator``, so the kept blocks span the whole (name-sorted) class range. Returned ascending.
    ``k`` of ``None`` or at least ``n_blocks`` keeps every block (no draw).
    """
    if selection not in BLOCK_SELECTIONS:
        raise ConfigError(f"pool.block_selection: unknown {selection!r} (valid: {list(BLOCK_SELECTIONS)})")
    if k is None or k >= n_blocks:
        return list(range(n_blocks))
    if selection == "first":
        return list(range(k))
    kept = []
    for i in range(k):
        low, high = i * n_blocks // k, (i + 1) * n_blocks // k
        kept.append(low + int(torch.randint(high - low, (), generator=generator)))
    return kept


def kept_blocks(config: ExperimentConfig, n_blocks: int) -> list[int]:
    """:func:`select_blocks` for ``config``: ``pool.max_teachers`` and ``pool.block_selection``,
    drawn with the generator derived from ``(seed, "pool", "blocks")``."""
    pool = config.pool
    generator = make_generator(config.seed, "pool", "blocks")
    return select_blocks(n_blocks, pool.max_teachers, pool.block_selection, generator)


def n_teachers(config: ExperimentConfig) -> int:
    """The number of teachers in the pool (cheap: no images are decoded)."""
    return len(teacher_specs(config, with_cache_info=False))


# --------------------------------------------------------------------------------------------
# Teacher specs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherSpec:
    """Everything needed to train teacher ``index``.

    Attributes:
        classes: global class ids, in the order of the teacher's logits.
        local_classes: the same classes as ids into the dataset's sorted ``class_names``.
        num_outputs: logits of the head (``pool.n_way``, even for a short last block).
        channels, mean, std: ``None`` until the dataset's cache exists when the config leaves
            them to the dataset.
        block: the teacher's position among the ``n_blocks`` teachers of the partition before
            ``pool.max_teachers`` (equal to ``index`` when every block is kept).
    """

    index: int
    dataset: str
    architecture: str
    arch_kwargs: dict[str, Any] = field(hash=False)
    classes: tuple[int, ...]
    local_classes: tuple[int, ...]
    num_outputs: int
    image_size: int
    channels: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    block: int = 0
    n_blocks: int = 1


def read_cache_header(path: Path) -> dict[str, Any] | None:
    """Channels, class names, images per class and normalisation of a cached split, without
    reading its images.

    Returns ``None`` if the cache does not exist. The file is memory-mapped, so only the small
    entries (and the labels) are read.
    """
    if not Path(path).is_file():
        return None
    raw = load_torch(path, "cached split", mmap=True, error=DataError, advice="; rerun `purer prepare`")
    if not isinstance(raw, dict) or "images" not in raw or "class_names" not in raw:
        raise DataError(f"{path} is not a purer split cache")
    return {
        "channels": int(raw["images"].shape[1]),
        "image_size": int(raw["images"].shape[-1]),
        "class_names": tuple(raw["class_names"]),
        "class_counts": tuple(torch.bincount(raw["labels"], minlength=len(raw["class_names"])).tolist()),
        "mean": tuple(float(m) for m in raw["mean"]),
        "std": tuple(float(s) for s in raw["std"]),
    }


def _arch_kwargs(config: ExperimentConfig, architecture: str) -> dict[str, Any]:
    if architecture not in BACKBONES:
        raise ConfigError(
            f"pool.architectures: unknown architecture {architecture!r} (valid: {sorted(BACKBONES)})"
        )
    return {"width": config.pool.conv4_width} if architecture == "conv4" else {}


def teacher_specs(config: ExperimentConfig, with_cache_info: bool = True) -> list[TeacherSpec]:
    """The teachers of the pool, in index order (docs/method.md §1.1).

    Architecture i is ``pool.architectures[i % len]``; ``pool.max_teachers`` keeps k of the blocks,
    chosen by ``pool.block_selection`` (:func:`kept_blocks`), renumbered ``0..k-1``.

    Args:
        config: the experiment.
        with_cache_info: fill ``channels``/``mean``/``std`` the config leaves open from the train
            cache header when the cache exists.
    """
    slots = dataset_slots(config)
    blocks = _local_blocks(config, slots)
    kept = kept_blocks(config, len(blocks))
    infos = {slot.name: _dataset_info(config, slot.name, with_cache_info) for slot in slots}
    specs = []
    for index, block in enumerate(kept):
        slot, local = blocks[block]
        architecture = config.pool.architectures[index % len(config.pool.architectures)]
        info = infos[slot.name]
        specs.append(
            TeacherSpec(
                index=index,
                dataset=slot.name,
                architecture=architecture,
                arch_kwargs=_arch_kwargs(config, architecture),
                classes=tuple(slot.offset + c for c in local),
                local_classes=tuple(local),
                num_outputs=config.pool.n_way,
                image_size=config.datasets[slot.name].image_size,
                channels=info["channels"],
                mean=info["mean"],
                std=info["std"],
                block=block,
                n_blocks=len(blocks),
            )
        )
    return specs


def _dataset_info(config: ExperimentConfig, name: str, with_cache_info: bool) -> dict[str, Any]:
    """Channels/mean/std from the dataset config, completed from the train cache header."""
    dataset = config.datasets[name]
    info = {"channels": dataset.channels, "mean": dataset.mean, "std": dataset.std}
    if with_cache_info and None in info.values():
        header = read_cache_header(paths.dataset_cache(config, name, "train"))
        if header is not None:
            info = {key: header[key] if info[key] is None else info[key] for key in info}
    return info


COVERAGE_NAMES_SHOWN = 12


def coverage(config: ExperimentConfig, specs: list[TeacherSpec] | None = None) -> str:
    """One line saying which blocks and meta-train classes the pool's teachers cover.

    For example ``pool covers 2 of 4 blocks (block_selection spread): blocks 1, 3; 10 of 20
    meta-train classes: a, b, ...``. Class names come from the train caches when they exist
    (global ids otherwise); at most :data:`COVERAGE_NAMES_SHOWN` are listed.
    """
    specs = teacher_specs(config, with_cache_info=False) if specs is None else specs
    slots = dataset_slots(config)
    names: list[str] = []
    for slot in slots:
        header = read_cache_header(paths.dataset_cache(config, slot.name, "train"))
        found = header["class_names"] if header is not None else ()
        if len(found) != slot.n_classes:
            found = tuple(str(slot.offset + c) for c in range(slot.n_classes))
        names += [name if len(slots) == 1 else f"{slot.name}/{name}" for name in found]
    classes = sorted({c for spec in specs for c in spec.classes})
    n_blocks = specs[0].n_blocks if specs else 0
    blocks = _abbreviate([str(spec.block) for spec in specs])
    how = f" (block_selection {config.pool.block_selection})" if len(specs) < n_blocks else ""
    return (
        f"pool covers {len(specs)} of {n_blocks} blocks{how}: blocks {blocks}; "
        f"{len(classes)} of {len(names)} meta-train classes: {_abbreviate([names[c] for c in classes])}"
    )


def log_coverage(config: ExperimentConfig) -> None:
    """Log :func:`coverage` (when a manifest is written)."""
    logger.info("%s", coverage(config))


def _abbreviate(items: list[str], limit: int = COVERAGE_NAMES_SHOWN) -> str:
    """``a, b, c`` or, beyond ``limit`` items, ``a, b, ... (+N more)``."""
    text = ", ".join(items[:limit])
    return text + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def teacher_spec(config: ExperimentConfig, index: int) -> TeacherSpec:
    """The spec of teacher ``index``; ConfigError if the pool has no such teacher."""
    specs = teacher_specs(config)
    if not 0 <= index < len(specs):
        raise ConfigError(f"teacher index {index} out of range (pool has {len(specs)} teachers)")
    return specs[index]
