"""Inversion-loss terms and jitter (docs/method.md §2.3).

Pure functions of their tensor arguments: no state, no devices, no global RNG. They contain no
``.item()`` and no data-dependent control flow, so they also run per teacher inside
``torch.func.vmap`` (the batched pool, :mod:`purer.inversion.teacher_pool`).

Per teacher T with images X (its classes' slice of the dynamic dataset) and relative targets y:

- jitter: one integer shift (dy, dx) in [-jitter, jitter]^2, shared by the slice; X~ = cyclic roll;
- ``ce``: cross-entropy of T(X~) against y (mean over the slice);
- ``tv``: sum of the L2 norms (not squared) of the horizontal, vertical and two diagonal
  neighbour differences of X~;
- ``bn``: sum over BatchNorm layers of ||running_var - var||_2 + ||running_mean - mean||_2, with the
  batch mean and biased variance of each layer's *input*; the first layer times a multiplier;
- ``l2``: the L2 norm (not squared) of X~;
- ``total`` = ce_weight·ce + tv_weight·tv + bn_weight·bn + l2_weight·l2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from purer.config import InversionConfig
from purer.errors import ConfigError
from purer.models.backbones import BNStats

TERM_NAMES = ("ce", "tv", "bn", "l2")


def draw_shifts(n: int, max_shift: int, generator: torch.Generator) -> list[tuple[int, int]]:
    """Draw ``n`` integer shifts (along H, along W), each uniform in [-max_shift, max_shift].

    Drawn in one call on the generator's device; ``n`` shifts consume the same random numbers
    whatever code then uses them (the batched pool and the reference loop share them).

    Returns:
        ``n`` pairs ``(dy, dx)`` of Python ints.
    """
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator, device=generator.device)
    return [(int(dy), int(dx)) for dy, dx in shifts.tolist()]


def roll(x: torch.Tensor, shift: tuple[int, int]) -> torch.Tensor:
    """Cyclic roll of ``x`` [..., H, W] by ``shift`` = (dy, dx) along (H, W)."""
    return torch.roll(x, shifts=shift, dims=(-2, -1))


def roll_jitter(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Jitter (docs/method.md §2.3, step 1): one random cyclic roll shared by the whole batch.

    Args:
        x: images [B, C, H, W].
        max_shift: largest shift in pixels along each axis (0 = no jitter, still one draw).
        generator: source of the shift.

    Returns:
        The rolled images [B, C, H, W] (a pure permutation of pixels).
    """
    return roll(x, draw_shifts(1, max_shift, generator)[0])


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Sum of the Frobenius norms (not squared) of four neighbour-difference tensors.

    Differences over the whole batch: horizontal ``x[..., :, 1:] - x[..., :, :-1]``, vertical
    ``x[..., 1:, :] - x[..., :-1, :]``, diagonal ``x[..., 1:, 1:] - x[..., :-1, :-1]`` and
    anti-diagonal ``x[..., 1:, :-1] - x[..., :-1, 1:]`` (docs/method.md §2.3, step 3).

    Args:
        x: images [..., H, W].

    Returns:
        0-d tensor.
    """
    diffs = (
        x[..., :, 1:] - x[..., :, :-1],
        x[..., 1:, :] - x[..., :-1, :],
        x[..., 1:, 1:] - x[..., :-1, :-1],
        x[..., 1:, :-1] - x[..., :-1, 1:],
    )
    return sum(torch.linalg.vector_norm(d) for d in diffs)


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm (not squared) of the whole tensor (docs/method.md §2.3, step 5). 0-d."""
    return torch.linalg.vector_norm(x)


def bn_matching(stats: Sequence[BNStats], first_multiplier: float = 1.0) -> torch.Tensor:
    """BatchNorm statistic matching (docs/method.md §2.3, step 4).

    Args:
        stats: one :class:`BNStats` per BatchNorm layer in forward order: batch mean/var [C] of the
            layer's input and its running mean/var [C].
        first_multiplier: weight of the first layer's term (1 in PURER, 10 in DeepInversion).

    Returns:
        0-d tensor: Σ_l m_l (||running_var_l − var_l||₂ + ||running_mean_l − mean_l||₂).

    Raises:
        ConfigError: no BatchNorm statistics, or a layer without running statistics.
    """
    if not stats:
        raise ConfigError("BN matching needs a teacher with BatchNorm layers (no statistics were recorded)")
    total = None
    for layer, s in enumerate(stats):
        if s.running_mean is None or s.running_var is None:
            raise ConfigError("BN matching needs teachers built with running_stats=True")
        term = torch.linalg.vector_norm(s.running_var - s.var) + torch.linalg.vector_norm(s.running_mean - s.mean)
        term = term * first_multiplier if layer == 0 else term
        total = term if total is None else total + term
    return total


def inversion_terms(
    logits: torch.Tensor,
    targets: torch.Tensor,
    x_jittered: torch.Tensor,
    stats: Sequence[BNStats],
    config: InversionConfig,
) -> dict[str, torch.Tensor]:
    """All terms of one teacher's inversion loss (docs/method.md §2.3, step 6).

    Args:
        logits: teacher output [B, num_outputs] (any float dtype; CE is computed in fp32).
        targets: relative class ids [B] (int64).
        x_jittered: the jittered input [B, C, H, W] the teacher saw.
        stats: the BatchNorm statistics recorded during that forward.
        config: the weights (``ce_weight``, ``tv_weight``, ``bn_weight``, ``l2_weight``) and
            ``first_bn_multiplier``.

    Returns:
        ``{"ce", "tv", "bn", "l2"}`` unweighted 0-d tensors and their weighted sum ``"total"``.
    """
    x32 = x_jittered.float()
    terms = {
        "ce": F.cross_entropy(logits.float(), targets),
        "tv": total_variation(x32),
        "bn": bn_matching(stats, config.first_bn_multiplier),
        "l2": l2_prior(x32),
    }
    terms["total"] = (
        config.ce_weight * terms["ce"]
        + config.tv_weight * terms["tv"]
        + config.bn_weight * terms["bn"]
        + config.l2_weight * terms["l2"]
    )
    return terms
