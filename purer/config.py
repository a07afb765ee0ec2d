"""Typed, frozen configuration loaded from commented YAML.

One frozen dataclass per stage, nested into :class:`ExperimentConfig`. The loader rejects unknown
keys, wrong types and impossible values with a message that names the file and the dotted key.
Dotted overrides (``--set meta_train.outer_lr=0.0005``) are applied to the raw YAML before
validation, so they go through exactly the same checks.

Defaults follow the released PURER scripts (algorithm.md §2.9) unless a comment says otherwise.
"""

from __future__ import annotations

import dataclasses
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
        _require(self.channels in (None, 1, 3), "channels", "1, 3 or null", self.channels)
        for name in ("train_classes", "val_classes", "test_classes"):
            _require(getattr(self, name) >= 2, name, "at least 2", getattr(self, name))
        _require(self.images_per_class >= 2, "images_per_class", "at least 2", self.images_per_class)
        if (self.mean is None) != (self.std is None):
            raise ConfigError("mean and std must be given together (or both null)")
        if self.std is not None:
            _require(all(s > 0 for s in self.std), "std", "positive values", self.std)


@dataclass(frozen=True)
class PoolConfig:
    """The pool of pre-trained teachers (algorithm.md §1.1-1.2)."""

    datasets: tuple[str, ...] = ("glyphs",)  # names in `datasets`; global class ids follow this order
    partition: Literal["disjoint", "overlapping"] = "disjoint"  # paper blocks / PURER-Plus random sets
    n_way: int = 5  # classes per teacher (N)
    n_teachers: int | None = None  # overlapping only: number of teachers M
    max_teachers: int | None = None  # keep only the first k teachers (pool-size ablation)
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
        _require(len(self.datasets) >= 1, "datasets", "at least one dataset name", self.datasets)
        _require(len(self.architectures) >= 1, "architectures", "at least one name", self.architectures)
        _require(self.epochs >= 1, "epochs", "at least 1", self.epochs)
        _require(self.batch_size >= 1, "batch_size", "at least 1", self.batch_size)
        _require(self.lr > 0, "lr", "a positive number", self.lr)
        _require(0 < self.val_fraction < 1, "val_fraction", "in (0, 1)", self.val_fraction)
        _require(self.conv4_width >= 1, "conv4_width", "at least 1", self.conv4_width)
        if self.partition == "overlapping":
            _require(
                self.n_teachers is not None and self.n_teachers >= 1,
                "n_teachers",
                "a positive int when partition is 'overlapping'",
                self.n_teachers,
            )
        if self.max_teachers is not None:
            _require(self.max_teachers >= 1, "max_teachers", "at least 1", self.max_teachers)


@dataclass(frozen=True)
class LearnerConfig:
    """The meta-learner (algorithm.md §2.5, §9)."""

    algorithm: Literal["maml", "anil", "protonet"] = "maml"
    first_order: bool = False  # MAML/ANIL: drop second-order terms in the outer gradient
    inner_lr: float = 0.01  # alpha
    inner_steps: int = 1  # train-time inner steps (released scripts: 1; PURER-Plus: 5)

    def __post_init__(self) -> None:
        _require(self.inner_lr > 0, "inner_lr", "a positive number", self.inner_lr)
        _require(self.inner_steps >= 0, "inner_steps", "0 or more", self.inner_steps)


@dataclass(frozen=True)
class InversionConfig:
    """The dynamic dataset and its inversion loss (algorithm.md §2.2-2.3)."""

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
        _require(self.data_lr > 0, "data_lr", "a positive number", self.data_lr)
        for name in ("ce_weight", "tv_weight", "bn_weight", "l2_weight", "first_bn_multiplier"):
            _require(getattr(self, name) >= 0, name, "0 or more", getattr(self, name))
        _require(self.jitter >= 0, "jitter", "0 or more", self.jitter)
        if self.teachers_per_step is not None:
            _require(self.teachers_per_step >= 1, "teachers_per_step", "at least 1", self.teachers_per_step)


@dataclass(frozen=True)
class CurriculumConfig:
    """The gradient switch of ECI (algorithm.md §2.6)."""

    adv_scale: float = 10.0  # weight of the reversed outer loss
    warmup: int = 4000  # meta-iterations before the first reversed step
    warmup_fraction: float | None = None  # if set, warm-up = fraction x iterations (short runs)
    patience: int = 6  # non-improving meta-iterations before the switch fires

    def __post_init__(self) -> None:
        _require(self.adv_scale >= 0, "adv_scale", "0 or more", self.adv_scale)
        _require(self.warmup >= 0, "warmup", "0 or more", self.warmup)
        _require(self.patience >= 1, "patience", "at least 1", self.patience)
        if self.warmup_fraction is not None:
            _require(0 <= self.warmup_fraction <= 1, "warmup_fraction", "in [0, 1]", self.warmup_fraction)


@dataclass(frozen=True)
class MetaTrainConfig:
    """ECI meta-training and the training-time baselines (algorithm.md §2, §6)."""

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
        _require(self.n_way >= 2, "n_way", "at least 2", self.n_way)
        _require(self.n_query >= 1, "n_query", "at least 1", self.n_query)
        _require(self.meta_batch_size >= 1, "meta_batch_size", "at least 1", self.meta_batch_size)
        _require(self.outer_lr > 0, "outer_lr", "a positive number", self.outer_lr)
        _require(self.iterations >= 0, "iterations", "0 or more", self.iterations)
        _require(self.val_interval >= 1, "val_interval", "at least 1", self.val_interval)
        _require(self.val_episodes >= 1, "val_episodes", "at least 1", self.val_episodes)
        _require(self.checkpoint_interval >= 1, "checkpoint_interval", "at least 1", self.checkpoint_interval)


