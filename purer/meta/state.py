"""What one meta-training run holds: the fixed set-up and the changing state (docs/method.md §2.8).

:class:`MetaTrainRun` is fixed for the run (config, pool manifest, validation episodes, the
checkpoint fingerprint); :class:`MetaTrainState` is everything that changes and that
``checkpoint.pt`` holds. The engine (:mod:`purer.meta.engine`) runs one meta-iteration on them;
the driver (:mod:`purer.meta.train`) builds them, validates, checkpoints and logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from purer.config import ExperimentConfig, MetaTrainConfig
from purer.data.cache import SplitData
from purer.data.episodes import EpisodeSet
from purer.inversion.curriculum import GradientSwitch
from purer.inversion.dataset import DynamicDataset
from purer.inversion.teacher_pool import ResidentPool
from purer.meta.init import MetaModelSpec
from purer.meta.learners import EpisodeFn, GradientLearner, ProtoNet
from purer.models.manifest import Manifest


@dataclass
class MetaTrainRun:
    """What is fixed for one run. ``info`` holds the ``meta_model.pt`` entries mean, std, method,
    n_shot, seed and learner."""

    config: ExperimentConfig
    method: str
    n_shot: int
    seed: int
    out_dir: Path
    device: torch.device
    manifest: Manifest
    spec: MetaModelSpec
    val_split: SplitData
    val_episodes: EpisodeSet
    fingerprint: dict[str, Any]
    info: dict[str, Any]
    arm: str | None = None  # the arm's name (grid.arms) when it is not the method's
    save_warmup: bool = False  # an arm branches from this run: save its warm-up state (purer.meta.branch)
    branch: tuple[ExperimentConfig, Path] | None = None  # start from this ei trunk (config, run folder) at the warm-up

    @property
    def mt(self) -> MetaTrainConfig:
        return self.config.meta_train


@dataclass
class MetaTrainState:
    """Everything that changes during meta-training (what ``checkpoint.pt`` holds)."""

    meta_model: nn.Module
    params: dict[str, torch.Tensor]
    learner: GradientLearner | ProtoNet
    optimizer: torch.optim.Optimizer | None = None
    pool: ResidentPool | None = None
    data: DynamicDataset | None = None
    switch: GradientSwitch | None = None
    generators: dict[str, torch.Generator] = field(default_factory=dict)
    iteration: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"accuracy": None, "ci95": None, "iteration": None})
    curve_lines: int = 0
    val_lines: int = 0
    switch_events: int = 0
    val_seconds: float = 0.0
    resumed_from: int | None = None
    best_model: dict[str, Any] | None = None  # the meta_model.pt payload (rewritten on resume if deleted)
    episode_fn: EpisodeFn | None = None  # the meta step's episode loss (compiled with ``compile``)
    branched_from: dict[str, Any] | None = None  # {run, iteration} of the trunk this run started from
