"""Typed, frozen configuration loaded from commented YAML.

One frozen dataclass per stage, nested into :class:`ExperimentConfig`. The loader rejects unknown
keys, wrong types and impossible values with a message that names the file and the dotted key.
Dotted overrides (``--set meta_train.outer_lr=0.0005``) are applied to the raw YAML before
validation, so they go through exactly the same checks.

Defaults follow the released PURER scripts (docs/method.md §2.9) unless a comment says otherwise.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from purer.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Stage configs
# --------------------------------------------------------------------------------------------

DatasetSource = Literal["glyphs", "mini-imagenet", "cifar-fs", "folder"]

# Generous upper bounds (config/README.md, "Value ranges"): far above any paper setting, low enough
# that a typo (an extra digit) cannot ask for an allocation of hundreds of GB.
MAX_IMAGE_SIZE = 512  # pixels per side (paper: 32 and 84)
MAX_WAYS = 1000  # classes per episode or teacher; glyphs classes per split
MAX_PER_CLASS = 10_000  # images per class (glyphs instances, dynamic dataset, shots and queries)
MAX_WIDTH = 1024  # Conv4 filters
MAX_BATCH = 65_536  # teacher mini-batch
MAX_EPISODES = 100_000  # fixed validation or test episodes
MAX_META_BATCH = 1000  # episodes per meta-iteration
MAX_INNER_STEPS = 1000  # inner-loop steps (train and test): MAML keeps a graph per step
MAX_SNAPSHOTS = 1000  # PNG grids written during meta-training
MAX_STEPS = 10_000_000  # epochs, meta-iterations, warm-up, patience, ICFIL steps
MAX_TEACHERS = 10_000
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # one path component, as the workflow schema
FACTORY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")  # module:callable
ARCHITECTURE_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")  # an architecture name


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset, decoded once by ``purer prepare`` into cached uint8 tensors per split."""

    source: DatasetSource = "glyphs"  # registry key (purer.data.registry.DATASETS)
    path: str | None = None  # raw data: archive or folder (glyphs needs none)
    image_size: int = 32  # square side in pixels after resizing
    channels: int | None = None  # 1 or 3; None = the dataset's native channel count
    mean: tuple[float, ...] | None = None  # normalisation; None = the dataset's default
    std: tuple[float, ...] | None = None
    download: bool = False  # cifar-fs only: fetch the official archive when missing
    # glyphs only (ignored by the other sources)
    train_classes: int = 20
    val_classes: int = 10
    test_classes: int = 10
    images_per_class: int = 40

    def __post_init__(self) -> None:
        _require(self.image_size >= 8, "image_size", "at least 8", self.image_size)
        _at_most(self, "image_size", MAX_IMAGE_SIZE)
        _require(self.channels in (None, 1, 3), "channels", "1, 3 or null", self.channels)
        for name in ("train_classes", "val_classes", "test_classes"):
            _require(getattr(self, name) >= 2, name, "at least 2", getattr(self, name))
            _at_most(self, name, MAX_WAYS)
        _require(self.images_per_class >= 2, "images_per_class", "at least 2", self.images_per_class)
        _at_most(self, "images_per_class", MAX_PER_CLASS)
        if (self.mean is None) != (self.std is None):
            raise ConfigError("mean and std must be given together (or both null)")
        if self.std is not None and self.mean is not None:
            _require(all(s > 0 for s in self.std), "std", "positive values", self.std)
            for name in ("mean", "std"):
                value = getattr(self, name)
                wanted = f"{self.channels or '1 or 3'} value(s), one per channel"
                _require(len(value) == (self.channels or len(value)) and len(value) in (1, 3), name, wanted, value)
            _require(len(self.mean) == len(self.std), "std", f"{len(self.mean)} value(s), as many as mean", self.std)


