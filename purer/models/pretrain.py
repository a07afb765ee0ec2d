"""Teacher pre-training (docs/method.md §1.2), with the reference bugs fixed (§8 item 13), resumable.

One teacher is trained on its block's classes of the cached ``train`` split: for each class, the
first ``1 - pool.val_fraction`` of its images (cache order) train and the rest validate; labels are
remapped to ``0..|block|-1``; no augmentation. Conv4 uses Adam, ResNets SGD (momentum 0.9, weight
decay 5e-4); MultiStepLR is stepped once per epoch; the global gradient norm is clipped. The weights
of the best validation epoch are kept by copy (the reference kept live references, so it saved the
last epoch). "Best" is :data:`SELECTION`: the highest validation accuracy, ties broken by the lower
validation loss, then by the later epoch, so a small validation set that saturates at 100% within a
few epochs does not keep an under-trained teacher. Every ``pool.checkpoint_interval`` epochs a
resume file is written; rerunning a killed job continues from it and, on CPU, ends with the same
weights (and the same kept epoch) as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from purer import paths
from purer.config import ExperimentConfig
from purer.data.cache import SplitData, load_split
from purer.errors import CheckpointError, DataError, PurerError
from purer.io import load_torch, remove_stale_temporaries, save_torch, write_json
from purer.models.backbones import build_backbone
from purer.models.pool import TeacherSpec, read_cache_header, teacher_spec
from purer.outputs import lock_folder
from purer.runtime import resolve_device
from purer.seeding import derive_seed, make_generator
from purer.tracking import progress

logger = logging.getLogger(__name__)

EVAL_BATCH_SIZE = 512

SELECTION = "highest val accuracy, ties by lowest val loss, then latest epoch"

# Seconds per training image (forward, backward, clip, optimiser step) with fp32 on CPU, measured by
# benchmarks/bench_pretrain.py on the 2-core Xeon of benchmarks/README.md, at 32 and 84 px (RGB,
# Conv4 of width 32). Used only for the estimate of `purer pool list`.
CPU_SECONDS_PER_IMAGE = {
    "conv4": {32: 1 / 2121, 84: 1 / 236},
    "resnet10": {32: 1 / 144, 84: 1 / 17},
    "resnet18": {32: 1 / 78, 84: 1 / 9},
}


@dataclass(frozen=True)
class BlockData:
    """A teacher's data, normalised, on the training device.

    Attributes:
        train_x, val_x: float32 [N, C, H, W].
        train_y, val_y: int64 [N], labels in ``0..|block|-1``.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor


def train_val_sizes(n_images: int, val_fraction: float) -> tuple[int, int]:
    """(train, validation) image counts of a class of ``n_images`` (at least 2): at least one each."""
    n_val = min(max(1, round(n_images * val_fraction)), n_images - 1)
    return n_images - n_val, n_val


def block_data(
    split: SplitData, local_classes: tuple[int, ...], val_fraction: float, device: torch.device
) -> BlockData:
    """Per class, the first ``1 - val_fraction`` of its images (cache order) train, the rest validate.

    Args:
        split: the dataset's cached ``train`` split.
        local_classes: the block's class ids into ``split.class_names``; class ``local_classes[j]``
            gets label ``j``.
        val_fraction: share of each class's images held out (at least one image each side).
        device: where the tensors live for the whole training.
    """
    per_class = split.class_indices()
    train_idx, val_idx, train_y, val_y = [], [], [], []
    for label, c in enumerate(local_classes):
        ids = per_class[c]
        if len(ids) < 2:
            raise DataError(
                f"class {split.class_names[c]!r} has {len(ids)} images; a teacher needs at least 2"
            )
        n_train, n_val = train_val_sizes(len(ids), val_fraction)
        train_idx.append(ids[:n_train])
        val_idx.append(ids[n_train:])
        train_y.append(torch.full((n_train,), label, dtype=torch.int64))
        val_y.append(torch.full((n_val,), label, dtype=torch.int64))

    def images(idx: list[torch.Tensor]) -> torch.Tensor:
        return split.normalise(split.images[torch.cat(idx)].to(device))

    return BlockData(
        images(train_idx), torch.cat(train_y).to(device), images(val_idx), torch.cat(val_y).to(device)
    )


