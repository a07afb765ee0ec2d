"""Inversion-loss terms against hand-computed values and naive loops (docs/method.md §2.3)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import vmap

from purer.config import InversionConfig
from purer.errors import ConfigError
from purer.inversion.losses import (
    bn_matching,
    draw_shifts,
    inversion_terms,
    l2_prior,
    roll,
    roll_jitter,
    total_variation,
)
from purer.models.backbones import BNStats
from purer.seeding import make_generator


def test_total_variation_by_hand_on_2x2():
    # x = [[1, 2], [4, 8]]: horizontal (1, 4), vertical (3, 6), diagonal 8-1, anti-diagonal 4-2.
    x = torch.tensor([[[[1.0, 2.0], [4.0, 8.0]]]])
    expected = math.sqrt(1 + 16) + math.sqrt(9 + 36) + 7.0 + 2.0
    assert total_variation(x).item() == pytest.approx(expected, rel=1e-6)


def _naive_tv(x: torch.Tensor) -> float:
    """Pixel-by-pixel loops over the four neighbour differences."""
    b, c, h, w = x.shape
    sums = [0.0, 0.0, 0.0, 0.0]
    for n in range(b):
        for k in range(c):
            for i in range(h):
                for j in range(w):
                    v = float(x[n, k, i, j])
                    if j + 1 < w:
                        sums[0] += (float(x[n, k, i, j + 1]) - v) ** 2
                    if i + 1 < h:
                        sums[1] += (float(x[n, k, i + 1, j]) - v) ** 2
                    if i + 1 < h and j + 1 < w:
                        sums[2] += (float(x[n, k, i + 1, j + 1]) - v) ** 2
                    if i + 1 < h and j >= 1:
                        sums[3] += (float(x[n, k, i + 1, j - 1]) - float(x[n, k, i, j])) ** 2
    return sum(math.sqrt(s) for s in sums)


def test_total_variation_matches_naive_loop():
    x = torch.randn(2, 3, 4, 5, generator=make_generator(0, "tv"), dtype=torch.float64)
    assert total_variation(x).item() == pytest.approx(_naive_tv(x), rel=1e-10)


def test_l2_prior_is_not_squared():
    assert l2_prior(torch.tensor([[3.0, 0.0], [0.0, 4.0]])).item() == pytest.approx(5.0)


def _stats(mean, var, running_mean, running_var) -> BNStats:
    t = torch.tensor
    return BNStats(t(mean), t(var), t(running_mean), t(running_var))


def test_bn_matching_by_hand():
    # layer 0: ||[1,1]-[4,1]|| = 3, ||[0,0]-[0,4]|| = 4 -> 7; layer 1: 0 + ||[1]-[-1]|| = 2.
    stats = [_stats([0.0, 4.0], [4.0, 1.0], [0.0, 0.0], [1.0, 1.0]), _stats([-1.0], [2.0], [1.0], [2.0])]
    assert bn_matching(stats, 1.0).item() == pytest.approx(9.0)
    assert bn_matching(stats, 10.0).item() == pytest.approx(72.0)


def test_bn_matching_rejects_missing_statistics():
    with pytest.raises(ConfigError, match="BatchNorm"):
        bn_matching([], 1.0)
    with pytest.raises(ConfigError, match="running_stats=True"):
        bn_matching([BNStats(torch.zeros(1), torch.ones(1), None, None)], 1.0)


def test_inversion_terms_weighted_total_by_hand():
    logits = torch.zeros(2, 3)  # uniform: CE = ln 3
    targets = torch.tensor([0, 2])
    x = torch.tensor([[[[1.0, 2.0], [4.0, 8.0]]]])
    stats = [_stats([0.0, 4.0], [4.0, 1.0], [0.0, 0.0], [1.0, 1.0])]
    config = InversionConfig(ce_weight=2.0, tv_weight=0.1, bn_weight=0.01, l2_weight=1e-3, first_bn_multiplier=3.0)
    terms = inversion_terms(logits, targets, x, stats, config)
    tv = math.sqrt(17) + math.sqrt(45) + 9.0
    l2 = math.sqrt(1 + 4 + 16 + 64)
    assert terms["ce"].item() == pytest.approx(math.log(3))
    assert terms["tv"].item() == pytest.approx(tv)
    assert terms["bn"].item() == pytest.approx(21.0)
    assert terms["l2"].item() == pytest.approx(l2)
    expected = 2 * math.log(3) + 0.1 * tv + 0.01 * 21.0 + 1e-3 * l2
    assert terms["total"].item() == pytest.approx(expected, rel=1e-6)


def test_terms_work_inside_vmap():
    x = torch.randn(3, 2, 1, 4, 4, generator=make_generator(0, "vmap"))
    batched = vmap(total_variation)(x)
    looped = torch.stack([total_variation(x[t]) for t in range(3)])
    torch.testing.assert_close(batched, looped)
    torch.testing.assert_close(vmap(l2_prior)(x), torch.stack([l2_prior(x[t]) for t in range(3)]))


def test_roll_jitter_is_a_seeded_cyclic_roll_within_bounds():
    x = torch.arange(2 * 1 * 5 * 6, dtype=torch.float32).view(2, 1, 5, 6)
    allowed = {(dy, dx): roll(x, (dy, dx)) for dy in range(-2, 3) for dx in range(-2, 3)}
    seen = set()
    generator = make_generator(0, "jitter")
    for _ in range(200):
        y = roll_jitter(x, 2, generator)
        assert y.sum() == x.sum()
        matches = [s for s, r in allowed.items() if torch.equal(r, y)]
        assert matches, "jittered batch is not a roll by at most 2 pixels"
        seen.add(matches[0])
    assert len(seen) == 25  # every shift in [-2, 2]^2 occurs
    torch.testing.assert_close(roll_jitter(x, 2, make_generator(1, "j")), roll_jitter(x, 2, make_generator(1, "j")))


def test_roll_jitter_zero_shift_is_identity_and_shared_by_batch():
    x = torch.randn(3, 2, 4, 4, generator=make_generator(0, "x"))
    assert torch.equal(roll_jitter(x, 0, make_generator(0, "g")), x)
    (dy, dx), = draw_shifts(1, 3, make_generator(5, "g"))
    y = roll_jitter(x, 3, make_generator(5, "g"))
    for n in range(3):
        assert torch.equal(y[n], torch.roll(x[n], (dy, dx), dims=(-2, -1)))


def test_draw_shifts_bounds():
    shifts = draw_shifts(500, 1, make_generator(0, "s"))
    assert {s for pair in shifts for s in pair} == {-1, 0, 1}
