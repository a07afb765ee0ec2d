"""The evaluation loop: adaptation, scoring, mean and 95% CI on fixed episodes (docs/method.md §4).

Pure: it scores given parameters on given episodes and writes nothing. Meta-training validates
with it (:mod:`purer.meta.train`); the meta-test step (:mod:`purer.meta.meta_test`) adds the
checkpoint selection, the calibration hooks (ICFIL) and the output files.

- Per episode the meta model is adapted on the real support set with a **first-order** inner loop
  (``create_graph=False``; gradients are taken only for the adaptation), optionally calibrated
  (a hook, e.g. ICFIL), and the query is predicted under ``torch.no_grad()``.
- The meta model's BatchNorm has no running statistics, so it always normalises with the current
  batch: the query is predicted as one batch (transductive over the query, as the reference code).
- Accuracies (percent) stay on the device until the end of the evaluation (one synchronisation).
- ``ci95 = 1.96 * sigma / sqrt(n)`` with the *population* standard deviation (divisor n).
- When the test dataset's image size differs from the meta model's input size (multi-dataset
  pools, e.g. a model trained at 32 px tested on an 84 px dataset), the normalised test images are
  resized once to the model's input size with bilinear, anti-aliased interpolation.
"""

from __future__ import annotations

import hashlib
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from purer.data.cache import SplitData
from purer.data.episodes import EpisodeSet, materialise
from purer.meta.learners import AdaptedState, Episode, GradientLearner, Params, ProtoNet
from purer.tracking import progress

logger = logging.getLogger(__name__)


# calibrate(model, adapted state, episode, episode index) -> calibrated state
Calibrate = Callable[[nn.Module, AdaptedState, Episode, int], AdaptedState]
# calibrate_batch(model, adapted states, episodes, episode indices) -> calibrated states (same order)
CalibrateBatch = Callable[[nn.Module, list[AdaptedState], list[Episode], list[int]], list[AdaptedState]]


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def confidence_interval(accuracies: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% half-width ``1.96 * sigma / sqrt(n)``, sigma the population std (docs/method.md §4).

    Args:
        accuracies: per-episode accuracies (percent in, percent out).

    Returns:
        (mean, ci95).
    """
    values = [float(a) for a in accuracies]
    if not values:
        raise ValueError("confidence_interval needs at least one accuracy")
    return statistics.fmean(values), 1.96 * statistics.pstdev(values) / math.sqrt(len(values))


def episodes_digest(episodes: EpisodeSet) -> str:
    """A short fingerprint of the episodes (classes and image indices, in order).

    Stored in ``metrics.json`` so the report can check that two results it pairs episode by
    episode were scored on identical episodes.
    """
    digest = hashlib.sha256()
    for tensor in (episodes.classes, episodes.indices):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.to(torch.int64).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def normalised_images(split: SplitData, device: torch.device | str, input_size: int | None = None) -> torch.Tensor:
    """The whole split normalised once on ``device``, resized to ``input_size`` if it differs.

    Returns:
        float32 [N, C, S, S] with S = ``input_size`` (or the split's own size).
    """
    images = split.normalise(split.images.to(device))
    if input_size is not None and input_size != split.image_size:
        logger.info("resizing test images from %d px to the meta model's %d px", split.image_size, input_size)
        images = F.interpolate(images, size=(input_size, input_size), mode="bilinear", antialias=True, align_corners=False)
    return images


def adapt_first_order(
    learner: GradientLearner | ProtoNet, model: nn.Module, params: Params, episode: Episode, inner_steps: int
) -> AdaptedState:
    """Test-time adaptation on the support set: first-order, no graph kept (docs/method.md §8 item 7).

    Gradients are enabled only for a gradient learner with ``inner_steps > 0``, and only the
    parameters it adapts require them (ANIL: the head); the returned state is detached.
    """
    needs_grad = isinstance(learner, GradientLearner) and inner_steps > 0
    adapted = set(learner.adapted_names(params)) if needs_grad else set()
    fast = {name: p.detach().requires_grad_(name in adapted) for name, p in params.items()}
    with torch.set_grad_enabled(needs_grad):
        state = learner.adapt(model, fast, episode.support_x, episode.support_y, inner_steps, False)
    prototypes = None if state.prototypes is None else state.prototypes.detach()
    return AdaptedState({name: p.detach() for name, p in state.params.items()}, prototypes)


def evaluate(
    model: nn.Module,
    params: Params,
    learner: GradientLearner | ProtoNet,
    split: SplitData,
    episodes: EpisodeSet,
    inner_steps: int,
    device: torch.device | str = "cpu",
    calibrate: Calibrate | None = None,
    input_size: int | None = None,
    calibrate_batch: CalibrateBatch | None = None,
    episode_batch: int = 1,
) -> dict[str, Any]:
    """Score a meta model on fixed episodes (docs/method.md §4).

    Args:
        model: the meta model (batch-statistics BN), on ``device``.
        params: its parameters ``{name: tensor}`` on ``device``.
        learner: adapts on each support set and predicts the query.
        split: the test split the episodes index into.
        episodes: fixed episodes over ``split``.
        inner_steps: test-time inner-loop steps.
        calibrate: optional hook ``(model, state, episode, index) -> state`` run after adaptation
            (ICFIL).
        input_size: the model's input side; test images are resized to it if it differs.
        calibrate_batch: optional hook ``(model, states, episodes, indices) -> states`` run after
            adaptation on ``episode_batch`` episodes at a time (batched ICFIL); used instead of
            ``calibrate`` when given.
        episode_batch: episodes per ``calibrate_batch`` call.

    Returns:
        ``accuracy`` and ``ci95`` (percent), ``accuracies`` (per episode, percent),
        ``episodes``, ``seconds_total``, ``seconds_per_episode``.
    """
    start = time.perf_counter()
    images = normalised_images(split, device, input_size)
    correct = torch.zeros(episodes.n_episodes, device=device)
    group = episode_batch if calibrate_batch is not None else 1
    starts = range(0, episodes.n_episodes, group)
    for start in progress(starts, desc="meta-test"):
        indices = list(range(start, min(start + group, episodes.n_episodes)))
        batch = [materialise(split, episodes, index, device, images=images) for index in indices]
        states = [adapt_first_order(learner, model, params, episode, inner_steps) for episode in batch]
        if calibrate_batch is not None:
            states = calibrate_batch(model, states, batch, indices)
        elif calibrate is not None:
            states = [calibrate(model, s, e, i) for s, e, i in zip(states, batch, indices, strict=True)]
        for index, state, episode in zip(indices, states, batch, strict=True):
            with torch.no_grad():
                predictions = learner.predict(model, state, episode.query_x).argmax(dim=1)
            correct[index] = (predictions == episode.query_y).float().mean() * 100.0
    accuracies = correct.cpu().tolist()  # the one device synchronisation
    seconds = time.perf_counter() - start
    mean, ci95 = confidence_interval(accuracies)
    return {
        "accuracy": mean,
        "ci95": ci95,
        "accuracies": accuracies,
        "episodes": episodes.n_episodes,
        "seconds_total": seconds,
        "seconds_per_episode": seconds / episodes.n_episodes,
    }