@dataclass(frozen=True)
class PoolConfig:
    """The pool of pre-trained teachers (docs/method.md §1.1-1.2)."""

    datasets: tuple[str, ...] = ("glyphs",)  # names in `datasets`; global class ids follow this order
    partition: Literal["disjoint", "overlapping"] = "disjoint"  # paper blocks / PURER-Plus random sets
    n_way: int = 5  # classes per teacher (N)
    n_teachers: int | None = None  # overlapping only: number of teachers M
    max_teachers: int | None = None  # keep only k teachers (pool-size ablation); which: block_selection
    block_selection: Literal["spread", "first"] = "spread"  # max_teachers: seeded spread over the blocks | first k
    architectures: tuple[str, ...] = ("conv4",)  # cycled over teachers: ["conv4","resnet10","resnet18"] = SH
    conv4_width: int = 32  # Conv4 filters (32 in PURER, 64 in classic MAML)
    epochs: int = 60
    batch_size: int = 128
    lr: float = 0.01
    milestones: tuple[int, ...] = (30, 40, 50)
    gamma: float = 0.2
    grad_clip: float = 50.0  # global gradient-norm clip
    val_fraction: float = 0.2  # last 20% of each class's images validate the teacher
    checkpoint_interval: int = 10  # epochs between resumable checkpoints

    def __post_init__(self) -> None:
        _require(self.n_way >= 2, "n_way", "at least 2", self.n_way)
        _at_most(self, "n_way", MAX_WAYS)
        _require(len(self.datasets) >= 1, "datasets", "at least one dataset name", self.datasets)
        _require(len(self.architectures) >= 1, "architectures", "at least one name", self.architectures)
        _require(self.epochs >= 1, "epochs", "at least 1", self.epochs)
        _at_most(self, "epochs", MAX_STEPS)
        _require(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        _at_most(self, "batch_size", MAX_BATCH)
        _require(self.lr > 0, "lr", "a positive number", self.lr)
        _require(
            all(m >= 1 for m in self.milestones) and list(self.milestones) == sorted(set(self.milestones)),
            "milestones", "increasing epochs of at least 1", self.milestones,
        )
        _require(0 < self.gamma <= 1, "gamma", "a decay factor in (0, 1]", self.gamma)
        _require(self.grad_clip > 0, "grad_clip", "a positive number", self.grad_clip)
        _require(0 < self.val_fraction < 1, "val_fraction", "in (0, 1)", self.val_fraction)
        _require(self.conv4_width >= 1, "conv4_width", "at least 1", self.conv4_width)
        _at_most(self, "conv4_width", MAX_WIDTH)
        _require(self.checkpoint_interval >= 1, "checkpoint_interval", "at least 1", self.checkpoint_interval)
        if self.partition == "overlapping":
            _require(
                self.n_teachers is not None and self.n_teachers >= 1,
                "n_teachers",
                "a positive int when partition is 'overlapping'",
                self.n_teachers,
            )
        for name in ("n_teachers", "max_teachers"):
            if getattr(self, name) is not None:
                _require(getattr(self, name) >= 1, name, "at least 1", getattr(self, name))
                _at_most(self, name, MAX_TEACHERS)


@dataclass(frozen=True)
class LearnerConfig:
    """The meta-learner (docs/method.md §2.5, §9)."""

    algorithm: Literal["maml", "anil", "protonet"] = "maml"
    first_order: bool = False  # MAML/ANIL: drop second-order terms in the outer gradient
    inner_lr: float = 0.01  # alpha
    inner_steps: int = 1  # train-time inner steps (released scripts: 1; PURER-Plus: 5)

    def __post_init__(self) -> None:
        _require(self.inner_lr > 0, "inner_lr", "a positive number", self.inner_lr)
        _require(self.inner_steps >= 0, "inner_steps", "0 or more", self.inner_steps)
        _at_most(self, "inner_steps", MAX_INNER_STEPS)


@dataclass(frozen=True)
class InversionConfig:
    """The dynamic dataset and its inversion loss (docs/method.md §2.2-2.3)."""

    images_per_class: int | None = None  # spc; None = n_shot + n_query (16 for 1-shot, 20 for 5-shot)
    data_lr: float = 0.25  # Adam on the images
    ce_weight: float = 1.0
    tv_weight: float = 1e-4
    bn_weight: float = 0.01
    l2_weight: float = 1e-5
    first_bn_multiplier: float = 1.0  # weight of the first BN layer's term (DeepInversion uses 10)
    jitter: int = 2  # max cyclic roll in pixels
    teacher_weighting: Literal["equal", "triangular"] = "equal"  # triangular = reference-code parity
    teacher_batching: Literal["auto", "vmap", "loop"] = "auto"  # auto = vmap on GPU, per-teacher loop on CPU
    teachers_per_step: int | None = None  # subsample teachers per data step (PURER-Plus candidate_size)
    on_nonfinite: Literal["stop", "skip"] = "stop"  # NaN/Inf in the data step: stop, or skip the step

    def __post_init__(self) -> None:
        if self.images_per_class is not None:
            _require(self.images_per_class >= 2, "images_per_class", "at least 2", self.images_per_class)
            _at_most(self, "images_per_class", MAX_PER_CLASS)
        _require(self.data_lr > 0, "data_lr", "a positive number", self.data_lr)
        for name in ("ce_weight", "tv_weight", "bn_weight", "l2_weight", "first_bn_multiplier"):
            _require(getattr(self, name) >= 0, name, "0 or more", getattr(self, name))
        _require(self.jitter >= 0, "jitter", "0 or more", self.jitter)
        _at_most(self, "jitter", MAX_IMAGE_SIZE)
        if self.teachers_per_step is not None:
            _require(self.teachers_per_step >= 1, "teachers_per_step", "at least 1", self.teachers_per_step)
            _at_most(self, "teachers_per_step", MAX_TEACHERS)


@dataclass(frozen=True)
class CurriculumConfig:
    """The gradient switch of ECI (docs/method.md §2.6)."""

    # Strength of the reversed step (docs/reversed-strength.md): exactly one of the two is set.
    adv_scale: float | None = 10.0  # coefficient of -L_outer in the data loss (the reference code's meaning)
    adv_strength: float | None = None  # per-class ratio reversed / inversion coefficient (pool-size independent)
    # Warm-up: exactly one of the two is set.
    warmup: int | None = 4000  # meta-iterations before the first reversed step (studies)
    warmup_fraction: float | None = None  # warm-up = fraction x iterations (smoke runs only)
    patience: int = 6  # non-improving meta-iterations before the switch fires

    def __post_init__(self) -> None:
        _require_one_of(self, "adv_scale", "adv_strength")
        for name in ("adv_scale", "adv_strength"):
            if getattr(self, name) is not None:
                _require(getattr(self, name) >= 0, name, "0 or more", getattr(self, name))
        _require_one_of(self, "warmup", "warmup_fraction")
        if self.warmup is not None:
            _require(self.warmup >= 0, "warmup", "0 or more", self.warmup)
            _at_most(self, "warmup", MAX_STEPS)
        _require(self.patience >= 1, "patience", "at least 1", self.patience)
        _at_most(self, "patience", MAX_STEPS)
        if self.warmup_fraction is not None:
            _require(0 <= self.warmup_fraction <= 1, "warmup_fraction", "in [0, 1]", self.warmup_fraction)


def effective_warmup(curriculum: CurriculumConfig, iterations: int) -> int:
    """Warm-up in meta-iterations: ``warmup``, or ``round(warmup_fraction * iterations)`` (smoke runs)."""
    if curriculum.warmup_fraction is not None:
        return int(round(curriculum.warmup_fraction * iterations))
    return int(curriculum.warmup)


# meta_train keys that never change a run's numbers: a resumed run may change them (the resume fingerprint,
# purer/meta/checkpoint.py, and `purer status`'s "written for another config" check leave them out)
NEUTRAL_META_TRAIN_KEYS = ("checkpoint_interval", "grid_snapshots", "snapshots")


@dataclass(frozen=True)
class MetaTrainConfig:
    """ECI meta-training and the training-time baselines (docs/method.md §2, §6)."""

    meta_model: str = "conv4"  # backbone registry name
    meta_model_width: int = 32  # Conv4 filters of the meta model
    input_size: int | None = None  # meta-model input size; None = first pool dataset's image_size
    channels: int | None = None  # meta-model input channels; None = first pool dataset's
    init: Literal["random", "average"] = "average"  # initialisation of purer/ei (released scripts: average)
    n_way: int = 5
    n_query: int = 15
    meta_batch_size: int = 4  # episodes per meta-iteration; outer losses are summed
    outer_lr: float = 0.001
    iterations: int = 60000  # meta-iterations
    val_interval: int = 500  # meta-iterations between validations
    val_episodes: int = 100  # fixed validation episodes
    checkpoint_interval: int = 500  # meta-iterations between resumable checkpoints
    grid_snapshots: int = 3  # PNG grids of synthesized images written during training
    snapshots: bool = False  # also keep snapshots/iterNNNNN.pt at each validation (best-on-test parity)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    inversion: InversionConfig = field(default_factory=InversionConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)

    def __post_init__(self) -> None:
        _require(self.meta_model_width >= 1, "meta_model_width", "at least 1", self.meta_model_width)
        _at_most(self, "meta_model_width", MAX_WIDTH)
        if self.input_size is not None:
            _require(self.input_size >= 8, "input_size", "at least 8", self.input_size)
            _at_most(self, "input_size", MAX_IMAGE_SIZE)
        _require(self.channels in (None, 1, 3), "channels", "1, 3 or null", self.channels)
        _require(self.n_way >= 2, "n_way", "at least 2", self.n_way)
        _at_most(self, "n_way", MAX_WAYS)
        _require(self.n_query >= 1, "n_query", "at least 1", self.n_query)
        _at_most(self, "n_query", MAX_PER_CLASS)
        _require(self.meta_batch_size >= 1, "meta_batch_size", "at least 1", self.meta_batch_size)
        _at_most(self, "meta_batch_size", MAX_META_BATCH)
        _require(self.outer_lr > 0, "outer_lr", "a positive number", self.outer_lr)
        _require(self.iterations >= 0, "iterations", "0 or more", self.iterations)
        _at_most(self, "iterations", MAX_STEPS)
        _require(self.val_interval >= 1, "val_interval", "at least 1", self.val_interval)
        _require(self.val_episodes >= 1, "val_episodes", "at least 1", self.val_episodes)
        _at_most(self, "val_episodes", MAX_EPISODES)
        _require(self.checkpoint_interval >= 1, "checkpoint_interval", "at least 1", self.checkpoint_interval)
        _require(self.grid_snapshots >= 0, "grid_snapshots", "0 or more", self.grid_snapshots)
        _at_most(self, "grid_snapshots", MAX_SNAPSHOTS)


@dataclass(frozen=True)
class IcfilConfig:
    """ICFIL test-time calibration. A reconstruction of the paper's description (docs/method.md §3.3):
    the authors released no ICFIL code, so every value here is a proposal, not the paper's."""

    pseudo_per_class: int = 5  # M pseudo support images per class
    inversion_steps: int = 100  # I Adam steps inverting the adapted model
    inversion_lr: float = 0.25
    tv_weight: float = 1e-4
    l2_weight: float = 1e-5
    jitter: int = 2
    bn_mode: Literal["none", "support"] = "none"  # match real-support BN statistics (ablation)
    bn_weight: float = 0.01  # weight of that BN term (bn_mode: support only)
    feature_steps: int = 10  # SGD steps on the feature extractor (contrastive)
    feature_lr: float = 0.01
    temperature: float = 0.1
    symmetric: bool = False  # also anchor on pseudo features
    head_steps: int = 5  # SGD steps on the head (CE on real + pseudo support)
    head_lr: float = 0.01

    def __post_init__(self) -> None:
        _require(self.pseudo_per_class >= 1, "pseudo_per_class", "at least 1", self.pseudo_per_class)
        _at_most(self, "pseudo_per_class", MAX_PER_CLASS)
        for name in ("inversion_steps", "feature_steps", "head_steps"):
            _require(getattr(self, name) >= 0, name, "0 or more", getattr(self, name))
            _at_most(self, name, MAX_STEPS)
        _require(self.temperature > 0, "temperature", "a positive number", self.temperature)
        for name in ("inversion_lr", "feature_lr", "head_lr"):
            _require(getattr(self, name) > 0, name, "a positive number", getattr(self, name))
        for name in ("tv_weight", "l2_weight", "bn_weight"):
            _require(getattr(self, name) >= 0, name, "0 or more", getattr(self, name))
        _require(self.jitter >= 0, "jitter", "0 or more", self.jitter)
        _at_most(self, "jitter", MAX_IMAGE_SIZE)


@dataclass(frozen=True)
class MetaTestConfig:
    """Meta-testing on fixed, seeded episodes (docs/method.md §4)."""

    datasets: tuple[str, ...] | None = None  # test datasets; None = the pool's datasets
    n_way: int = 5
    n_query: int = 15
    episodes: int = 600
    inner_steps: int = 1  # test-time inner steps (released scripts: 1; PURER-Plus: 10)
    inner_lr: float | None = None  # None = meta_train.learner.inner_lr; 0 is refused (use inner_steps: 0)
    selection: Literal["val", "last", "best-on-test"] = "val"  # best-on-test = authors' protocol, labelled
    best_on_test_beside: bool = True  # plain tests also score every snapshot; the best is reported, labelled
    matched_steps: tuple[int, ...] = (10, 16)  # inner steps of the plain controls at ICFIL's update budget
    episode_batch: int = 1  # test episodes calibrated together by a vmapped ICFIL (GPUs); 1 = per episode
    adapt_batch: int = 1  # plain test/validation episodes adapted and scored together (vmapped; GPUs); 1 = per episode
    icfil: IcfilConfig = field(default_factory=IcfilConfig)

    def __post_init__(self) -> None:
        _require(self.n_way >= 2, "n_way", "at least 2", self.n_way)
        _at_most(self, "n_way", MAX_WAYS)
        _require(self.n_query >= 1, "n_query", "at least 1", self.n_query)
        _at_most(self, "n_query", MAX_PER_CLASS)
        _require(self.episodes >= 1, "episodes", "at least 1", self.episodes)
        _at_most(self, "episodes", MAX_EPISODES)
        _require(self.inner_steps >= 0, "inner_steps", "0 or more", self.inner_steps)
        _at_most(self, "inner_steps", MAX_INNER_STEPS)
        _require(
            self.inner_lr is None or self.inner_lr > 0,
            "inner_lr",
            "a positive number, or null for meta_train.learner.inner_lr (inner_steps: 0 tests without adaptation)",
            self.inner_lr,
        )
        _require(all(k >= 1 for k in self.matched_steps), "matched_steps", "values of at least 1", self.matched_steps)
        _require(
            all(k <= MAX_INNER_STEPS for k in self.matched_steps),
            "matched_steps",
            f"values of at most {MAX_INNER_STEPS:_}",
            self.matched_steps,
        )
        _require(self.episode_batch >= 1, "episode_batch", "at least 1", self.episode_batch)
        _at_most(self, "episode_batch", MAX_EPISODES)
        _require(self.adapt_batch >= 1, "adapt_batch", "at least 1", self.adapt_batch)
        _at_most(self, "adapt_batch", MAX_EPISODES)


Method = Literal["purer", "ei", "random", "average"]
ArmValue = bool | int | float | str | None  # a value of one meta_train key set by an arm


@dataclass(frozen=True)
class ArmConfig:
    """One named meta-training arm of the grid (``grid.arms``): a base method and meta_train overrides."""

    method: Method | None = None  # base method (required): purer, ei, random or average
    set: dict[str, ArmValue] = field(default_factory=dict)  # dotted meta_train keys -> values, e.g. curriculum.adv_scale: 10.0
    branch_from: str | None = None  # purer only: start from this ei arm's saved warm-up state (same seed and shots)

    def __post_init__(self) -> None:
        _require(self.method is not None, "method", "a base method (purer, ei, random or average)", self.method)
        _require(self.branch_from is None or self.method == "purer", "branch_from", "only on a purer arm",
                 self.branch_from)


@dataclass(frozen=True)
class GridConfig:
    """Which runs the pipeline expands (one Snakemake job per combination)."""

    methods: tuple[Method, ...] = ("purer", "ei", "random", "average")
    shots: tuple[int, ...] = (1, 5)
    seeds: tuple[int, ...] = (0,)
    icfil: tuple[bool, ...] = (False, True)  # meta-test with and without ICFIL
    icfil_methods: tuple[str, ...] = ("purer",)  # methods (and arms, or arms' base methods) that also get an ICFIL evaluation
    icfil_controls: tuple[Literal["matched", "noise", "support"], ...] = ("matched", "noise", "support")  # controls run beside ICFIL (purer/variants.py)
    arms: dict[str, ArmConfig] = field(default_factory=dict)  # named runs beside `methods`: base method + meta_train overrides
    sweeps: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> arms; the report selects one per shot on validation
    pairs: tuple[tuple[str, ...], ...] = ()  # paired differences [a, b] = a - b (runs or sweeps); empty: purer - ei

    def __post_init__(self) -> None:
        _require(len(self.methods) >= 1, "methods", "at least one method", self.methods)
        _require(all(s >= 1 for s in self.shots), "shots", "values of at least 1", self.shots)
        _require(
            all(s <= MAX_PER_CLASS for s in self.shots), "shots", f"values of at most {MAX_PER_CLASS:_}", self.shots
        )
        _require(all(s >= 0 for s in self.seeds), "seeds", "values of at least 0", self.seeds)
        _check_grid_names(self)


def _check_grid_names(grid: GridConfig) -> None:
    """Arms, sweeps, pairs and ``icfil_methods`` name runs of the grid (see config/README.md, "Arms")."""
    methods = typing.get_args(Method)
    for name, arm in grid.arms.items():
        require_name(name, "grid.arms")
        _require(name not in grid.methods, f"arms.{name}", "a name not also in grid.methods (one run folder each)", name)
        _require(name not in methods or arm.method == name, f"arms.{name}",
                 f"a name that is not another base method (method is {arm.method})", name)
        if arm.branch_from is not None:
            trunk = grid.arms.get(arm.branch_from)
            trunk_method = trunk.method if trunk is not None else (arm.branch_from if arm.branch_from in grid.methods else None)
            _require(trunk_method == "ei", f"arms.{name}.branch_from", "an ei arm (or ei) of this grid", arm.branch_from)
    runs = set(grid.methods) | set(grid.arms)
    for name, members in grid.sweeps.items():
        require_name(name, "grid.sweeps")
        _require(name not in runs, f"sweeps.{name}", "a name that is not also a method or an arm", name)
        _require(len(members) >= 1 and all(m in grid.arms for m in members) and len(set(members)) == len(members),
                 f"sweeps.{name}", f"distinct arm names of grid.arms (defined: {sorted(grid.arms)})", members)
    for pair in grid.pairs:
        _require(len(pair) == 2 and all(p in runs | set(grid.sweeps) for p in pair), "pairs",
                 f"pairs [a, b] of methods, arms or sweeps of the grid (defined: {sorted(runs | set(grid.sweeps))})", pair)
    for name in grid.icfil_methods:
        _require(name in methods or name in grid.arms, "icfil_methods",
                 f"methods {list(methods)} or arm names of grid.arms", grid.icfil_methods)


@dataclass(frozen=True)
class DecisionConfig:
    """A study's decision rule, fixed before its runs; the report applies it (purer/report/decision.py).

    The contrast ``pair[0] − pair[1]`` (paired over shared test episodes, mean of the per-seed
    differences with a 95% Student t interval across seeds) is judged at ``first_seeds`` seeds if
    its half-width is at most ``target_half_width``, else at ``max_seeds`` seeds whatever the width.
    """

    pair: tuple[str, ...] = ()  # [a, b]: the contrast a - b (methods, arms or sweeps of the grid)
    n_shot: int = 5
    variant: str = "plain"  # the test variant compared (plain, icfil, ...)
    dataset: str | None = None  # null: the first test dataset
    target_half_width: float = 1.5  # percentage points: the interval half-width the study is powered for
    first_seeds: int = 3  # seeds at the first look
    max_seeds: int = 5  # seeds when the first look is wider than the target; decided there whatever the width

    def __post_init__(self) -> None:
        _require(len(self.pair) == 2 and self.pair[0] != self.pair[1], "pair", "two different run names [a, b]",
                 self.pair)
        _require(self.n_shot >= 1, "n_shot", "at least 1", self.n_shot)
        _require(self.target_half_width > 0, "target_half_width", "a positive number", self.target_half_width)
        _require(self.first_seeds >= 2, "first_seeds", "at least 2 (an interval across seeds)", self.first_seeds)
        _require(self.max_seeds >= self.first_seeds, "max_seeds", f"at least first_seeds ({self.first_seeds})",
                 self.max_seeds)


@dataclass(frozen=True)
class ReportConfig:
    """Tables and figures (paper style)."""

    formats: tuple[str, ...] = ("md", "tex", "csv")
    figure_formats: tuple[str, ...] = ("png", "pdf")
    records: bool = False  # also write small per-run text records under <experiment>/records/ (purer/report/records.py)
    decision: DecisionConfig | None = None  # a decision rule the report applies (tables/decision.{md,json}); null: none


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole run: datasets, pool, meta-training, meta-testing, the run grid and the report."""

    experiment: str = "default"  # first component of every output path
    seed: int = 2022
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
    # speed settings; "auto" picks what is fast on the machine at hand (purer/runtime.py)
    precision: Literal["fp32", "bf16", "auto"] = "fp32"  # autocast dtype for teacher forwards
    channels_last: bool | Literal["auto"] = False  # memory format for conv inputs
    compile: bool | Literal["auto"] = False  # torch.compile the teacher losses (loop) and the meta-training episode
    results_dir: str = "results"
    data_dir: str = "data"  # cache of decoded datasets
    datasets: dict[str, DatasetConfig] = field(default_factory=lambda: {"glyphs": DatasetConfig()})
    pool: PoolConfig = field(default_factory=PoolConfig)
    meta_train: MetaTrainConfig = field(default_factory=MetaTrainConfig)
    meta_test: MetaTestConfig = field(default_factory=MetaTestConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # bring your own pool (examples/byo_pool/README.md): an existing manifest replaces teacher training
    pool_manifest: str | None = None  # path of a pool manifest.yaml; null = train the pool from `pool`
    custom_architectures: dict[str, str] = field(default_factory=dict)  # name -> "module:factory" (imported)

    def __post_init__(self) -> None:
        _require(bool(self.experiment), "experiment", "a non-empty name", self.experiment)
        if self.pool_manifest is not None:
            _require(bool(self.pool_manifest.strip()), "pool_manifest", "a file path or null", self.pool_manifest)
        for name, factory in self.custom_architectures.items():
            _require(ARCHITECTURE_PATTERN.fullmatch(name) is not None, "custom_architectures",
                     "names of letters, digits and '_' (starting with a letter)", name)
            _require(FACTORY_PATTERN.fullmatch(factory) is not None, f"custom_architectures.{name}",
                     "'module.path:callable', e.g. 'my_nets:make_wide_conv'", factory)
        require_name(self.experiment, "experiment")
        for name in self.datasets:
            require_name(name, "datasets")
        _require(self.seed >= 0, "seed", "0 or more", self.seed)
        _require(self.device == "cpu" or self.device.startswith("cuda"), "device", "cpu or cuda[:k]", self.device)
        for name in self.pool.datasets + tuple(self.meta_test.datasets or ()):
            if name not in self.datasets:
                raise ConfigError(
                    f"dataset {name!r} is used but not defined under `datasets` (defined: {sorted(self.datasets)})"
                )
        for name in self.grid.arms:
            arm_meta_train(self, name)  # unknown keys and bad values of an arm's `set` are refused here
        if self.report.decision is not None:
            _check_decision(self)

    @property
    def test_datasets(self) -> tuple[str, ...]:
        """Datasets the meta model is tested on (each separately)."""
        return self.meta_test.datasets or self.pool.datasets


def _check_decision(config: ExperimentConfig) -> None:
    """``report.decision`` names a pair, a shot and a dataset of this config's grid."""
    decision = config.report.decision
    runs = set(config.grid.methods) | set(config.grid.arms) | set(config.grid.sweeps)
    for name in decision.pair:
        _require(name in runs, "report.decision.pair", f"methods, arms or sweeps of the grid (defined: {sorted(runs)})",
                 decision.pair)
    _require(decision.n_shot in config.grid.shots, "report.decision.n_shot", f"one of grid.shots {list(config.grid.shots)}",
             decision.n_shot)
    _require(decision.dataset is None or decision.dataset in config.test_datasets, "report.decision.dataset",
             f"a test dataset {list(config.test_datasets)} or null", decision.dataset)


def arm_meta_train(config: ExperimentConfig, name: str) -> MetaTrainConfig:
    """``meta_train`` with the overrides of arm ``name`` (``grid.arms.<name>.set``), validated as a
    whole by the same dataclass checks. The methods of ``grid.methods`` get ``meta_train`` itself.

    Raises:
        ConfigError: an unknown key or a bad value, naming the arm and the key.
    """
    arm = config.grid.arms.get(name)
    if arm is None or not arm.set:
        return config.meta_train
    where = f"grid.arms.{name}.set"
    raw = to_dict(config.meta_train)
    for key, value in arm.set.items():
        node: Any = raw
        parts = key.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if not isinstance(node, dict) or part not in node or (not last and not isinstance(node[part], dict)):
                section = ".".join(["meta_train", *parts[:depth]])
                valid = sorted(node) if isinstance(node, dict) else []
                raise ConfigError(f"{where}: unknown key meta_train.{_cut(key)} (valid keys in {section}: {valid})")
            if last and isinstance(node[part], dict):
                raise ConfigError(f"{where}: meta_train.{_cut(key)} is a section; set its keys one by one "
                                  f"(e.g. {key}.{sorted(node[part])[0]})")
            if not last:
                node = node[part]
        node[parts[-1]] = value
    try:
        return from_dict(MetaTrainConfig, raw, "meta_train")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


MAX_SHOWN = 80  # characters of a user's value echoed in a message
MAX_MESSAGE = 2000  # characters of a whole config message (a list of names can be long)
MAX_YAML_NODES = 100_000  # values in a config once its aliases are expanded (config.yaml has ~200)

_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = MAX_SHOWN
_SHORT_REPR.maxlist = _SHORT_REPR.maxtuple = _SHORT_REPR.maxdict = _SHORT_REPR.maxset = 10
_SHORT_REPR.maxlevel = 3


def show(value: Any) -> str:
    """``repr(value)`` for a message, at most :data:`MAX_SHOWN` characters (cut with an ellipsis).

    Built with :mod:`reprlib`, so even a huge nested value costs little to show.
    """
    return _cut(_SHORT_REPR.repr(value))


def _require(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {show(value)}")


def _at_most(config: Any, name: str, limit: int) -> None:
    """The documented upper bound of a size or count (config/README.md, "Value ranges")."""
    value = getattr(config, name)
    _require(value <= limit, name, f"at most {limit:_}", value)


def require_name(value: str, key: str) -> None:
    """``value`` is safe as one path component: no ``/``, ``\\``, ``..``, leading dot or control character."""
    _require(
        isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None,
        key,
        "a name usable as one folder name (a letter or digit, then letters, digits, '_', '.' or '-'; "
        "at most 100 characters)",
        value,
    )


def _require_one_of(config: Any, first: str, second: str) -> None:
    """Exactly one of two alternative keys is set; the other is null."""
    a, b = getattr(config, first), getattr(config, second)
    if a is not None and b is not None:
        raise ConfigError(f"{first} / {second}: expected exactly one of them, got both ({first}={a!r}, "
                          f"{second}={b!r}); set {first}: null to use {second}, or {second}: null")
    if a is None and b is None:
        raise ConfigError(f"{first} / {second}: expected exactly one of them, got neither (both null)")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an :class:`ExperimentConfig` from YAML, apply ``key=value`` overrides, validate.

    Args:
        path: a YAML file; ``None`` gives the built-in defaults.
        overrides: dotted ``section.key=value`` strings; values are parsed as YAML.

    Raises:
        ConfigError: naming the file and the dotted key, for unknown keys, wrong types or bad values.
    """
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = read_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(_cap(f"{path}: not valid YAML: {exc}")) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for item in overrides or []:
        apply_override(raw, item)
    try:
        return from_dict(ExperimentConfig, raw, "")
    except ConfigError as exc:
        raise ConfigError(_cap(f"{source}: {exc}")) from None


def _cap(message: str) -> str:
    return _cut(message, MAX_MESSAGE)


def _cut(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` itself when short, else its first ``limit - 1`` characters and an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3``, ``1E-4``, ``5e+2``, ``1.5e3`` as floats.

    YAML 1.1 (PyYAML) wants a dot and a signed exponent, so it reads those as strings; people (and
    config/README.md) write them as numbers. Only this loader is changed, not ``yaml.SafeLoader``.
    """


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


def read_yaml(text: str, source: str) -> Any:
    """Parse config YAML as data: floats as people write them, no duplicate keys, no alias bomb.

    Args:
        text: the YAML document.
        source: the file (or override) named in messages.

    Raises:
        ConfigError: a key given twice in one mapping (naming the dotted key and both lines), or a
            document that expands to more than :data:`MAX_YAML_NODES` values through aliases.
        yaml.YAMLError: text that is not YAML.
    """
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Walk the composed document, expanding aliases, counting values and checking mapping keys."""
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    count = 0
    while stack:
        node, key = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            raise ConfigError(
                f"{source}: the YAML expands to more than {MAX_YAML_NODES:_} values through its aliases "
                "(*name); write the values out or use fewer nested aliases"
            )
        if len(key) > MAX_SHOWN:  # a recursive alias nests without end: keep the message's key short
            key = _cut(key)
        if isinstance(node, yaml.SequenceNode):
            stack += [(item, f"{key}[{i}]") for i, item in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    dotted = _join(key, _cut(key_node.value))
                    line, ident = key_node.start_mark.line + 1, (key_node.tag, key_node.value)
                    if ident in seen:
                        raise ConfigError(f"{source}: duplicate key {dotted} at line {line} (first at line {seen[ident]})")
                    seen[ident] = line
                    stack.append((value_node, dotted))
                else:
                    stack += [(key_node, key), (value_node, key)]


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override to a raw config mapping (in place)."""
    if "=" not in item:
        raise ConfigError(f"override {show(item)}: expected KEY=VALUE, e.g. meta_train.outer_lr=0.0005")
    key, _, text = item.partition("=")
    try:
        value = read_yaml(text, f"override {show(item)}")
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {show(item)}: {show(part)} is not a section")
    node[parts[-1]] = value


def from_dict(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, strictly. ``prefix`` is the dotted path for messages."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted((str(k) for k in set(raw) - set(fields)), key=str)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key {where}{_cut(unknown[0])} (valid keys{' in ' + prefix if prefix else ''}: {sorted(fields)})"
        )
    kwargs = {name: _convert(hints[name], raw[name], _join(prefix, name)) for name in raw}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        message = str(exc)
        if prefix and not message.startswith(prefix):
            message = f"{prefix}.{message}"
        raise ConfigError(message) from None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(options) == 1 else f"{key}: expected {_describe(hint)}, got {show(value)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {show(value)}")
        return value
    if origin is tuple:
        if isinstance(value, (str, int, float, bool)) and not isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {show(value)}")
        item_hint = args[0]
        return tuple(_convert(item_hint, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {show(value)}")
        return {str(k): _convert(args[1], v, f"{key}.{_cut(str(k))}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {show(value)}")
        if not -(2**63) <= value < 2**63:
            raise ConfigError(f"{key}: expected a 64-bit integer, got {show(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {show(value)}")
        if not math.isfinite(value):  # every float key, including keys added later: no .inf / .nan
            raise ConfigError(f"{key}: expected a finite number, got {show(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {show(value)}")
        return value
    raise ConfigError(f"{key}: unsupported config type {hint!r}")


def _describe(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    names = [getattr(a, "__name__", str(a)) for a in args]
    return " or ".join(names) + (" or null" if type(None) in typing.get_args(hint) else "")


def to_dict(config: Any) -> Any:
    """A plain, YAML-serialisable dict of a config (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    return config
