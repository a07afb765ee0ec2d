"""The pool of pre-trained teachers: class partition, teacher specs, the manifest, a resident pool.

Implements algorithm.md §1.1 (disjoint N-way blocks; PURER-Plus overlapping random sets, §9) with
global class ids over several datasets (docs/architecture.md, "Global class ids"), and the pool
manifest that every later step reads (docs/architecture.md, "Pool manifest"). Class counts come
from the dataset registry without decoding images, so a workflow can size the pool at parse time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from purer import paths
from purer.config import ExperimentConfig
from purer.data.registry import n_train_classes
from purer.errors import CheckpointError, ConfigError, DataError
from purer.io import load_torch, read_yaml, write_yaml
from purer.models.backbones import BACKBONES, build_backbone
from purer.seeding import make_generator

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "purer-pool/1"
PARTITIONS = ("disjoint", "overlapping")


# --------------------------------------------------------------------------------------------
# Partition and global class ids (algorithm.md §1.1, §9)
# --------------------------------------------------------------------------------------------


def partition_classes(
    n_classes: int,
    n_way: int,
    mode: str = "disjoint",
    n_teachers: int | None = None,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Split class ids ``0..n_classes-1`` into the label sets of the teachers.

    ``"disjoint"`` (PURER, algorithm.md §1.1): K = ceil(C / N) consecutive blocks; block i holds
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
    """The teachers of the pool, in index order (algorithm.md §1.1).

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


# --------------------------------------------------------------------------------------------
# The manifest (docs/architecture.md, "Pool manifest")
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset of a manifest: its global ids are ``offset .. offset + n_classes - 1``."""

    name: str
    offset: int
    n_classes: int
    class_names: tuple[str, ...] | None


@dataclass(frozen=True)
class TeacherEntry:
    """One teacher of a manifest (a relative ``checkpoint`` is joined to the manifest's folder)."""

    index: int
    architecture: str
    arch_kwargs: dict[str, Any] = field(hash=False)
    checkpoint: Path
    dataset: str
    classes: tuple[int, ...]
    local_classes: tuple[int, ...]
    num_outputs: int
    image_size: int
    channels: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    val_accuracy: float | None


@dataclass(frozen=True)
class Manifest:
    """A validated pool manifest."""

    path: Path
    datasets: tuple[DatasetEntry, ...]
    teachers: tuple[TeacherEntry, ...]

    @property
    def n_classes(self) -> int:
        """Total number of global class ids."""
        return sum(d.n_classes for d in self.datasets)


def write_manifest(config: ExperimentConfig, pool_dir: str | Path | None = None) -> Path:
    """Gather the trained teacher checkpoints into ``manifest.yaml`` (atomically).

    Args:
        config: the experiment (its specs must match what the checkpoints were trained for).
        pool_dir: folder holding ``teacher_XX.pt``; default :func:`purer.paths.pool_dir`.

    Returns:
        The manifest path (``<pool_dir>/manifest.yaml``).

    Raises:
        CheckpointError: a teacher checkpoint is missing, truncated or trained for other classes.
        DataError: a dataset's train cache is missing (its class names go into the manifest).
    """
    folder = Path(pool_dir) if pool_dir is not None else paths.pool_dir(config)
    target = folder / paths.manifest_path(config).name
    datasets = [_dataset_record(config, slot) for slot in dataset_slots(config)]
    teachers = [
        _teacher_record(spec, folder / paths.teacher_path(config, spec.index).name)
        for spec in teacher_specs(config)
    ]
    write_yaml(target, {"format": MANIFEST_FORMAT, "datasets": datasets, "teachers": teachers})
    logger.info("wrote pool manifest %s (%d teachers)", target, len(teachers))
    logger.info("%s", coverage(config))
    return target


def _dataset_record(config: ExperimentConfig, slot: DatasetSlot) -> dict[str, Any]:
    cache = paths.dataset_cache(config, slot.name, "train")
    header = read_cache_header(cache)
    if header is None:
        raise DataError(f"cached split not found: {cache} (run `purer prepare` first)")
    if len(header["class_names"]) != slot.n_classes:
        raise DataError(
            f"{cache}: {len(header['class_names'])} classes, but the registry counts {slot.n_classes}"
        )
    return {
        "name": slot.name,
        "offset": slot.offset,
        "n_classes": slot.n_classes,
        "class_names": list(header["class_names"]),
    }


def _teacher_record(spec: TeacherSpec, checkpoint: Path) -> dict[str, Any]:
    """The manifest entry of one teacher; the training record (kept epoch, validation loss, the
    selection rule) is copied when the checkpoint has it (older checkpoints: accuracy only)."""
    state = load_torch(checkpoint, "teacher checkpoint")
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"teacher checkpoint {checkpoint} has no 'state_dict' entry")
    for key, expected in (("classes", list(spec.classes)), ("architecture", spec.architecture)):
        if state.get(key) != expected:
            raise CheckpointError(
                f"teacher checkpoint {checkpoint}: {key} {state.get(key)!r} does not match the config's "
                f"{expected!r}; retrain it with `purer pool train --teacher {spec.index}`"
            )
    return {
        "index": spec.index,
        "architecture": spec.architecture,
        "arch_kwargs": dict(spec.arch_kwargs),
        "checkpoint": checkpoint.name,
        "dataset": spec.dataset,
        "classes": list(spec.classes),
        "num_outputs": int(state["num_outputs"]),
        "image_size": int(state["image_size"]),
        "channels": int(state["channels"]),
        "mean": [float(m) for m in state["mean"]],
        "std": [float(s) for s in state["std"]],
        "val_accuracy": float(state["val_accuracy"]),
        "block": spec.block,
    } | _training_record(state)