def build_optimizer(
    model: nn.Module, architecture: str, config: ExperimentConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.MultiStepLR]:
    """Adam(lr) for Conv4, SGD(lr, momentum 0.9, weight decay 5e-4) for ResNets; MultiStepLR per epoch."""
    pool = config.pool
    if architecture == "conv4":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=pool.lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=pool.lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(pool.milestones), gamma=pool.gamma
    )
    return optimizer, scheduler


def build_teacher(spec: TeacherSpec, channels: int, seed: int, device: torch.device) -> nn.Module:
    """The teacher network, initialised from a seed derived from ``(seed, "pool", index, "init")``.

    Module initialisers draw from the global RNG, so they run inside ``fork_rng`` (the caller's
    global state is restored) on CPU, which makes the initial weights device-independent.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "pool", spec.index, "init"))
        model = build_backbone(
            spec.architecture,
            spec.num_outputs,
            channels,
            spec.image_size,
            running_stats=True,
            **spec.arch_kwargs,
        )
    return model.to(device)


class _Precision:
    """Autocast and memory-format settings of ``config`` for one device."""

    def __init__(self, config: ExperimentConfig, device: torch.device) -> None:
        self.device_type = device.type
        self.bf16 = config.precision == "bf16"
        self.channels_last = config.channels_last

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def train_epoch(
    model: nn.Module,
    data: BlockData,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    batch_size: int,
    grad_clip: float,
    precision: _Precision,
) -> tuple[float, float]:
    """One shuffled pass over the training images (the last batch may be smaller).

    Returns:
        Mean cross-entropy and accuracy (fraction) over the epoch's images.
    """
    model.train()
    order = torch.randperm(len(data.train_y), generator=generator).to(data.train_y.device)
    loss_sum = torch.zeros((), device=data.train_y.device)
    correct = torch.zeros((), device=data.train_y.device, dtype=torch.int64)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        x, y = precision.inputs(data.train_x[batch]), data.train_y[batch]
        with precision.autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        loss_sum += loss.detach() * len(batch)
        correct += (logits.detach().argmax(dim=1) == y).sum()
    return float(loss_sum) / len(order), float(correct) / len(order)


@torch.no_grad()
def teacher_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: _Precision
) -> tuple[float, float]:
    """Accuracy (fraction) and mean cross-entropy of ``model`` in eval mode on ``x`` [N, C, H, W]
    with labels ``y`` [N]."""
    model.eval()
    correct = torch.zeros((), device=y.device, dtype=torch.int64)
    loss_sum = torch.zeros((), device=y.device)
    for start in range(0, len(y), EVAL_BATCH_SIZE):
        with precision.autocast():
            logits = model(precision.inputs(x[start : start + EVAL_BATCH_SIZE]))
        labels = y[start : start + EVAL_BATCH_SIZE]
        correct += (logits.argmax(dim=1) == labels).sum()
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
    return float(correct) / len(y), float(loss_sum) / len(y)


def is_better(accuracy: float, loss: float, best_accuracy: float, best_loss: float) -> bool:
    """Whether a later epoch with validation ``accuracy``/``loss`` replaces the kept one (:data:`SELECTION`).

    Higher accuracy wins; at equal accuracy, lower loss wins; at equal accuracy and loss, the later
    epoch (this one) wins. A NaN loss never wins a tie.
    """
    if accuracy != best_accuracy:
        return accuracy > best_accuracy
    return loss <= best_loss or (math.isnan(best_loss) and not math.isnan(loss))


@dataclass
class _State:
    """Everything that changes during training (and goes into the resume file)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.MultiStepLR
    generator: torch.Generator
    epoch: int = 0  # epochs completed
    best_accuracy: float = -1.0
    best_loss: float = float("inf")  # validation loss of the kept epoch
    best_epoch: int = 0  # 1-based epoch whose weights are kept
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] | None = None