@dataclass(frozen=True)
class IcfilConfig:
    """ICFIL test-time calibration. A reconstruction of the paper's description (algorithm.md §3.3):
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
        _require(self.inversion_steps >= 0, "inversion_steps", "0 or more", self.inversion_steps)
        _require(self.temperature > 0, "temperature", "a positive number", self.temperature)
        for name in ("inversion_lr", "feature_lr", "head_lr"):
            _require(getattr(self, name) > 0, name, "a positive number", getattr(self, name))


@dataclass(frozen=True)
class MetaTestConfig:
    """Meta-testing on fixed, seeded episodes (algorithm.md §4)."""

    datasets: tuple[str, ...] | None = None  # test datasets; None = the pool's datasets
    n_way: int = 5
    n_query: int = 15
    episodes: int = 600
    inner_steps: int = 1  # test-time inner steps (released scripts: 1; PURER-Plus: 10)
    inner_lr: float | None = None  # None = meta_train.learner.inner_lr
    selection: Literal["val", "last", "best-on-test"] = "val"  # best-on-test = authors' protocol, labelled
    best_on_test_beside: bool = True  # plain tests also score every snapshot; the best is reported, labelled
    matched_steps: tuple[int, ...] = (10, 16)  # inner steps of the plain controls at ICFIL's update budget
    episode_batch: int = 1  # test episodes calibrated together by a vmapped ICFIL (GPUs); 1 = per episode
    icfil: IcfilConfig = field(default_factory=IcfilConfig)

    def __post_init__(self) -> None:
        _require(self.n_way >= 2, "n_way", "at least 2", self.n_way)
        _require(self.n_query >= 1, "n_query", "at least 1", self.n_query)
        _require(self.episodes >= 1, "episodes", "at least 1", self.episodes)
        _require(self.inner_steps >= 0, "inner_steps", "0 or more", self.inner_steps)
        _require(all(k >= 1 for k in self.matched_steps), "matched_steps", "values of at least 1", self.matched_steps)
        _require(self.episode_batch >= 1, "episode_batch", "at least 1", self.episode_batch)


Method = Literal["purer", "ei", "random", "average"]


@dataclass(frozen=True)
class GridConfig:
    """Which runs the pipeline expands (one Snakemake job per combination)."""

    methods: tuple[Method, ...] = ("purer", "ei", "random", "average")
    shots: tuple[int, ...] = (1, 5)
    seeds: tuple[int, ...] = (0,)
    icfil: tuple[bool, ...] = (False, True)  # meta-test with and without ICFIL
    icfil_methods: tuple[Method, ...] = ("purer",)  # methods that also get an ICFIL evaluation
    icfil_controls: tuple[Literal["matched", "noise", "support"], ...] = ("matched", "noise", "support")  # controls run beside ICFIL (purer/variants.py)

    def __post_init__(self) -> None:
        _require(len(self.methods) >= 1, "methods", "at least one method", self.methods)
        _require(all(s >= 1 for s in self.shots), "shots", "values of at least 1", self.shots)


@dataclass(frozen=True)
class ReportConfig:
    """Tables and figures (paper style)."""

    formats: tuple[str, ...] = ("md", "tex", "csv")
    figure_formats: tuple[str, ...] = ("png", "pdf")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole run: datasets, pool, meta-training, meta-testing, the run grid and the report."""

    experiment: str = "default"  # first component of every output path
    seed: int = 2022
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", ...
    precision: Literal["fp32", "bf16"] = "fp32"  # autocast dtype for teacher forwards
    channels_last: bool = False  # memory format for conv inputs
    compile: bool = False  # torch.compile the teacher losses (loop) and the meta-training episode
    results_dir: str = "results"
    data_dir: str = "data"  # cache of decoded datasets
    datasets: dict[str, DatasetConfig] = field(default_factory=lambda: {"glyphs": DatasetConfig()})
    pool: PoolConfig = field(default_factory=PoolConfig)
    meta_train: MetaTrainConfig = field(default_factory=MetaTrainConfig)
    meta_test: MetaTestConfig = field(default_factory=MetaTestConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def __post_init__(self) -> None:
        _require(bool(self.experiment), "experiment", "a non-empty name", self.experiment)
        _require(self.device == "cpu" or self.device.startswith("cuda"), "device", "cpu or cuda[:k]", self.device)
        for name in self.pool.datasets + tuple(self.meta_test.datasets or ()):
            if name not in self.datasets:
                raise ConfigError(
                    f"dataset {name!r} is used but not defined under `datasets` (defined: {sorted(self.datasets)})"
                )

    @property
    def test_datasets(self) -> tuple[str, ...]:
        """Datasets the meta model is tested on (each separately)."""
        return self.meta_test.datasets or self.pool.datasets


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _require(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


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
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for item in overrides or []:
        apply_override(raw, item)
    try:
        return from_dict(ExperimentConfig, raw, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``a.b.c=value`` override to a raw config mapping (in place)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. meta_train.outer_lr=0.0005")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    node[parts[-1]] = value


def from_dict(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a mapping, strictly. ``prefix`` is the dotted path for messages."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown key {where}{unknown[0]} (valid keys{' in ' + prefix if prefix else ''}: {sorted(fields)})"
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
        raise ConfigError(errors[0] if len(options) == 1 else f"{key}: expected {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, (str, int, float, bool)) and not isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_hint = args[0]
        return tuple(_convert(item_hint, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
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
