"""The meta model: its shape, a seeded random initialisation, and the FedAvg initialisation.

Implements the initialisations of docs/method.md §2.5 and the training-free baselines of §6:

- **random**: the backbone's own initialisation (§1.3), drawn from a seed derived from
  ``(seed, "meta_init")`` inside ``torch.random.fork_rng`` so the caller's global RNG is untouched
  and the weights do not depend on the device;
- **average** (FedAvg): the element-wise mean of every teacher's parameters, loaded into the meta
  model. Only meaningful when every teacher has the meta model's architecture, width, input shape
  and number of outputs; otherwise a :class:`ConfigError` names what the pool holds.

The meta model uses batch-statistics BatchNorm (``running_stats=False``); it gets a global
max-pool before its head (``adaptive_pool``) when the pool's teachers see several input sizes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from purer.config import ExperimentConfig
from purer.errors import ConfigError
from purer.models.backbones import build_backbone
from purer.models.manifest import TeacherEntry
from purer.seeding import derive_seed

logger = logging.getLogger(__name__)

CONV4 = "conv4"


@dataclass(frozen=True)
class MetaModelSpec:
    """How to rebuild the meta model: ``build_backbone(architecture, n_way, channels, input_size,
    running_stats=False, **arch_kwargs)``."""

    architecture: str
    arch_kwargs: dict[str, Any] = field(hash=False)
    n_way: int
    input_size: int
    channels: int


def arch_kwargs_of(architecture: str, arch_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments that change an architecture's parameters (only Conv4 has any)."""
    if architecture != CONV4:
        return {}
    return {"width": int(arch_kwargs.get("width", 32)), "adaptive_pool": bool(arch_kwargs.get("adaptive_pool", False))}


def meta_model_spec(config: ExperimentConfig, teachers: Sequence[TeacherEntry], channels: int) -> MetaModelSpec:
    """The meta model of ``config.meta_train`` for a pool of ``teachers``.

    Args:
        config: the experiment; ``meta_train.input_size`` defaults to the first pool dataset's
            image size.
        teachers: the pool's manifest entries (their image sizes decide ``adaptive_pool``).
        channels: input channels when ``meta_train.channels`` is unset (the first pool dataset's).
    """
    mt = config.meta_train
    input_size = mt.input_size or config.datasets[config.pool.datasets[0]].image_size
    adaptive = len({int(t.image_size) for t in teachers}) > 1
    kwargs = arch_kwargs_of(mt.meta_model, {"width": mt.meta_model_width, "adaptive_pool": adaptive})
    return MetaModelSpec(mt.meta_model, kwargs, mt.n_way, int(input_size), int(mt.channels or channels))


def build_meta_model(spec: MetaModelSpec, seed: int, device: str | torch.device = "cpu") -> nn.Module:
    """The meta model with its seeded random initialisation (docs/method.md §1.3), on ``device``.

    Module initialisers draw from the global RNG, so they run on CPU inside ``fork_rng`` with the
    seed ``derive_seed(seed, "meta_init")``: the same seed gives the same weights on any device.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "meta_init"))
        model = build_backbone(
            spec.architecture, spec.n_way, spec.channels, spec.input_size, running_stats=False, **spec.arch_kwargs
        )
    return model.to(device)


def _teacher_signature(entry: TeacherEntry) -> tuple:
    kwargs = arch_kwargs_of(entry.architecture, dict(entry.arch_kwargs))
    return (entry.architecture, kwargs.get("width"), kwargs.get("adaptive_pool"), int(entry.image_size),
            int(entry.channels), int(entry.num_outputs))


def _spec_signature(spec: MetaModelSpec) -> tuple:
    return (spec.architecture, spec.arch_kwargs.get("width"), spec.arch_kwargs.get("adaptive_pool"),
            spec.input_size, spec.channels, spec.n_way)


_FIELDS = ("", "width={}", "adaptive_pool={}", "{}px", "{}ch", "{} outputs")


def _describe(signature: tuple, shown: list[int]) -> str:
    parts = [signature[0]] + [_FIELDS[i].format(signature[i]) for i in shown if signature[i] is not None]
    return " ".join(parts)


def check_average_pool(spec: MetaModelSpec, teachers: Sequence[TeacherEntry], hint: str = "") -> None:
    """Raise ConfigError unless every teacher matches the meta model (FedAvg needs one architecture).

    The message lists the pool's kinds of teachers with counts, e.g. ``conv4 ×5, resnet10 ×4``,
    showing only the properties that differ.
    """
    wanted = _spec_signature(spec)
    signatures = [_teacher_signature(t) for t in teachers]
    if all(s == wanted for s in signatures):
        return
    values = [{s[i] for s in [*signatures, wanted] if s[i] is not None} for i in range(len(wanted))]
    shown = [i for i in range(1, len(wanted)) if len(values[i]) > 1]
    counts = Counter(_describe(s, shown) for s in signatures)
    pool = ", ".join(f"{name} ×{n}" for name, n in counts.items())
    raise ConfigError(
        f"average needs a pool of one architecture matching the meta model ({_describe(wanted, shown)}); "
        f"this pool has {pool}{hint}"
    )


def fedavg_state(model: nn.Module, loaded: Sequence[tuple[Any, nn.Module]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the teachers' entries for every parameter of ``model`` (FedAvg).

    Teacher BatchNorm running buffers have no counterpart in the batch-statistics meta model and
    are left out. Sums run in teacher order in float32, on the device of ``model``.
    """
    target = model.state_dict()
    sums = {name: torch.zeros_like(value, dtype=torch.float32) for name, value in target.items()}
    for _, teacher in loaded:
        state = teacher.state_dict()
        for name in sums:
            sums[name] += state[name].to(sums[name].device, torch.float32)
    return {name: (total / len(loaded)).to(target[name].dtype) for name, total in sums.items()}


def initial_meta_model(
    spec: MetaModelSpec,
    init: str,
    loaded: Sequence[tuple[Any, nn.Module]] | None,
    seed: int,
    device: str | torch.device,
    hint: str = "",
) -> nn.Module:
    """The meta model at its initialisation: ``random`` or ``average`` (FedAvg of ``loaded``).

    Args:
        spec: the meta model.
        init: ``"random"`` or ``"average"``.
        loaded: ``(entry, module)`` teacher pairs (needed for ``average``).
        seed: the run seed (random init).
        device: where the model lives.
        hint: appended to the ConfigError for a pool FedAvg cannot average.
    """
    model = build_meta_model(spec, seed, device)
    if init == "random":
        return model
    if init != "average":
        raise ConfigError(f"meta_train.init: unknown {init!r} (valid: ['average', 'random'])")
    if not loaded:
        raise ConfigError("the average initialisation needs at least one teacher")
    check_average_pool(spec, [entry for entry, _ in loaded], hint)
    model.load_state_dict(fedavg_state(model, loaded), strict=True)
    logger.info("meta model initialised with the FedAvg of %d teachers", len(loaded))
    return model