def resume_path(out_path: Path) -> Path:
    """``teacher_XX.resume.pt`` beside ``teacher_XX.pt``."""
    return out_path.with_name(out_path.stem + ".resume.pt")


def _fingerprint(spec: TeacherSpec, config: ExperimentConfig, channels: int) -> dict[str, Any]:
    """What a resume file must agree on to be continued (all but the number of epochs)."""
    pool = config.pool
    return {
        "classes": list(spec.classes),
        "architecture": spec.architecture,
        "arch_kwargs": dict(spec.arch_kwargs),
        "num_outputs": spec.num_outputs,
        "image_size": spec.image_size,
        "channels": channels,
        "seed": config.seed,
        "recipe": [
            pool.batch_size,
            pool.lr,
            list(pool.milestones),
            pool.gamma,
            pool.grad_clip,
            pool.val_fraction,
        ],
        "precision": config.precision,
        "selection": SELECTION,  # resume files of an older selection rule are not continued
    }


def _save_resume(path: Path, state: _State, fingerprint: dict[str, Any]) -> None:
    save_torch(
        path,
        {
            "fingerprint": fingerprint,
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "generator": state.generator.get_state(),
            "epoch": state.epoch,
            "best_accuracy": state.best_accuracy,
            "best_loss": state.best_loss,
            "best_epoch": state.best_epoch,
            "best_state": state.best_state,
            "history": state.history,
        },
    )


RESUME_KEYS = frozenset({"fingerprint", "model", "optimizer", "scheduler", "generator", "epoch", "best_accuracy",
                         "best_loss", "best_epoch", "best_state", "history"})


def _try_resume(path: Path, state: _State, fingerprint: dict[str, Any]) -> None:
    """Continue from ``path`` if it exists and was written for the same teacher and recipe."""
    if not path.exists():
        return
    saved = load_torch(path, "teacher resume file")
    if isinstance(saved, dict) and "fingerprint" in saved and saved["fingerprint"] != fingerprint:
        logger.warning("ignoring %s: written for another teacher or recipe; training from scratch", path)
        return
    if not isinstance(saved, dict) or not RESUME_KEYS <= set(saved):
        found = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
        raise CheckpointError(
            f"teacher resume file {path} is not a purer teacher resume file (expected a dict with "
            f"{sorted(RESUME_KEYS)}, got {found}); delete it to train the teacher from scratch"
        )
    try:
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
        state.scheduler.load_state_dict(saved["scheduler"])
        state.generator.set_state(saved["generator"])
        state.epoch, state.history = int(saved["epoch"]), list(saved["history"])
        state.best_accuracy, state.best_epoch = float(saved["best_accuracy"]), int(saved["best_epoch"])
        state.best_loss = float(saved["best_loss"])
        state.best_state = {
            k: v.to(next(state.model.parameters()).device) for k, v in saved["best_state"].items()
        }
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"teacher resume file {path} does not hold a complete training state ({type(exc).__name__}: {detail}); "
            "delete it to train the teacher from scratch"
        ) from None
    logger.info("resuming teacher from %s after epoch %d", path, state.epoch)


def seconds_per_image(architecture: str, image_size: int) -> float | None:
    """Estimated CPU fp32 seconds to train on one image (:data:`CPU_SECONDS_PER_IMAGE`).

    Interpolated (and extrapolated) as a power law of the image side between the two measured
    sizes; ``None`` for an architecture that was not measured.
    """
    measured = CPU_SECONDS_PER_IMAGE.get(architecture)
    if measured is None:
        return None
    (small, t_small), (large, t_large) = sorted(measured.items())
    exponent = math.log(t_large / t_small) / math.log(large / small)
    return t_small * (image_size / small) ** exponent


def estimate_training_seconds(
    architecture: str, image_size: int, n_train_images: int, epochs: int
) -> float | None:
    """A rough CPU fp32 estimate of one teacher's training time: epochs x images x seconds per image.

    Validation passes and start-up are left out; ``precision: bf16`` with ``channels_last`` is
    2-4x faster on a CPU with AVX-512 BF16, and a GPU is much faster (benchmarks/README.md).
    """
    per_image = seconds_per_image(architecture, image_size)
    return None if per_image is None else epochs * n_train_images * per_image


