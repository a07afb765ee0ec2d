"""Speed-only changes of the inversion hot path keep the values: one gather per domain, host lists on the device."""

from __future__ import annotations

import torch
from inversion_helpers import loaded, mixed_pool_entries

from purer.config import InversionConfig
from purer.inversion.dataset import DynamicDataset
from purer.inversion.losses import draw_shifts, inversion_terms, roll
from purer.inversion.teacher_pool import ResidentPool, _to_device, teacher_weights
from purer.models.backbones import record_bn_stats
from purer.seeding import make_generator


def test_host_values_reach_the_device_with_their_dtype():
    weights = _to_device([3.0, 2.0, 1.0], torch.float32, torch.device("cpu"))
    index = _to_device([2, 0], torch.int64, torch.device("cpu"))
    assert weights.dtype == torch.float32 and weights.tolist() == [3.0, 2.0, 1.0]
    assert index.dtype == torch.int64 and index.tolist() == [2, 0]


def _naive_loop(pool: ResidentPool, data: DynamicDataset, config: InversionConfig, order: list[int]) -> torch.Tensor:
    """The per-teacher loop with one separate gather per teacher (the oracle)."""
    shifts = draw_shifts(len(order), config.jitter, make_generator(0, "jitter"))
    weights = teacher_weights(len(order), config.teacher_weighting)
    total = 0.0
    for j, position in enumerate(order):
        x_raw, targets = data.teacher_batch(pool.teachers[position].classes)
        x = roll(x_raw, shifts[j])
        with record_bn_stats() as stats:
            logits = pool.modules[position](x)
        total = total + weights[j] * inversion_terms(logits, targets, x, stats, config)["total"]
    return total


def test_one_gather_per_domain_gives_the_per_teacher_gradients():
    """Two domains, a subset in shuffled order, triangular weights: same loss and image gradients."""
    pool = ResidentPool(None, loaded=loaded(mixed_pool_entries()))
    data = DynamicDataset(pool.teachers, 3, 0.25, make_generator(0, "pseudo"))
    config = InversionConfig(teacher_weighting="triangular")
    order = [5, 1, 3, 4, 0]
    total, _ = pool.reference_inversion_loss(data, make_generator(0, "jitter"), config, order)
    expected = _naive_loop(pool, data, config, order)
    grads = torch.autograd.grad(total, data.parameters())
    expected_grads = torch.autograd.grad(expected, data.parameters())
    torch.testing.assert_close(total, expected, rtol=0, atol=0)
    for g, ref in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-6, atol=1e-7)
        assert ref.abs().sum() > 0
