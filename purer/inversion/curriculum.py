"""The gradient switch of ECI and the strength of the reversed outer loss (docs/method.md §2.6, §2.8).

The dynamic dataset gets one Adam step per meta-iteration. Normally that step minimises the
inversion loss only; when the :class:`GradientSwitch` is on, the reversed outer loss of one freshly
sampled, non-detached pseudo episode is added (:func:`purer.meta.learners.reversed_outer_loss`), which pushes the
images towards tasks the current meta model finds harder. The switch turns off again right after
that one step (:meth:`GradientSwitch.consume`).

When the switch turns on (docs/method.md §2.6):

- **warm-up**: at meta-iteration ``it == warmup`` (iterations count from 1);
- **plateau** ("the meta model converges"): for ``it > warmup`` and while the switch is off, the
  mean training query accuracy of the meta-batch is compared with its running maximum; a strictly
  larger value resets a counter, anything else increments it; at ``patience`` the switch turns on,
  the counter resets and the maximum is cleared. Two reversed steps are therefore at least
  ``patience + 1`` meta-iterations apart.

The warm-up is ``curriculum.warmup`` meta-iterations (studies) or, for smoke runs only,
``curriculum.warmup_fraction`` of the run (exactly one of them is set).

Strength (docs/reversed-strength.md). The data loss of a step over the teachers at positions
``order`` with weights w_j (:func:`purer.inversion.teacher_pool.teacher_weights`) is
``Σ_j w_j L_inv,j − a · L_outer``; the images of class c get the inversion gradient with coefficient
w̄_c = Σ of the weights of the step's teachers that know c. The *per-class strength* is the ratio of
the two coefficients, ρ_c = a_c / w̄_c:

- ``adv_scale`` (the reference code's meaning): a_c = adv_scale for every class, so with
  ``triangular`` weights ρ_c = adv_scale / (K − j) for the classes of teacher j of K;
- ``adv_strength``: the reversed term's gradient on class c's images is multiplied by w̄_c (by the
  mean weight of the step for a class no teacher of the step inverts), so ρ_c = adv_strength for
  every class, whatever the weighting and the pool size.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from purer.config import (  # effective_warmup: re-exported (one definition, torch-free)
    CurriculumConfig,
    effective_warmup,
)
from purer.inversion.teacher_pool import teacher_weights
from purer.models.manifest import TeacherEntry


def class_inversion_weights(teachers: Sequence[TeacherEntry], order: Sequence[int], weighting: str) -> dict[int, float]:
    """w̄_c of every class a data step inverts: the summed weights of its teachers in the step.

    Args:
        teachers: the pool's teacher entries (field ``classes``: global ids).
        order: pool positions of the step's teachers, in weighting order.
        weighting: ``equal`` or ``triangular`` (``meta_train.inversion.teacher_weighting``).
    """
    weights: dict[int, float] = {}
    for weight, position in zip(teacher_weights(len(order), weighting), order, strict=True):
        for c in teachers[position].classes:
            weights[int(c)] = weights.get(int(c), 0.0) + weight
    return weights


def reversed_coefficients(
    curriculum: CurriculumConfig, teachers: Sequence[TeacherEntry], order: Sequence[int], weighting: str
) -> tuple[float, dict[int, float] | None]:
    """The reversed term's scalar coefficient and its per-class gradient multipliers (None: all 1).

    ``adv_scale``: (adv_scale, None). ``adv_strength``: (adv_strength, {c: w̄_c}) for every class of
    the pool, with the step's mean teacher weight for classes no teacher of the step inverts.
    """
    if curriculum.adv_strength is None:
        return float(curriculum.adv_scale), None
    inverted = class_inversion_weights(teachers, order, weighting)
    mean_weight = statistics.fmean(teacher_weights(len(order), weighting))
    every = {int(c) for entry in teachers for c in entry.classes}
    return float(curriculum.adv_strength), {c: inverted.get(c, mean_weight) for c in sorted(every)}


def class_strengths(
    curriculum: CurriculumConfig, teachers: Sequence[TeacherEntry], order: Sequence[int], weighting: str
) -> dict[int, float]:
    """ρ_c = reversed coefficient / inversion coefficient of each class the step inverts.

    The reference code (``triangular``, ``adv_scale``) gives adv_scale / (K − j) to the classes of
    the teacher at position j; ``adv_strength`` gives adv_strength to every class.
    """
    coefficient, multipliers = reversed_coefficients(curriculum, teachers, order, weighting)
    inverted = class_inversion_weights(teachers, order, weighting)
    return {c: coefficient * (1.0 if multipliers is None else multipliers[c]) / w for c, w in inverted.items()}


class GradientSwitch:
    """Decides when the data step adds the reversed outer loss (docs/method.md §2.6).

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
