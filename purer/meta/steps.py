"""One ECI meta-iteration's two steps: the data step on the images and the meta step (algorithm.md §2.5-2.6).

Both work on a :class:`purer.meta.train.Run` (what is fixed) and :class:`purer.meta.train.State`
(what changes); :func:`purer.meta.train.train_iteration` runs them and does the iteration's one
host-device synchronisation. Neither step synchronises: the data step's non-finite check is a
device flag that the fused Adam kernel reads (``found_inf``), reported by the caller through
:func:`handle_nonfinite`.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch

from purer.errors import PurerError
from purer.inversion.curriculum import reversed_outer_loss

if TYPE_CHECKING:
    from purer.meta.train import Run, State

logger = logging.getLogger(__name__)


def inversion_loss_fn(run: Run, state: State):
    """The vmapped pool loss or the per-teacher loop (same maths): vmap wins on GPU, the loop on CPU."""
    mode = run.mt.inversion.teacher_batching
    use_vmap = mode == "vmap" or (mode == "auto" and torch.device(run.device).type == "cuda")
    return state.pool.inversion_loss if use_vmap else state.pool.reference_inversion_loss


def data_step(run: Run, state: State, iteration: int) -> tuple[dict[str, torch.Tensor], bool]:
    """One Adam step on the images (algorithm.md §2.6), without a host-device synchronisation.

    A non-finite loss or image gradient makes the fused Adam kernel skip the step on the device
    (its ``found_inf`` flag, as under AMP gradient scaling); :func:`train_iteration` reports it
    after the iteration's one synchronisation.

    Returns:
        The detached logging terms (``adv`` is NaN without a reversed step) plus ``finite`` (0-d
        bool: the step was taken), and whether the reversed outer loss was part of the loss.
    """
    mt = run.mt
    loss, terms = inversion_loss_fn(run, state)(state.data, state.generators["jitter"], mt.inversion,
                                                teacher_subset(run, state))
    adv = torch.full((), float("nan"), device=run.device)
    reversed_on = state.switch.is_on
    if reversed_on:
        episode = state.data.sample_episode(mt.n_way, run.n_shot, mt.n_query, state.generators["adv_episodes"],
                                            detach=False, size=run.spec.input_size, channels=run.spec.channels)
        adv = reversed_outer_loss(state.learner, state.meta_model, state.params, episode, mt.learner.inner_steps,
                                  mt.curriculum.adv_scale)
        loss = loss + adv
    images = state.data.parameters()
    grads = torch.autograd.grad(loss, images, allow_unused=True)  # the images only (algorithm.md §8.5)
    finite = finite_flag(loss, grads)
    for image, grad in zip(images, grads, strict=True):
        image.grad = grad
    state.data.optimizer.found_inf = (~finite).float()  # read by the fused Adam kernel: skip if 1
    state.data.optimizer.step()
    state.data.optimizer.zero_grad(set_to_none=True)
    return dict(terms) | {"adv": adv.detach(), "finite": finite}, reversed_on


def teacher_subset(run: Run, state: State) -> list[int] | None:
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


def handle_nonfinite(run: Run, iteration: int, terms: dict[str, torch.Tensor], reversed_on: bool) -> None:
    """Raise a PurerError naming the iteration, the term and the settings to check (``stop``), or log a
    warning (``skip``)."""
    names = ("ce", "tv", "bn", "l2") + (("adv",) if reversed_on else ())
    bad = [name for name in names if not bool(torch.isfinite(terms[name]))] or ["the image gradient"]
    what = f"the data loss is not finite at meta-iteration {iteration} (term {', '.join(bad)})"
    if run.mt.inversion.on_nonfinite == "stop":
        raise PurerError(f"meta-training {run.out_dir}: {what}; {nonfinite_suspects(bad)}; "
                         "or set meta_train.inversion.on_nonfinite: skip to skip such steps")
    logger.warning("%s: skipping this data step (%s)", what, nonfinite_suspects(bad))


def check_outer_loss(run: Run, iteration: int, loss_outer: float) -> None:
    """Stop when the outer (query) loss is not finite: its Adam step has already made the meta model
    non-finite, so no later iteration can recover (``on_nonfinite`` does not apply)."""
    if not math.isfinite(loss_outer):
        raise PurerError(f"meta-training {run.out_dir}: the outer (query) loss is not finite at meta-iteration "
                         f"{iteration}; check meta_train.outer_lr, meta_train.learner.inner_lr, "
                         "meta_train.learner.inner_steps")


def meta_step(run: Run, state: State) -> tuple[torch.Tensor, torch.Tensor]:
    """``meta_batch_size`` episodes, summed outer losses, one Adam step (algorithm.md §2.5).

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
