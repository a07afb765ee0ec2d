"""ICFIL: inversion calibration following the inner loop (docs/method.md §3.3).

**This is a reconstruction.** The authors released no ICFIL code (docs/method.md §3.1); the paper
gives only a figure and captions (§3.2). Every design choice and default here is a proposal from
docs/method.md §3.3, not the paper's. Results with ICFIL are always reported next to results without.

Per test episode, after the ordinary inner loop produced the adapted state (φ', W'):

1. **Episode inversion** (:func:`invert_adapted_model`): M pseudo images per class, initialised
   from N(0, 1) in normalised space, optimised with Adam through the *adapted* model (parameters
   frozen, gradients w.r.t. the images only) on CE + tv·TV + l2·L2 of the jittered images
   (docs/method.md §2.3). ``bn_mode="support"`` adds matching of each BatchNorm input's batch
   statistics to those of the real support set under φ' (an ablation; the default has no BN term
   because the meta model keeps no running statistics).
2. **Feature calibration** (:func:`calibrate_features`): SGD on the feature extractor only (every
   parameter not named ``head.*``) with a supervised contrastive (InfoNCE, SupCon-style) loss on
   L2-normalised features: anchors are real support features, positives the pseudo features of the
   anchor's class, negatives the pseudo and real features of other classes (optionally
   symmetrised with pseudo anchors). The pseudo images are fixed; gradients reach φ through both
   the real and the pseudo branch. Real and pseudo images are forwarded as separate batches (each
   normalised with its own batch statistics, like the support set in the inner loop).
3. **Head calibration** (:func:`calibrate_head`): SGD on ``head.*`` only with CE on the real
   support plus the pseudo support, pooled, through the calibrated (fixed) features.
4. The calibrated state predicts the query set.

ProtoNet models (an :class:`AdaptedState` with prototypes) are supported: inversion uses the
prototype classifier (negative squared distances) instead of the unused linear head, and step 3
recomputes the prototypes from the calibrated features of the real support set (no head steps).

Every random draw (image initialisation, jitter) uses the ``generator`` passed in; the meta-test
derives it from ``(config.seed, "icfil", dataset, episode index)``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from purer.compiler import compile_graph
from purer.config import IcfilConfig
from purer.inversion.losses import bn_matching, draw_shifts, l2_prior, roll, roll_jitter, total_variation
from purer.meta.learners import AdaptedState, Episode, Params, class_prototypes, features, prototype_logits
from purer.models.backbones import BNStats, record_bn_stats

logger = logging.getLogger(__name__)

HEAD_PREFIX = "head."


# --------------------------------------------------------------------------------------------
# The contrastive loss (pure)
# --------------------------------------------------------------------------------------------


def supervised_contrastive_loss(
    anchor_feats: torch.Tensor,
    bank_feats: torch.Tensor,
    positive_mask: torch.Tensor,
    negative_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """SupCon / InfoNCE over explicit positive and negative sets (docs/method.md §3.3 step 3).

    For anchor i with positives P(i) and negatives N(i) (bank entries in neither set are ignored):
    ``s_ij = cos(a_i, b_j) / temperature`` and
    ``loss_i = -1/|P(i)| Σ_{p∈P(i)} [s_ip − log Σ_{j∈P(i)∪N(i)} exp(s_ij)]``; the loss is the
    mean over anchors. Every anchor must have at least one positive.

    Args:
        anchor_feats: [A, D] (normalised inside).
        bank_feats: [B, D] (normalised inside).
        positive_mask: bool [A, B].
        negative_mask: bool [A, B], disjoint from ``positive_mask``.
        temperature: τ > 0.

    Returns:
        0-d tensor.
    """
    similarity = F.normalize(anchor_feats, dim=1) @ F.normalize(bank_feats, dim=1).T / temperature  # [A, B]
    considered = positive_mask | negative_mask
    log_denominator = torch.logsumexp(similarity.masked_fill(~considered, float("-inf")), dim=1, keepdim=True)
    log_prob = similarity - log_denominator  # [A, B]
    positives = positive_mask.to(similarity.dtype)
    per_anchor = (log_prob * positives).sum(dim=1) / positives.sum(dim=1)
    return -per_anchor.mean()


def contrastive_masks(
    anchor_y: torch.Tensor, anchor_is_pseudo: torch.Tensor, bank_y: torch.Tensor, bank_is_pseudo: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ICFIL's positive and negative sets.

    A positive has the anchor's class and the *other* kind (real anchor → pseudo positives, pseudo
    anchor → real positives); a negative has another class, of either kind. Same-class entries of
    the anchor's own kind (including the anchor itself) are neither.

    Args:
        anchor_y: [A] int64; anchor_is_pseudo: bool [A]; bank_y: [B] int64; bank_is_pseudo: bool [B].

    Returns:
        (positive_mask, negative_mask), bool [A, B].
    """
    same_class = anchor_y.unsqueeze(1) == bank_y.unsqueeze(0)
    other_kind = anchor_is_pseudo.unsqueeze(1) != bank_is_pseudo.unsqueeze(0)
    return same_class & other_kind, ~same_class