def _training_record(state: dict[str, Any]) -> dict[str, Any]:
    record = {}
    if state.get("val_loss") is not None:
        record["val_loss"] = float(state["val_loss"])
    if state.get("epoch") is not None:
        record["kept_epoch"] = int(state["epoch"])
    if state.get("epochs") is not None:
        record["epochs"] = int(state["epochs"])
    if state.get("selection") is not None:
        record["selection"] = str(state["selection"])
    return record


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a pool manifest (written by :func:`write_manifest` or by hand).

    Required teacher keys: ``index``, ``architecture``, ``checkpoint``, ``dataset``, ``classes``,
    ``image_size``, ``channels``. Optional: ``arch_kwargs`` ({}), ``num_outputs`` (len(classes)),
    ``mean``/``std`` (null), ``val_accuracy`` (null). Dataset entries need ``name``, ``offset``,
    ``n_classes``; ``class_names`` is optional.

    Raises:
        CheckpointError: naming the manifest and the key, for a missing or malformed manifest, a
            missing checkpoint file, class ids outside the teacher's dataset, duplicate indices.
        ConfigError: an unknown architecture name.
    """
    path = Path(path)
    raw = read_yaml(path, "pool manifest")
    if not isinstance(raw, dict):
        raise CheckpointError(f"pool manifest {path}: expected a mapping with 'datasets' and 'teachers'")
    if raw.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
        raise CheckpointError(f"pool manifest {path}: format {raw['format']!r}, expected {MANIFEST_FORMAT!r}")
    reader = _Reader(path)
    datasets = tuple(reader.dataset(i, d) for i, d in enumerate(reader.items(raw, "datasets")))
    _check_unique(path, [d.name for d in datasets], "datasets", "name")
    _check_disjoint(path, datasets)
    teachers = tuple(reader.teacher(i, t, datasets) for i, t in enumerate(reader.items(raw, "teachers")))
    _check_unique(path, [t.index for t in teachers], "teachers", "index")
    return Manifest(path, datasets, teachers)


def _check_unique(path: Path, values: list[Any], section: str, key: str) -> None:
    seen = set()
    for i, value in enumerate(values):
        if value in seen:
            raise CheckpointError(f"pool manifest {path}: {section}[{i}].{key}: duplicate value {value!r}")
        seen.add(value)


def _check_disjoint(path: Path, datasets: tuple[DatasetEntry, ...]) -> None:
    """Datasets' global id ranges ``[offset, offset + n_classes)`` must not overlap."""
    spans = sorted((d.offset, d.offset + d.n_classes, i) for i, d in enumerate(datasets))
    for (_, end, i), (start, _, j) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise CheckpointError(
                f"pool manifest {path}: datasets[{j}].offset: ids {start}.. overlap datasets[{i}] (ids up to {end - 1})"
            )


