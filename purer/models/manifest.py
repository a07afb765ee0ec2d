"""The pool manifest: its format (writer and reader) and loading the teachers it lists.

``manifest.yaml`` (docs/architecture.md, "Pool manifest") records, for every teacher of the pool,
its checkpoint, architecture, dataset and global classes; every step after ``pool`` reads the pool
through it. :func:`write_manifest` writes it from the trained teachers, :func:`load_manifest` reads
and checks it (plain YAML data: nothing in it executes), :func:`load_pool` loads the teachers it
lists, frozen, onto a device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from purer import paths
from purer.config import ExperimentConfig
from purer.errors import CheckpointError, ConfigError, DataError
from purer.io import load_torch, read_yaml, write_yaml
from purer.models.backbones import BACKBONES, architecture_registry, build_backbone
from purer.models.pool import (
    DatasetSlot,
    TeacherSpec,
    dataset_slots,
    kept_blocks,
    log_coverage,
    read_cache_header,
    teacher_specs,
)

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "purer-pool/1"


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
    architectures: Mapping[str, Callable[..., nn.Module]] = field(default_factory=lambda: dict(BACKBONES), hash=False)

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
    target = folder / "manifest.yaml"
    datasets = [_dataset_record(config, slot) for slot in dataset_slots(config)]
    teachers = [
        _teacher_record(spec, folder / paths.teacher_path(config, spec.index).name)
        for spec in teacher_specs(config)
    ]
    write_yaml(target, {"format": MANIFEST_FORMAT, "datasets": datasets, "teachers": teachers})
    logger.info("wrote pool manifest %s (%d teachers)", target, len(teachers))
    log_coverage(config)
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


def load_manifest(path: str | Path, architectures: Mapping[str, Callable[..., nn.Module]] | None = None) -> Manifest:
    """Read and validate a pool manifest (written by :func:`write_manifest` or by hand).

    ``architectures``: the names a teacher may use (default the built-in :data:`BACKBONES`; a
    config's custom ones: :func:`purer.models.backbones.architecture_registry`). The manifest only
    names architectures: reading it imports nothing.

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
    registry = dict(BACKBONES) if architectures is None else dict(architectures)
    reader = _Reader(path, registry)
    datasets = tuple(reader.dataset(i, d) for i, d in enumerate(reader.items(raw, "datasets")))
    _check_unique(path, [d.name for d in datasets], "datasets", "name")
    _check_disjoint(path, datasets)
    teachers = tuple(reader.teacher(i, t, datasets) for i, t in enumerate(reader.items(raw, "teachers")))
    _check_unique(path, [t.index for t in teachers], "teachers", "index")
    return Manifest(path, datasets, teachers, registry)


def load_config_manifest(config: ExperimentConfig) -> Manifest:
    """The pool manifest of ``config`` (:func:`purer.paths.manifest_path`), with its custom architectures.

    When the config brings its own pool (``pool_manifest``), the manifest's datasets must also be
    the config's ``pool.datasets`` with the same global ids (name, offset, number of train classes
    of each, in that order): the teachers' class ids index the config's datasets.

    Raises:
        CheckpointError: a bad manifest (see :func:`load_manifest`) or datasets that do not match.
        ConfigError: an unknown architecture, or a custom factory that cannot be imported.
    """
    manifest = load_manifest(paths.manifest_path(config), architecture_registry(config.custom_architectures))
    if config.pool_manifest is not None:
        wanted = [(slot.name, slot.offset, slot.n_classes) for slot in dataset_slots(config)]
        found = [(d.name, d.offset, d.n_classes) for d in manifest.datasets]
        if found != wanted:
            raise CheckpointError(
                f"pool manifest {manifest.path}: datasets (name, offset, n_classes) {found} do not match the "
                f"config's pool.datasets {wanted}; the teachers' class ids must index the config's datasets"
            )
    return manifest


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

    def __init__(self, path: Path, architectures: Mapping[str, Any]) -> None:
        self.path = path
        self.architectures = architectures

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
        if architecture not in self.architectures:
            raise ConfigError(
                f"pool manifest {self.path}: {where}.architecture: unknown {architecture!r} "
                f"(valid: {sorted(self.architectures)}; declare others under custom_architectures in the config)"
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


def load_teacher(
    entry: TeacherEntry,
    device: str | torch.device = "cpu",
    architectures: Mapping[str, Callable[..., nn.Module]] | None = None,
) -> nn.Module:
    """Build ``entry``'s architecture, load its weights strictly, freeze it, eval mode.

    ``architectures``: as :func:`load_manifest` (default the built-ins). The file is read with
    ``weights_only=True`` (:func:`purer.io.load_torch`): tensors only, nothing executes.

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
        registry=architectures,
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
    """Load every teacher of ``manifest`` once, onto ``device`` (the resident pool, docs/method.md §8.1)."""
    pool = [(entry, load_teacher(entry, device, manifest.architectures)) for entry in manifest.teachers]
    logger.info("loaded %d teachers from %s", len(pool), manifest.path)
    return pool