def calibration_loss(
    real_feats: torch.Tensor,
    real_y: torch.Tensor,
    pseudo_feats: torch.Tensor,
    pseudo_y: torch.Tensor,
    temperature: float,
    symmetric: bool = False,
) -> torch.Tensor:
    """The feature-calibration loss: real anchors (and pseudo anchors if ``symmetric``).

    Args:
        real_feats: [R, D] real support features; real_y: [R].
        pseudo_feats: [P, D] pseudo support features; pseudo_y: [P].
        symmetric: also anchor on every pseudo feature (mean over all R + P anchors).

    Returns:
        0-d tensor.
    """
    bank = torch.cat([pseudo_feats, real_feats])
    bank_y = torch.cat([pseudo_y, real_y])
    bank_is_pseudo = torch.cat(
        [torch.ones_like(pseudo_y, dtype=torch.bool), torch.zeros_like(real_y, dtype=torch.bool)]
    )
    if symmetric:
        anchors, anchor_y, anchor_is_pseudo = bank, bank_y, bank_is_pseudo
    else:
        anchors, anchor_y, anchor_is_pseudo = real_feats, real_y, torch.zeros_like(real_y, dtype=torch.bool)
    positive, negative = contrastive_masks(anchor_y, anchor_is_pseudo, bank_y, bank_is_pseudo)
    return supervised_contrastive_loss(anchors, bank, positive, negative, temperature)


# --------------------------------------------------------------------------------------------
# Step 1: episode inversion of the adapted model
# --------------------------------------------------------------------------------------------


def classifier_logits(model: nn.Module, state: AdaptedState, x: torch.Tensor) -> torch.Tensor:
    """The adapted classifier: the linear head, or ProtoNet's prototypes. [B, n_way]."""
    if state.prototypes is not None:
        return prototype_logits(features(model, state.params, x), state.prototypes)
    return functional_call(model, state.params, (x,))


def support_bn_targets(model: nn.Module, params: Params, support_x: torch.Tensor) -> list[BNStats]:
    """Per-layer batch mean/var of the real support set under φ', as matching targets (detached)."""
    with torch.no_grad(), record_bn_stats() as stats:
        features(model, params, support_x)
    return list(stats)


def support_bn_loss(stats: list[BNStats], targets: list[BNStats]) -> torch.Tensor:
    """Σ_l ||var_l − var_l^S||₂ + ||mean_l − mean_l^S||₂ against the support statistics (§2.3 form)."""
    paired = [BNStats(s.mean, s.var, t.mean, t.var) for s, t in zip(stats, targets, strict=True)]
    return bn_matching(paired)


InversionLoss = Callable[[Params, torch.Tensor | None, torch.Tensor, torch.Tensor], torch.Tensor]
# compiled inversion losses by (architecture, classifier kind, weights): the episodes of one meta-test share one
_COMPILED_LOSSES: dict[tuple, InversionLoss] = {}


def inversion_loss(model: nn.Module, config: IcfilConfig) -> InversionLoss:
    """The inversion objective ``(params, prototypes, jittered [B, C, H, W], labels [B]) -> 0-d`` without
    a BN term: CE of the adapted classifier + tv·TV + l2·L2 of the jittered images."""
    def loss(params: Params, prototypes: torch.Tensor | None, jittered: torch.Tensor,
             labels: torch.Tensor) -> torch.Tensor:
        out = classifier_logits(model, AdaptedState(params, prototypes), jittered)
        return (
            F.cross_entropy(out, labels)
            + config.tv_weight * total_variation(jittered)
            + config.l2_weight * l2_prior(jittered)
        )

    return loss


