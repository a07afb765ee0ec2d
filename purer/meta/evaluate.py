"""The evaluation loop: adaptation, scoring, mean and 95% CI on fixed episodes (docs/method.md §4).

Pure: it scores given parameters on given episodes and writes nothing. Meta-training validates
with it (:mod:`purer.meta.train`); the meta-test step (:mod:`purer.meta.meta_test`) adds the
checkpoint selection, the calibration hooks (ICFIL) and the output files.

- Per episode the meta model is adapted on the real support set with a **first-order** inner loop
  (``create_graph=False``; gradients are taken only for the adaptation), optionally calibrated
  (a hook, e.g. ICFIL), and the query is predicted under ``torch.no_grad()``.
- The meta model's BatchNorm has no running statistics, so it always normalises with the current
  batch: the query is predicted as one batch (transductive over the query, as the reference code).
- ``adapt_batch`` > 1 adapts and scores that many episodes at once (gradient learners without a
  calibration hook: plain tests, the matched-steps controls, meta-training validation): one
  ``torch.func.vmap``-ed forward over the stacked episodes, one backward of the summed support losses
  (each episode's loss reaches only its own copy of the parameters, so this is every episode's own
  gradient), one vmapped query forward. The same computation as the per-episode loop, up to
  floating-point rounding; memory grows with the group (``adapt_batch`` episodes' activations at once).
- ``compile`` runs each plain episode (adaptation and query prediction, no calibration hook, a
  gradient learner) as one ``torch.compile``-d graph in channels-last memory: 2.7x faster per episode
  on a 2-core AVX2 CPU (benchmarks/README.md, "Pipeline wall time"). The episodes of a test share one
  shape, so it compiles once per shape; the machine-wide compile cache (:mod:`purer.runtime`) spares
  later jobs most of that cost.
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
from torch.func import vmap

from purer.compiler import compile_graph
from purer.data.cache import SplitData
from purer.data.episodes import EpisodeSet, materialise
from purer.meta.learners import AdaptedState, Episode, GradientLearner, Params, ProtoNet, logits
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


def adapt_episodes_first_order(
    learner: GradientLearner,
    model: nn.Module,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    inner_steps: int,
) -> tuple[Params, Params]:
    """:func:`adapt_first_order` for G episodes at once (a gradient learner).

    Args:
        params: the meta parameters (shared by every episode).
        support_x: [G, S, C, H, W]; support_y: [G, S].

    Returns:
        (adapted, shared): the adapted parameters stacked per episode ``{name: [G, ...]}`` (empty when
        ``inner_steps`` is 0) and the parameters every episode shares ``{name: tensor}`` (ANIL's feature
        extractor; all of them when nothing is adapted). Detached.
    """
    names = learner.adapted_names(params) if inner_steps > 0 else []
    shared = {name: p.detach() for name, p in params.items() if name not in names}
    groups = support_x.shape[0]
    adapted = {name: params[name].detach().unsqueeze(0).expand(groups, *params[name].shape) for name in names}

    def support_loss(episode: Params, common: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = logits(model, episode | common, x)  # at least fp32, as the learners (float64 stays float64)
        return F.cross_entropy(out.to(torch.promote_types(out.dtype, torch.float32)), y)

    for _ in range(inner_steps):
        leaves = {name: t.detach().requires_grad_(True) for name, t in adapted.items()}
        with torch.enable_grad():
            losses = vmap(support_loss, in_dims=(0, None, 0, 0))(leaves, shared, support_x, support_y)  # [G]
            # episode g's loss depends only on its own copy: the gradient of the sum is each episode's own
            grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        adapted = {name: leaves[name].detach() - learner.inner_lr * g for name, g in zip(leaves, grads, strict=True)}
    return adapted, shared


def episode_accuracies(
    learner: GradientLearner,
    model: nn.Module,
    params: Params,
    batch: Sequence[Episode],
    inner_steps: int,
) -> torch.Tensor:
    """Query accuracies (percent) [G] of G same-shaped episodes adapted and scored together."""
    support_x = torch.stack([e.support_x for e in batch])
    support_y = torch.stack([e.support_y for e in batch])
    query_x = torch.stack([e.query_x for e in batch])
    query_y = torch.stack([e.query_y for e in batch])
    adapted, shared = adapt_episodes_first_order(learner, model, params, support_x, support_y, inner_steps)

    def query_logits(episode: Params, common: Params, x: torch.Tensor) -> torch.Tensor:
        return logits(model, episode | common, x)

    with torch.no_grad():
        predictions = vmap(query_logits, in_dims=(0, None, 0))(adapted, shared, query_x).argmax(dim=2)  # [G, Q]
    return (predictions == query_y).float().mean(dim=1) * 100.0


EpisodeAccuracy = Callable[[Params, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# compiled episodes by (architecture, learner, steps): validations and checkpoints of one process reuse
# one graph (the module only supplies the architecture: every parameter comes from ``params``)
_COMPILED: dict[tuple, EpisodeAccuracy] = {}


def episode_accuracy_fn(learner: GradientLearner, model: nn.Module, inner_steps: int) -> EpisodeAccuracy:
    """One plain episode as a compiled function ``(params, support_x, support_y, query_x, query_y) ->
    accuracy`` (percent, 0-d): first-order adaptation, then the query predicted, in channels-last memory.

    Models of the same architecture (``repr``, no buffers) share one compiled function.
    """
    key = (repr(model), type(learner), learner.inner_lr, learner.head_only, inner_steps)
    if key in _COMPILED and not any(True for _ in model.buffers()):
        return _COMPILED[key]

    def accuracy(params: Params, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                 query_y: torch.Tensor) -> torch.Tensor:
        support_x = support_x.contiguous(memory_format=torch.channels_last)
        query_x = query_x.contiguous(memory_format=torch.channels_last)
        state = learner.adapt(model, params, support_x, support_y, inner_steps, False)
        predictions = learner.predict(model, AdaptedState({n: p.detach() for n, p in state.params.items()}),
                                      query_x).argmax(dim=1)
        return (predictions == query_y).float().mean() * 100.0

    compiled = compile_graph(accuracy)
    if not any(True for _ in model.buffers()):
        _COMPILED[key] = compiled
    return compiled


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
    adapt_batch: int = 1,
    compile: bool = False,
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
        adapt_batch: episodes adapted and scored together (:func:`episode_accuracies`) when there is
            no calibration hook and the learner is a gradient learner (ProtoNet: per episode).
        compile: run each such episode as one compiled graph (:func:`episode_accuracy_fn`; used when
            ``adapt_batch`` is 1).

    Returns:
        ``accuracy`` and ``ci95`` (percent), ``accuracies`` (per episode, percent),
        ``episodes``, ``seconds_total``, ``seconds_per_episode``.
    """
    start = time.perf_counter()
    images = normalised_images(split, device, input_size)
    correct = torch.zeros(episodes.n_episodes, device=device)
    batched = adapt_batch > 1 and calibrate is None and calibrate_batch is None and isinstance(learner, GradientLearner)
    group = episode_batch if calibrate_batch is not None else adapt_batch if batched else 1
    plain = calibrate is None and calibrate_batch is None and isinstance(learner, GradientLearner)
    compiled = episode_accuracy_fn(learner, model, inner_steps) if compile and plain and not batched else None
    detached = {name: p.detach() for name, p in params.items()}
    starts = range(0, episodes.n_episodes, group)
    for first in progress(starts, desc="meta-test"):
        indices = list(range(first, min(first + group, episodes.n_episodes)))
        batch = [materialise(split, episodes, index, device, images=images) for index in indices]
        if batched:
            correct[indices[0] : indices[-1] + 1] = episode_accuracies(learner, model, params, batch, inner_steps)
            continue
        if compiled is not None:
            episode = batch[0]
            correct[first] = compiled(detached, episode.support_x, episode.support_y, episode.query_x, episode.query_y)
            continue
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
