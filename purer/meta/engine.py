"""The ECI engine: one meta-iteration of data step, meta step and switch (docs/method.md §2.5-2.6, §2.8).

Everything works on a :class:`purer.meta.state.MetaTrainRun` (what is fixed) and a
:class:`purer.meta.state.MetaTrainState` (what changes); :func:`train_iteration` runs the two steps,
feeds the gradient switch (its protocol: :mod:`purer.inversion.curriculum`) and does the
iteration's one host-device synchronisation. Neither step synchronises: the data step's non-finite check is a
device flag that the fused Adam kernel reads (``found_inf``), reported by the caller through
:func:`handle_nonfinite`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch

from purer.errors import PurerError
from purer.inversion.curriculum import reversed_coefficients
from purer.inversion.dataset import DynamicDataset
from purer.meta.learners import reversed_outer_loss
from purer.meta.state import MetaTrainRun, MetaTrainState

logger = logging.getLogger(__name__)

CURVE_TERMS = {"loss_inv_total": "total", "loss_ce": "ce", "loss_tv": "tv", "loss_bn": "bn", "loss_l2": "l2",
               "loss_adv": "adv", "adv_grad_ratio_median": "adv_ratio_median", "adv_grad_ratio_max": "adv_ratio_max"}
REVERSED_ONLY = ("loss_adv", "adv_grad_ratio_median", "adv_grad_ratio_max")  # null without a reversed step


def inversion_loss_fn(run: MetaTrainRun, state: MetaTrainState):
    """The vmapped pool loss or the per-teacher loop (same maths): vmap wins on GPU, the loop on CPU."""
    mode = run.mt.inversion.teacher_batching
    use_vmap = mode == "vmap" or (mode == "auto" and torch.device(run.device).type == "cuda")
    return state.pool.inversion_loss if use_vmap else state.pool.reference_inversion_loss


def data_step(run: MetaTrainRun, state: MetaTrainState, iteration: int) -> tuple[dict[str, torch.Tensor], bool]:
    """One Adam step on the images (docs/method.md §2.6), without a host-device synchronisation.

    A non-finite loss or image gradient makes the fused Adam kernel skip the step on the device
    (its ``found_inf`` flag, as under AMP gradient scaling); :func:`train_iteration` reports it
    after the iteration's one synchronisation.

    On a reversed step the inversion and the reversed image gradients are taken separately and
    summed (one backward of their total gives the same sums: the episode's support and query rows
    are disjoint), so their per-class norms can be compared (:func:`gradient_ratios`).

    Returns:
        The detached logging terms (``adv`` and the ``adv_ratio_*`` are NaN without a reversed
        step) plus ``finite`` (0-d bool: the step was taken), and whether the reversed outer loss
        was part of the loss.
    """
    mt = run.mt
    subset = teacher_subset(run, state)
    loss, terms = inversion_loss_fn(run, state)(state.data, state.generators["jitter"], mt.inversion, subset)
    images = state.data.parameters()
    grads = torch.autograd.grad(loss, images, allow_unused=True)  # the images only (docs/method.md §8.5)
    nan = torch.full((), float("nan"), device=run.device)
    adv, ratios = nan, (nan, nan)
    reversed_on = state.switch.is_on
    if reversed_on:
        adv = reversed_term(run, state, subset)
        adv_grads = torch.autograd.grad(adv, images, allow_unused=True)
        ratios = gradient_ratios(state.data, grads, adv_grads)
        loss = loss.detach() + adv.detach()
        grads = tuple(_add(g, a) for g, a in zip(grads, adv_grads, strict=True))
    finite = finite_flag(loss, grads)
    for image, grad in zip(images, grads, strict=True):
        image.grad = grad
    state.data.optimizer.found_inf = (~finite).float()  # read by the fused Adam kernel: skip if 1
    state.data.optimizer.step()
    state.data.optimizer.zero_grad(set_to_none=True)
    diagnostics = {"adv": adv.detach(), "adv_ratio_median": ratios[0], "adv_ratio_max": ratios[1], "finite": finite}
    return dict(terms) | diagnostics, reversed_on


def reversed_term(run: MetaTrainRun, state: MetaTrainState, subset: list[int] | None) -> torch.Tensor:
    """``−a · L_outer`` of a fresh non-detached pseudo episode, at the configured strength.

    With ``curriculum.adv_strength`` the gradient reaching each class's images is multiplied by
    that class's inversion weight in this step (purer.inversion.curriculum.reversed_coefficients).
    """
    mt = run.mt
    order = list(range(len(run.manifest.teachers))) if subset is None else subset
    coefficient, multipliers = reversed_coefficients(mt.curriculum, run.manifest.teachers, order,
                                                     mt.inversion.teacher_weighting)
    scales = state.data.class_scales(multipliers) if multipliers is not None else None
    episode = state.data.sample_episode(mt.n_way, run.n_shot, mt.n_query, state.generators["adv_episodes"],
                                        detach=False, size=run.spec.input_size, channels=run.spec.channels,
                                        grad_scales=scales)
    return reversed_outer_loss(state.learner, state.meta_model, state.params, episode, mt.learner.inner_steps,
                               coefficient)


def gradient_ratios(
    data: DynamicDataset, inversion: tuple[torch.Tensor | None, ...], reversed_: tuple[torch.Tensor | None, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Median and maximum of ‖g_rev,c‖ / ‖g_inv,c‖ over the classes both gradients reach.

    Per class c, the L2 norms of the two image gradients over all its images (per domain,
    [C·spc, ...] viewed as [C, spc·...]). A class no teacher of the step inverts
    (``teachers_per_step``) has no ratio. 0-d tensors; NaN when no class has one.
    """
    ratios = []
    for domain, g_inv, g_rev in zip(data.domains.values(), inversion, reversed_, strict=True):
        if g_rev is None:
            continue
        rev = g_rev.reshape(domain.n_classes, -1).norm(dim=1)
        inv = g_inv.reshape(domain.n_classes, -1).norm(dim=1) if g_inv is not None else torch.zeros_like(rev)
        ratios.append(torch.where((rev > 0) & (inv > 0), rev / inv, float("nan")))
    if not ratios:
        nan = torch.full((), float("nan"), device=data.parameters()[0].device)
        return nan, nan
    values = torch.cat(ratios)
    return values.nanmedian(), torch.where(values.isnan(), float("-inf"), values).max()


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None or b is None:
        return b if a is None else a
    return a + b