def compiled_inversion_loss(model: nn.Module, config: IcfilConfig, prototypes: bool) -> InversionLoss:
    """:func:`inversion_loss` as one ``torch.compile``-d graph (forward and backward), its images in
    channels-last memory inside the graph. Models of the same architecture (``repr``, no buffers) share it.

    The jitter (a data-dependent roll) stays outside, in eager mode: inside, each shift would be a new graph.
    """
    key = (repr(model), prototypes, config.tv_weight, config.l2_weight)
    shareable = not any(True for _ in model.buffers())
    if shareable and key in _COMPILED_LOSSES:
        return _COMPILED_LOSSES[key]
    plain = inversion_loss(model, config)

    def loss(params: Params, prototypes: torch.Tensor | None, jittered: torch.Tensor,
             labels: torch.Tensor) -> torch.Tensor:
        return plain(params, prototypes, jittered.contiguous(memory_format=torch.channels_last), labels)

    compiled = compile_graph(loss)
    if shareable:
        _COMPILED_LOSSES[key] = compiled
    return compiled


def invert_adapted_model(
    model: nn.Module,
    state: AdaptedState,
    support_x: torch.Tensor,
    n_way: int,
    config: IcfilConfig,
    generator: torch.Generator,
    compile: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthesise a pseudo support set from the adapted model (docs/method.md §3.3 step 2).

    Args:
        support_x: the real support images [S, C, H, W] (shape, device, BN targets).
        n_way: classes of the episode.
        generator: draws the N(0, 1) initialisation and the jitter.
        compile: compute each step's loss and image gradient as one compiled graph
            (:func:`compiled_inversion_loss`; without ``bn_mode: support``): the same objective, float32
            rounding aside, which Adam on the images can amplify in single episodes.

    Returns:
        pseudo images [n_way * M, C, H, W] (detached) and labels [n_way * M] (class-major).
    """
    device = support_x.device
    labels = torch.arange(n_way, device=device).repeat_interleave(config.pseudo_per_class)
    shape = (labels.numel(), *support_x.shape[1:])
    init = torch.randn(shape, generator=generator, device=generator.device)
    images = init.to(device=device, dtype=support_x.dtype).requires_grad_(True)
    frozen = AdaptedState({n: p.detach() for n, p in state.params.items()}, state.prototypes)
    targets = support_bn_targets(model, frozen.params, support_x) if config.bn_mode == "support" else None
    optimizer = torch.optim.Adam([images], lr=config.inversion_lr)
    objective = (compiled_inversion_loss(model, config, frozen.prototypes is not None)
                 if compile and targets is None else inversion_loss(model, config))
    with torch.enable_grad():
        for _ in range(config.inversion_steps):
            jittered = roll_jitter(images, config.jitter, generator)
            if targets is None:
                loss = objective(frozen.params, frozen.prototypes, jittered, labels)
            else:  # the BN statistics of this forward are recorded and matched to the support's
                with record_bn_stats() as stats:
                    loss = objective(frozen.params, frozen.prototypes, jittered, labels)
                loss = loss + config.bn_weight * support_bn_loss(stats, targets)
            (images.grad,) = torch.autograd.grad(loss, [images])
            optimizer.step()
    return images.detach(), labels


# --------------------------------------------------------------------------------------------
# Steps 3-4: feature and head calibration
# --------------------------------------------------------------------------------------------


def sgd_steps(
    params: Params, names: Sequence[str], loss_of: Callable[[Params], torch.Tensor], steps: int, lr: float,
) -> Params:
    """``steps`` plain SGD steps (learning rate ``lr``) on ``params[names]``; the rest stays fixed.

    ``loss_of`` maps the current parameters (every name, those in ``names`` requiring grad) to a
    scalar loss. Used by every calibration and fine-tuning step of this module, per episode and
    batched (stacked [G, ...] parameters with a summed loss give each episode its own gradient).

    Returns:
        A new parameter dict, detached.
    """
    params = {name: p.detach() for name, p in params.items()}
    with torch.enable_grad():
        for _ in range(steps):
            fast = {name: params[name].requires_grad_(True) for name in names}
            grads = torch.autograd.grad(loss_of(params | fast), [fast[name] for name in names])
            params = params | {n: (fast[n] - lr * g).detach() for n, g in zip(names, grads, strict=True)}
    return params


def head_names(params: Params) -> list[str]:
    """Parameters of the linear head W (named ``head.*``)."""
    return [name for name in params if name.startswith(HEAD_PREFIX)]


def feature_names(params: Params) -> list[str]:
    """Parameters of the feature extractor φ (everything not named ``head.*``)."""
    return [name for name in params if not name.startswith(HEAD_PREFIX)]


def calibrate_features(
    model: nn.Module,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    pseudo_x: torch.Tensor,
    pseudo_y: torch.Tensor,
    config: IcfilConfig,
) -> Params:
    """``feature_steps`` SGD steps (lr ``feature_lr``) on φ with :func:`calibration_loss`.

    Args:
        params: the adapted parameters (φ', W'); only φ changes.
        support_x: [S, C, H, W], support_y: [S]; pseudo_x: [P, C, H, W] (fixed), pseudo_y: [P].

    Returns:
        A new parameter dict (detached) with calibrated φ and the same W.
    """
    pseudo_x = pseudo_x.detach()

    def loss(current: Params) -> torch.Tensor:
        return calibration_loss(
            features(model, current, support_x), support_y,
            features(model, current, pseudo_x), pseudo_y,
            config.temperature, config.symmetric,
        )

    return sgd_steps(params, feature_names(params), loss, config.feature_steps, config.feature_lr)


def calibrate_head(
    model: nn.Module,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    pseudo_x: torch.Tensor,
    pseudo_y: torch.Tensor,
    config: IcfilConfig,
) -> Params:
    """``head_steps`` SGD steps (lr ``head_lr``) on ``head.*`` with CE on real + pseudo support.

    The features are computed once under the calibrated φ (real and pseudo as separate batches)
    and kept fixed.

    Returns:
        A new parameter dict (detached) with calibrated W and the same φ.
    """
    params = {name: p.detach() for name, p in params.items()}
    if config.head_steps == 0:
        return params
    with torch.no_grad():
        feats = torch.cat([features(model, params, support_x), features(model, params, pseudo_x.detach())])
    return head_steps(model, params, feats, torch.cat([support_y, pseudo_y]), config)


def head_steps(model: nn.Module, params: Params, feats: torch.Tensor, labels: torch.Tensor, config: IcfilConfig) -> Params:
    """``head_steps`` SGD steps (lr ``head_lr``) on ``head.*`` with CE on fixed features [B, D], labels [B]."""
    names = head_names(params)

    def loss(current: Params) -> torch.Tensor:
        local = {name[len(HEAD_PREFIX):]: current[name] for name in names}
        return F.cross_entropy(functional_call(model.head, local, (feats,)), labels)

    return sgd_steps(params, names, loss, config.head_steps, config.head_lr)


# --------------------------------------------------------------------------------------------
# ICFIL
# --------------------------------------------------------------------------------------------


def icfil_calibrate(
    model: nn.Module,
    state: AdaptedState,
    episode: Episode,
    config: IcfilConfig,
    n_way: int,
    generator: torch.Generator,
    compile: bool = False,
) -> AdaptedState:
    """Calibrate an adapted model on one test episode (docs/method.md §3.3; a reconstruction).

    Args:
        model: the meta model (batch-statistics BN).
        state: the inner loop's result (φ', W'), or ProtoNet's (θ, prototypes).
        episode: the real support set (the query is not used).
        config: ICFIL settings.
        n_way: classes of the episode.
        generator: the episode's ICFIL generator (initialisation and jitter).
        compile: run the inversion's steps as a compiled graph (:func:`invert_adapted_model`).

    Returns:
        The calibrated state (detached); for ProtoNet, prototypes recomputed from the calibrated
        features of the real support set.
    """
    support_x, support_y = episode.support_x, episode.support_y
    pseudo_x, pseudo_y = invert_adapted_model(model, state, support_x, n_way, config, generator, compile)
    params = calibrate_features(model, state.params, support_x, support_y, pseudo_x, pseudo_y, config)
    if state.prototypes is not None:
        with torch.no_grad():
            prototypes = class_prototypes(features(model, params, support_x), support_y)
        return AdaptedState(params, prototypes)
    params = calibrate_head(model, params, support_x, support_y, pseudo_x, pseudo_y, config)
    return AdaptedState(params)


# --------------------------------------------------------------------------------------------
# Controls (issue: ICFIL must beat these on the same checkpoint and episodes)
# --------------------------------------------------------------------------------------------


def noise_config(config: IcfilConfig) -> IcfilConfig:
    """ICFIL with N(0, 1) noise in place of the inverted images (no inversion steps).

    The pseudo images are the inversion's initialisation, drawn from the same per-episode
    generator, so the control differs from ICFIL only in what the adapted model put into them.
    """
    return dataclasses.replace(config, inversion_steps=0)


def support_finetune(model: nn.Module, state: AdaptedState, episode: Episode, config: IcfilConfig) -> AdaptedState:
    """Fine-tuning with ICFIL's extra update budget on the real support only (no pseudo images).

    ``feature_steps`` SGD steps (lr ``feature_lr``) on φ with CE on the real support through the
    current head, then ``head_steps`` SGD steps (lr ``head_lr``) on ``head.*`` with CE on the real
    support through the fixed features: the same number of updates as ICFIL's steps 3–4, the same
    learning rates, only the data differs. For ProtoNet the feature steps use the prototype
    classifier of the support itself, and the prototypes are recomputed at the end.

    Returns:
        The fine-tuned state (detached).
    """
    support_x, support_y = episode.support_x, episode.support_y

    def support_loss(current: Params) -> torch.Tensor:
        if state.prototypes is None:
            return F.cross_entropy(functional_call(model, current, (support_x,)), support_y)
        feats = features(model, current, support_x)
        return F.cross_entropy(prototype_logits(feats, class_prototypes(feats, support_y)), support_y)

    params = sgd_steps(state.params, feature_names(state.params), support_loss, config.feature_steps, config.feature_lr)
    if state.prototypes is not None:
        with torch.no_grad():
            return AdaptedState(params, class_prototypes(features(model, params, support_x), support_y))
    with torch.no_grad():
        feats = features(model, params, support_x)
    return AdaptedState(head_steps(model, params, feats, support_y, config))


# --------------------------------------------------------------------------------------------
# Batched ICFIL: many episodes through one inversion and one calibration (torch.func.vmap)
# --------------------------------------------------------------------------------------------


def can_batch(states: Sequence[AdaptedState], config: IcfilConfig) -> bool:
    """Whether :func:`icfil_calibrate_batch` supports these states and settings.

    The batched path needs a linear head (not ProtoNet, whose prototypes are recomputed per
    episode) and no support-statistics BN term; otherwise the per-episode path runs.
    """
    return config.bn_mode == "none" and all(state.prototypes is None for state in states)


def stack_params(states: Sequence[AdaptedState]) -> Params:
    """The adapted parameters of G episodes stacked along a new leading dim: ``{name: [G, ...]}``."""
    return {name: torch.stack([s.params[name].detach() for s in states]) for name in states[0].params}


def invert_adapted_models(
    model: nn.Module,
    params: Params,
    support_x: torch.Tensor,
    n_way: int,
    config: IcfilConfig,
    generators: Sequence[torch.Generator],
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`invert_adapted_model` for G episodes at once (bn_mode ``none``).

    Each episode draws its initialisation and its per-step jitter from its own generator, in the
    same order as the per-episode path; the loss is the sum of the per-episode losses, so each
    episode's images get exactly their own gradient, and Adam (elementwise) takes the same steps.

    Args:
        params: stacked adapted parameters ``{name: [G, ...]}``.
        support_x: [G, S, C, H, W] (shape, dtype and device of the images).
        generators: G generators, one per episode.

    Returns:
        pseudo images [G, n_way * M, C, H, W] (detached) and labels [n_way * M] (class-major).
    """
    device = support_x.device
    labels = torch.arange(n_way, device=device).repeat_interleave(config.pseudo_per_class)
    shape = (labels.numel(), *support_x.shape[2:])
    init = torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generators])
    images = init.to(device=device, dtype=support_x.dtype).requires_grad_(True)
    frozen = {name: p.detach() for name, p in params.items()}

    def episode_loss(episode_params: Params, jittered: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, episode_params, (jittered,))
        return (
            F.cross_entropy(out, labels)
            + config.tv_weight * total_variation(jittered)
            + config.l2_weight * l2_prior(jittered)
        )

    losses = vmap(episode_loss)
    optimizer = torch.optim.Adam([images], lr=config.inversion_lr)
    with torch.enable_grad():
        for _ in range(config.inversion_steps):
            shifts = [draw_shifts(1, config.jitter, g)[0] for g in generators]
            jittered = torch.stack([roll(images[i], shift) for i, shift in enumerate(shifts)])
            (images.grad,) = torch.autograd.grad(losses(frozen, jittered).sum(), [images])
            optimizer.step()
    return images.detach(), labels