class _Reader:
    """Typed access to the raw manifest with messages naming the manifest and the dotted key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> CheckpointError:
        return CheckpointError(f"pool manifest {self.path}: {key}: {message}")

    def items(self, raw: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = raw.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
            raise self.fail(key, "expected a non-empty list of mappings")
        return value

    def get(
        self, raw: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...], default: Any = ...
    ):
        if key not in raw or raw[key] is None:
            if default is ...:
                raise self.fail(f"{where}.{key}", "missing key")
            return default
        value = raw[key]
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            raise self.fail(f"{where}.{key}", f"expected {_kind_name(kind)}, got {value!r}")
        return value

    def floats(self, raw: dict[str, Any], key: str, where: str, length: int) -> tuple[float, ...] | None:
        value = self.get(raw, key, where, list, None)
        if value is None:
            return None
        if len(value) != length or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
        ):
            raise self.fail(f"{where}.{key}", f"expected {length} number(s) (one per channel), got {value!r}")
        return tuple(float(v) for v in value)

    def dataset(self, i: int, raw: dict[str, Any]) -> DatasetEntry:
        where = f"datasets[{i}]"
        n_classes = self.get(raw, "n_classes", where, int)
        offset = self.get(raw, "offset", where, int)
        if n_classes < 1 or offset < 0:
            raise self.fail(where, f"expected offset >= 0 and n_classes >= 1, got {offset} and {n_classes}")
        names = self.get(raw, "class_names", where, list, None)
        if names is not None and len(names) != n_classes:
            raise self.fail(f"{where}.class_names", f"{len(names)} names for n_classes {n_classes}")
        return DatasetEntry(
            str(self.get(raw, "name", where, str)),
            offset,
            n_classes,
            None if names is None else tuple(map(str, names)),
        )

    def teacher(self, i: int, raw: dict[str, Any], datasets: tuple[DatasetEntry, ...]) -> TeacherEntry:
        where = f"teachers[{i}]"
        architecture = self.get(raw, "architecture", where, str)
        if architecture not in BACKBONES:
            raise ConfigError(
                f"pool manifest {self.path}: {where}.architecture: unknown {architecture!r} (valid: {sorted(BACKBONES)})"
            )
        dataset = self._dataset_of(raw, where, datasets)
        classes = self._classes(raw, where, dataset, datasets)
        num_outputs = self.get(raw, "num_outputs", where, int, len(classes))
        if num_outputs < len(classes):
            raise self.fail(f"{where}.num_outputs", f"{num_outputs} logits for {len(classes)} classes")
        channels = self.positive(raw, "channels", where)
        accuracy = self.get(raw, "val_accuracy", where, (int, float), None)
        return TeacherEntry(
            index=self.get(raw, "index", where, int),
            architecture=architecture,
            arch_kwargs=dict(self.get(raw, "arch_kwargs", where, dict, {})),
            checkpoint=self._checkpoint(raw, where),
            dataset=dataset.name,
            classes=classes,
            local_classes=tuple(c - dataset.offset for c in classes),
            num_outputs=num_outputs,
            image_size=self.positive(raw, "image_size", where),
            channels=channels,
            mean=self.floats(raw, "mean", where, channels),
            std=self.floats(raw, "std", where, channels),
            val_accuracy=None if accuracy is None else float(accuracy),
        )

    def positive(self, raw: dict[str, Any], key: str, where: str) -> int:
        value = self.get(raw, key, where, int)
        if value < 1:
            raise self.fail(f"{where}.{key}", f"expected a positive integer, got {value}")
        return value

    def _checkpoint(self, raw: dict[str, Any], where: str) -> Path:
        checkpoint = Path(self.get(raw, "checkpoint", where, str))
        checkpoint = checkpoint if checkpoint.is_absolute() else self.path.parent / checkpoint
        if not checkpoint.is_file():
            raise self.fail(f"{where}.checkpoint", f"file not found: {checkpoint}")
        return checkpoint

    def _dataset_of(
        self, raw: dict[str, Any], where: str, datasets: tuple[DatasetEntry, ...]
    ) -> DatasetEntry:
        name = self.get(raw, "dataset", where, str)
        for dataset in datasets:
            if dataset.name == name:
                return dataset
        raise self.fail(f"{where}.dataset", f"{name!r} is not among datasets {[d.name for d in datasets]}")

    def _classes(self, raw, where: str, dataset: DatasetEntry, datasets) -> tuple[int, ...]:
        classes = self.get(raw, "classes", where, list)
        total = sum(d.n_classes for d in datasets)
        low, high = dataset.offset, dataset.offset + dataset.n_classes
        for c in classes:
            if isinstance(c, bool) or not isinstance(c, int):
                raise self.fail(f"{where}.classes", f"expected integer class ids, got {c!r}")
            if not (0 <= c < total and low <= c < high):
                raise self.fail(
                    f"{where}.classes",
                    f"class id {c} out of range (dataset {dataset.name!r} holds global ids {low}..{high - 1}; {total} classes in all)",
                )
        if not classes or len(set(classes)) != len(classes):
            raise self.fail(f"{where}.classes", f"expected distinct class ids, got {classes}")
        return tuple(classes)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
        bool: "true/false",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def cut_to_max_teachers(config: ExperimentConfig, teachers: tuple[TeacherEntry, ...]) -> tuple[TeacherEntry, ...]:
    """The teachers of a manifest that ``pool.max_teachers`` keeps, chosen as :func:`teacher_specs`
    chooses blocks (``pool.block_selection``) with the manifest's teachers taken as the partition:
    a manifest of the whole pool gives the blocks the config's own pool would have trained. A
    manifest with at most ``max_teachers`` teachers is kept whole."""
    return tuple(teachers[i] for i in kept_blocks(config, len(teachers)))


# --------------------------------------------------------------------------------------------
# Loading teachers (resident, frozen)
# --------------------------------------------------------------------------------------------


def load_teacher(entry: TeacherEntry, device: str | torch.device = "cpu") -> nn.Module:
    """Build ``entry``'s architecture, load its weights strictly, freeze it, eval mode.

    Accepts a checkpoint dict with ``state_dict`` (as written by ``purer pool train``) or a bare
    state dict.

    Raises:
        CheckpointError: the file is missing or truncated, or does not match the architecture.
    """
    raw = load_torch(entry.checkpoint, "teacher checkpoint")
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"teacher checkpoint {entry.checkpoint}: expected a state dict (or a dict with 'state_dict')"
        )
    model = build_backbone(
        entry.architecture,
        entry.num_outputs,
        entry.channels,
        entry.image_size,
        running_stats=True,
        **entry.arch_kwargs,
    )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        if len(detail) > 300:
            detail = detail[:300] + " ..."
        raise CheckpointError(
            f"checkpoint {entry.checkpoint} does not match architecture {entry.architecture}: {detail}"
        ) from None
    model.to(device).eval()
    model.requires_grad_(False)
    return model


def load_pool(manifest: Manifest, device: str | torch.device = "cpu") -> list[tuple[TeacherEntry, nn.Module]]:
    """Load every teacher of ``manifest`` once, onto ``device`` (the resident pool, algorithm.md §8.1)."""
    pool = [(entry, load_teacher(entry, device)) for entry in manifest.teachers]
    logger.info("loaded %d teachers from %s", len(pool), manifest.path)
    return pool