def teacher_subset(run: MetaTrainRun, state: MetaTrainState) -> list[int] | None:
    """``teachers_per_step`` pool positions drawn without replacement (ascending), or None (all)."""
    k, n = run.mt.inversion.teachers_per_step, len(run.manifest.teachers)
    if k is None or k >= n:
        return None
    return sorted(torch.randperm(n, generator=state.generators["teachers"])[:k].tolist())


def finite_flag(loss: torch.Tensor, grads: tuple[torch.Tensor | None, ...]) -> torch.Tensor:
    """0-d bool on the device: the loss and every image gradient are finite (no synchronisation).

    A gradient is checked through its sum (one reduction pass instead of an elementwise test): a
    NaN or ±Inf element makes the sum non-finite, and a sum that overflows fp32 is treated as
    non-finite too.
    """
    sums = [loss.detach().float().reshape(())] + [g.sum(dtype=torch.float32) for g in grads if g is not None]
    return torch.isfinite(torch.stack(sums)).all()


# The settings most likely at fault when a data-loss term (or only the image gradient) is not finite,
# most likely first: the image step size, then the term's weight; `ce` and `bn` also read the teachers.
NONFINITE_SUSPECTS = {
    "ce": ("inversion.data_lr", "inversion.ce_weight", "the teachers' weights"),
    "tv": ("inversion.data_lr", "inversion.tv_weight"),
    "bn": ("inversion.data_lr", "inversion.bn_weight", "inversion.first_bn_multiplier", "the teachers' weights"),
    "l2": ("inversion.data_lr", "inversion.l2_weight"),
    "adv": ("inversion.data_lr", "curriculum.adv_scale", "outer_lr"),
    "the image gradient": ("inversion.data_lr", "curriculum.adv_scale", "precision"),
}


def nonfinite_suspects(terms: list[str]) -> str:
    """``check meta_train.inversion.data_lr, ...``: the settings behind the non-finite ``terms``, once each."""
    names = dict.fromkeys(name for term in terms for name in NONFINITE_SUSPECTS.get(term, ()))
    return "check " + ", ".join(n if n.startswith(("the ", "precision")) else f"meta_train.{n}" for n in names)


def handle_nonfinite(run: MetaTrainRun, iteration: int, terms: dict[str, torch.Tensor], reversed_on: bool) -> None:
    """Raise a PurerError naming the iteration, the term and the settings to check (``stop``), or log a
    warning (``skip``)."""
    names = ("ce", "tv", "bn", "l2") + (("adv",) if reversed_on else ())
    bad = [name for name in names if not bool(torch.isfinite(terms[name]))] or ["the image gradient"]
    what = f"the data loss is not finite at meta-iteration {iteration} (term {', '.join(bad)})"
    if run.mt.inversion.on_nonfinite == "stop":
        raise PurerError(f"meta-training {run.out_dir}: {what}; {nonfinite_suspects(bad)}; "
                         "or set meta_train.inversion.on_nonfinite: skip to skip such steps")
    logger.warning("%s: skipping this data step (%s)", what, nonfinite_suspects(bad))