@dataclass(frozen=True)
class PoolEstimate:
    """The cost of training a pool, before any training.

    Attributes:
        train_images: training images of all teachers together (one epoch); ``None`` until the
            train caches exist (glyphs: known from the config).
        seconds: :func:`estimate_training_seconds` summed over the teachers; ``None`` if the images
            are unknown or an architecture was not measured.
        unmeasured: architectures of the pool without a measured cost.
    """

    train_images: int | None
    seconds: float | None
    unmeasured: tuple[str, ...]


def estimate_pool(config: ExperimentConfig, specs: list[TeacherSpec]) -> PoolEstimate:
    """Training images and an estimated CPU fp32 training time of the teachers ``specs``."""
    counts = {name: _class_counts(config, name) for name in config.pool.datasets}
    unmeasured = tuple(sorted({s.architecture for s in specs if s.architecture not in CPU_SECONDS_PER_IMAGE}))
    if any(counts[s.dataset] is None for s in specs):
        return PoolEstimate(None, None, unmeasured)
    total_images, total_seconds = 0, 0.0
    for spec in specs:
        n_train = sum(train_val_sizes(counts[spec.dataset][c], config.pool.val_fraction)[0]
                      for c in spec.local_classes if counts[spec.dataset][c] >= 2)  # fmt: skip
        total_images += n_train
        seconds = estimate_training_seconds(spec.architecture, spec.image_size, n_train, config.pool.epochs)
        total_seconds += seconds or 0.0
    return PoolEstimate(total_images, None if unmeasured else total_seconds, unmeasured)


def _class_counts(config: ExperimentConfig, name: str) -> tuple[int, ...] | None:
    """Train images per class of dataset ``name``: from its train cache, else (glyphs) the config."""
    header = read_cache_header(paths.dataset_cache(config, name, "train"))
    if header is not None:
        return header["class_counts"]
    dataset = config.datasets[name]
    if dataset.source == "glyphs":
        return (dataset.images_per_class,) * dataset.train_classes
    return None


