"""The gradient switch of ECI and the reversed outer loss (algorithm.md §2.6, §2.8).

The dynamic dataset gets one Adam step per meta-iteration. Normally that step minimises the
inversion loss only; when the :class:`GradientSwitch` is on, the reversed outer loss of one freshly
sampled, non-detached pseudo episode is added (:func:`reversed_outer_loss`), which pushes the
images towards tasks the current meta model finds harder. The switch turns off again right after
that one step (:meth:`GradientSwitch.consume`).

When the switch turns on (algorithm.md §2.6):

- **warm-up**: at meta-iteration ``it == warmup`` (iterations count from 1);
- **plateau** ("the meta model converges"): for ``it > warmup`` and while the switch is off, the
  mean training query accuracy of the meta-batch is compared with its running maximum; a strictly
  larger value resets a counter, anything else increments it; at ``patience`` the switch turns on,
  the counter resets and the maximum is cleared. Two reversed steps are therefore at least
  ``patience + 1`` meta-iterations apart.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from purer.config import CurriculumConfig
from purer.meta.learners import Episode, GradientLearner, ProtoNet, episode_loss


def effective_warmup(curriculum: CurriculumConfig, iterations: int) -> int:
    """Warm-up in meta-iterations: ``round(warmup_fraction * iterations)`` if the fraction is set."""
    if curriculum.warmup_fraction is not None:
        return int(round(curriculum.warmup_fraction * iterations))
    return curriculum.warmup


class GradientSwitch:
    """Decides when the data step adds the reversed outer loss (algorithm.md §2.6).

    Args:
        warmup: the meta-iteration at which the switch first turns on.
        patience: non-improving meta-iterations before the switch turns on again.
        enabled: ``False`` gives a switch that never turns on (the "EI" ablation).
    """

    def __init__(self, warmup: int, patience: int, enabled: bool = True) -> None:
        self.warmup = int(warmup)
        self.patience = int(patience)
        self.enabled = enabled
        self._on = False
        self._best: float | None = None
        self._counter = 0

    @classmethod
    def from_config(cls, curriculum: CurriculumConfig, iterations: int, enabled: bool = True) -> GradientSwitch:
        """A switch with the effective warm-up of a run of ``iterations`` meta-iterations."""
        return cls(effective_warmup(curriculum, iterations), curriculum.patience, enabled)

    @property
    def is_on(self) -> bool:
        """Whether the next data step adds the reversed outer loss."""
        return self._on

    def consume(self) -> None:
        """Turn the switch off after the one reversed data step it allowed."""
        self._on = False

    def observe(self, iteration: int, train_accuracy: float) -> None:
        """Feed back the meta-batch's mean training query accuracy after meta-iteration ``iteration``.

        Args:
            iteration: the meta-iteration just finished (counting from 1).
            train_accuracy: mean query accuracy of its episodes (any fixed unit, e.g. percent).
        """
        if not self.enabled:
            return
        if iteration == self.warmup:
            self._on = True
            return
        if iteration < self.warmup or self._on:
            return
        if self._best is None or train_accuracy > self._best:
            self._best = float(train_accuracy)
            self._counter = 0
            return
        self._counter += 1
        if self._counter >= self.patience:
            self._on = True
            self._counter = 0
            self._best = None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the switch exactly."""
        return {
            "warmup": self.warmup,
            "patience": self.patience,
            "enabled": self.enabled,
            "on": self._on,
            "best": self._best,
            "counter": self._counter,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self.warmup = int(state["warmup"])
        self.patience = int(state["patience"])
        self.enabled = bool(state["enabled"])
        self._on = bool(state["on"])
        self._best = None if state["best"] is None else float(state["best"])
        self._counter = int(state["counter"])


def reversed_outer_loss(
    learner: GradientLearner | ProtoNet,
    meta_model: nn.Module,
    params: dict[str, torch.Tensor],
    episode: Episode,
    steps: int,
    adv_scale: float,
) -> torch.Tensor:
    """``-adv_scale * L_outer`` of the current meta model on a non-detached pseudo episode.

    The inner loop is always second-order (algorithm.md §2.6), so the support images receive
    gradient through the adapted parameters and the query images through the outer loss. The meta
    parameters enter as detached copies: differentiate the result with
    ``torch.autograd.grad(loss, [images])`` only, so no gradient is computed or accumulated for the
    meta model (algorithm.md §8 item 5).

    Args:
        learner: the meta-learner (a first-order one is run second-order here).
        meta_model: the module ``params`` belong to.
        params: the meta parameters θ (not modified, no gradient reaches them).
        episode: a pseudo episode sampled from the images with their graph kept.
        steps: inner steps (the train-time number).
        adv_scale: weight of the reversed term.

    Returns:
        A 0-d tensor whose graph reaches the episode's images.
    """
    if isinstance(learner, GradientLearner) and learner.first_order:
        learner = GradientLearner(learner.inner_lr, first_order=False, head_only=learner.head_only)
    frozen = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    loss, _ = episode_loss(learner, meta_model, frozen, episode, steps, create_graph=True)
    return -adv_scale * loss