def check_outer_loss(run: MetaTrainRun, iteration: int, loss_outer: float) -> None:
    """Stop when the outer (query) loss is not finite: its Adam step has already made the meta model
    non-finite, so no later iteration can recover (``on_nonfinite`` does not apply)."""
    if not math.isfinite(loss_outer):
        raise PurerError(f"meta-training {run.out_dir}: the outer (query) loss is not finite at meta-iteration "
                         f"{iteration}; check meta_train.outer_lr, meta_train.learner.inner_lr, "
                         "meta_train.learner.inner_steps")


def meta_step(run: MetaTrainRun, state: MetaTrainState) -> tuple[torch.Tensor, torch.Tensor]:
    """``meta_batch_size`` episodes, summed outer losses, one Adam step (docs/method.md §2.5).

    Returns:
        The mean outer loss and the mean query accuracy (percent) of the meta-batch, 0-d tensors.
    """
    mt = run.mt
    state.optimizer.zero_grad(set_to_none=True)
    losses, accuracies = [], []
    for _ in range(mt.meta_batch_size):
        episode = state.data.sample_episode(mt.n_way, run.n_shot, mt.n_query, state.generators["episodes"],
                                            detach=True, size=run.spec.input_size, channels=run.spec.channels)
        loss, accuracy = state.episode_fn(state.params, episode.support_x, episode.support_y, episode.query_x,
                                          episode.query_y)
        loss.backward()  # accumulates into .grad: the gradient of the summed outer losses
        losses.append(loss.detach())
        accuracies.append(accuracy)
    state.optimizer.step()
    return torch.stack(losses).mean(), torch.stack(accuracies).mean() * 100.0


def train_iteration(run: MetaTrainRun, state: MetaTrainState, iteration: int) -> dict[str, Any]:
    """One meta-iteration (data step, meta step, switch feedback); returns its curve record.

    ``loss_outer`` is the meta-batch's mean outer loss, ``train_accuracy`` its mean query accuracy
    (percent), ``loss_ce``/``loss_tv``/``loss_bn``/``loss_l2`` the teachers' mean unweighted terms,
    ``loss_inv_total`` the weighted inversion loss summed over teachers and ``loss_adv`` the
    reversed term added to the data loss (``null`` without a reversed step, as are the terms of a
    skipped step).

    Diagnostics: ``teacher_ce`` lists each teacher's own cross-entropy on its (jittered) images
    before the step, in pool order (``null`` for a teacher not in the step), ``teacher_ce_max``
    their maximum (``loss_ce`` is their mean); on a reversed step, ``adv_grad_ratio_median`` /
    ``_max`` summarise ‖reversed gradient‖ / ‖inversion gradient‖ over the classes it reaches
    (:func:`gradient_ratios`).
    """
    start = time.perf_counter()
    state.iteration = iteration
    terms, reversed_on = data_step(run, state, iteration)
    loss_outer, accuracy = meta_step(run, state)
    logged = [loss_outer, accuracy, terms["finite"].float()] + [terms[k] for k in CURVE_TERMS.values()]
    per_teacher = terms["ce_per_teacher"].to(logged[0].dtype)
    values = torch.cat([torch.stack(logged), per_teacher]).tolist()  # the iteration's one host-device sync
    teacher_ce = values[len(logged):]
    values = values[: len(logged)]
    finite = values.pop(2) == 1.0
    if not finite:  # the image step was skipped on the device; stop, or log it and go on
        handle_nonfinite(run, iteration, terms, reversed_on)
        for name in REVERSED_ONLY:
            values[2 + list(CURVE_TERMS).index(name)] = float("nan")
    check_outer_loss(run, iteration, values[0])
    switched = reversed_on and finite
    if switched:
        state.switch.consume()  # a skipped step leaves the switch on: the reversed step is retried
    state.switch.observe(iteration, values[1])
    record = {"iteration": iteration, "seconds": time.perf_counter() - start, "loss_outer": values[0],
              "train_accuracy": values[1], "switch": switched}
    for name, value in zip(CURVE_TERMS, values[2:], strict=True):
        record[name] = value if math.isfinite(value) else None
    finite_ce = [v for v in teacher_ce if math.isfinite(v)]
    record["teacher_ce"] = [v if math.isfinite(v) else None for v in teacher_ce]
    record["teacher_ce_max"] = max(finite_ce) if finite_ce else None
    return record