def train_teacher(
    config: ExperimentConfig,
    index: int,
    out_path: str | Path | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train teacher ``index`` of the pool (docs/method.md §1.2) and write its checkpoint.

    Writes ``out_path`` (the checkpoint dict of docs/architecture.md, plus ``local_classes``,
    ``mean``, ``std``), ``teacher_XX.json`` (per-epoch history) beside it, and, while training,
    ``teacher_XX.resume.pt`` (removed at the end).

    Args:
        config: the experiment.
        index: the teacher (0-based).
        out_path: checkpoint path; default :func:`purer.paths.teacher_path`.
        device: overrides ``config.device``.

    Returns:
        A summary: index, val_accuracy (fraction), val_loss, best_epoch (the kept epoch), epochs,
        selection (:data:`SELECTION`), seconds.
    """
    spec = teacher_spec(config, index)
    out_path = Path(out_path) if out_path is not None else paths.teacher_path(config, index)
    device = torch.device(device) if device is not None else resolve_device(config.device)
    split = load_split(paths.dataset_cache(config, spec.dataset, "train"))
    if split.image_size != spec.image_size:
        raise DataError(
            f"{spec.dataset} train cache holds {split.image_size}px images, config says {spec.image_size}"
        )
    data = block_data(split, spec.local_classes, config.pool.val_fraction, device)
    model = build_teacher(spec, split.channels, config.seed, device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimizer(model, spec.architecture, config)
    state = _State(model, optimizer, scheduler, make_generator(config.seed, "pool", index), history=[])
    fingerprint = _fingerprint(spec, config, split.channels)
    with lock_folder(out_path.parent, "pool folder", f".{out_path.stem}.lock"):  # one writer per teacher
        remove_stale_temporaries(out_path.parent, out_path.stem + ".")  # this teacher's, left by a killed job
        _try_resume(resume_path(out_path), state, fingerprint)
        _run_epochs(config, spec, data, state, _Precision(config, device), resume_path(out_path), fingerprint)
        return _finish(config, spec, split, state, out_path)


def _run_epochs(
    config: ExperimentConfig,
    spec: TeacherSpec,
    data: BlockData,
    state: _State,
    precision: _Precision,
    resume: Path,
    fingerprint: dict[str, Any],
) -> None:
    pool = config.pool
    bar = progress(
        range(state.epoch, pool.epochs), total=pool.epochs - state.epoch, desc=f"teacher {spec.index:02d}"
    )
    for epoch in bar:
        start = time.perf_counter()
        lr = state.optimizer.param_groups[0]["lr"]
        loss, accuracy = train_epoch(
            state.model, data, state.optimizer, state.generator, pool.batch_size, pool.grad_clip, precision
        )
        if not math.isfinite(loss):  # diverged: every later epoch and the saved teacher would be garbage
            raise PurerError(f"teacher {spec.index}: the training loss is not finite at epoch {epoch + 1}; "
                             "check pool.lr, pool.grad_clip, precision")
        state.scheduler.step()
        val_accuracy, val_loss = teacher_accuracy(state.model, data.val_x, data.val_y, precision)
        state.epoch = epoch + 1
        if is_better(val_accuracy, val_loss, state.best_accuracy, state.best_loss):
            state.best_accuracy, state.best_loss, state.best_epoch = val_accuracy, val_loss, state.epoch
            state.best_state = copy.deepcopy(state.model.state_dict())
        record = {"epoch": state.epoch, "lr": lr, "train_loss": loss, "train_accuracy": accuracy}
        record |= {"val_accuracy": val_accuracy, "val_loss": val_loss}
        state.history.append(record | {"seconds": time.perf_counter() - start})
        level = logging.INFO if state.epoch % pool.checkpoint_interval == 0 else logging.DEBUG
        logger.log(level, "teacher %d epoch %d/%d: loss %.4f, train %.3f, val %.3f (loss %.4f)", spec.index,
                   state.epoch, pool.epochs, loss, accuracy, val_accuracy, val_loss)  # fmt: skip
        if state.epoch % pool.checkpoint_interval == 0 and state.epoch < pool.epochs:
            _save_resume(resume, state, fingerprint)


def _finish(
    config: ExperimentConfig, spec: TeacherSpec, split: SplitData, state: _State, out_path: Path
) -> dict[str, Any]:
    """Write the checkpoint (best weights) and the history; remove the resume file."""
    best_state = {k: v.detach().cpu().contiguous() for k, v in state.best_state.items()}
    save_torch(
        out_path,
        {
            "state_dict": best_state,
            "architecture": spec.architecture,
            "arch_kwargs": dict(spec.arch_kwargs),
            "num_outputs": spec.num_outputs,
            "image_size": split.image_size,
            "channels": split.channels,
            "dataset": spec.dataset,
            "classes": list(spec.classes),
            "local_classes": list(spec.local_classes),
            "mean": list(split.mean),
            "std": list(split.std),
            "val_accuracy": state.best_accuracy,
            "val_loss": state.best_loss,
            "epoch": state.best_epoch,  # the kept epoch (1-based)
            "epochs": state.epoch,
            "selection": SELECTION,
        },
    )
    seconds = sum(r["seconds"] for r in state.history)
    summary = {
        "index": spec.index,
        "val_accuracy": state.best_accuracy,
        "val_loss": state.best_loss,
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "selection": SELECTION,
        "seconds": seconds,
    }
    write_json(
        out_path.with_suffix(".json"),
        summary
        | {"architecture": spec.architecture, "classes": list(spec.classes), "history": state.history},
    )
    resume_path(out_path).unlink(missing_ok=True)
    logger.info(
        "teacher %d: kept epoch %d of %d (val accuracy %.3f, val loss %.4f; %s), %.1f s",
        spec.index,
        state.best_epoch,
        state.epoch,
        state.best_accuracy,
        state.best_loss,
        SELECTION,
        seconds,
    )
    return summary