def calibrate_features_batch(
    model: nn.Module,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    pseudo_x: torch.Tensor,
    pseudo_y: torch.Tensor,
    config: IcfilConfig,
) -> Params:
    """:func:`calibrate_features` for G episodes: stacked params, [G, ...] images and labels.

    The forward is vmapped over the episodes; the backward is ordinary autograd of the summed
    per-episode losses w.r.t. the stacked parameters (each episode's slice gets exactly its own
    gradient). On CPU this is several times faster than ``vmap(grad(...))``, whose per-sample
    weight gradients of the convolutions take a slow path.
    """
    pseudo_x = pseudo_x.detach()

    def loss(current: Params, sx: torch.Tensor, sy: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
        return calibration_loss(
            features(model, current, sx), sy, features(model, current, px), pseudo_y,
            config.temperature, config.symmetric,
        )

    losses = vmap(loss)
    return sgd_steps(
        params, feature_names(params), lambda current: losses(current, support_x, support_y, pseudo_x).sum(),
        config.feature_steps, config.feature_lr,
    )


def calibrate_head_batch(
    model: nn.Module,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    pseudo_x: torch.Tensor,
    pseudo_y: torch.Tensor,
    config: IcfilConfig,
) -> Params:
    """:func:`calibrate_head` for G episodes: stacked params, [G, ...] images and labels."""
    params = {name: p.detach() for name, p in params.items()}
    if config.head_steps == 0:
        return params

    def episode_features(episode_params: Params, sx: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
        return torch.cat([features(model, episode_params, sx), features(model, episode_params, px)])

    with torch.no_grad():
        feats = vmap(episode_features)(params, support_x, pseudo_x.detach())  # [G, S + P, D]
    labels = torch.cat([support_y, pseudo_y.expand(support_y.shape[0], -1)], dim=1)  # [G, S + P]
    names = head_names(params)

    def loss(head: Params, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        local = {name[len(HEAD_PREFIX):]: p for name, p in head.items()}
        return F.cross_entropy(functional_call(model.head, local, (f,)), y)

    losses = vmap(loss)
    return sgd_steps(
        params, names, lambda current: losses({n: current[n] for n in names}, feats, labels).sum(),
        config.head_steps, config.head_lr,
    )


def icfil_calibrate_batch(
    model: nn.Module,
    states: Sequence[AdaptedState],
    episodes: Sequence[Episode],
    config: IcfilConfig,
    n_way: int,
    generators: Sequence[torch.Generator],
) -> list[AdaptedState]:
    """:func:`icfil_calibrate` for G episodes in one batched inversion and calibration.

    Equal to calling :func:`icfil_calibrate` on each episode with its generator (up to float
    rounding of the batched kernels; tests/test_icfil_controls.py). Falls back to that loop when
    :func:`can_batch` is false. The episodes must share their support shape.

    Returns:
        One calibrated state (detached) per episode, in order.
    """
    if not can_batch(states, config):
        return [icfil_calibrate(model, s, e, config, n_way, g) for s, e, g in zip(states, episodes, generators, strict=True)]
    params = stack_params(states)
    support_x = torch.stack([e.support_x for e in episodes])
    support_y = torch.stack([e.support_y for e in episodes])
    pseudo_x, pseudo_y = invert_adapted_models(model, params, support_x, n_way, config, generators)
    params = calibrate_features_batch(model, params, support_x, support_y, pseudo_x, pseudo_y, config)
    params = calibrate_head_batch(model, params, support_x, support_y, pseudo_x, pseudo_y, config)
    return [AdaptedState({name: p[i] for name, p in params.items()}) for i in range(len(states))]
