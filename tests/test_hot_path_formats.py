"""Speed-only changes of the trainer's hot path keep the values: one gather per domain, channels-last episodes, host lists on the device."""

from __future__ import annotations

import torch
from inversion_helpers import loaded, mixed_pool_entries

from purer.config import InversionConfig
from purer.inversion.batched import ResidentPool, _to_device, teacher_weights
from purer.inversion.dataset import PseudoData
from purer.inversion.losses import draw_shifts, inversion_terms, roll
from purer.meta.init import MetaModelSpec, build_meta_model
from purer.meta.learners import Episode, build_learner, episode_loss, meta_parameters
from purer.meta.train import in_memory_format
from purer.models.backbones import record_bn_stats
from purer.seeding import make_generator


def _episode(generator: torch.Generator, dtype=torch.float32) -> Episode:
    return Episode(
        support_x=torch.randn(6, 3, 16, 16, generator=generator, dtype=dtype),
        support_y=torch.arange(3).repeat_interleave(2),
        query_x=torch.randn(9, 3, 16, 16, generator=generator, dtype=dtype),
        query_y=torch.arange(3).repeat_interleave(3),
    )


def test_contiguous_episode_is_returned_unchanged():
    episode = _episode(torch.Generator().manual_seed(0))
    assert in_memory_format(episode, False) is episode


def test_channels_last_episode_has_the_same_values_and_labels():
    episode = _episode(torch.Generator().manual_seed(0))
    formatted = in_memory_format(episode, True)
    for name in ("support_x", "query_x"):
        x = getattr(formatted, name)
        assert x.is_contiguous(memory_format=torch.channels_last)
        assert not x.is_contiguous()
        assert torch.equal(x, getattr(episode, name))
    assert formatted.support_y is episode.support_y and formatted.query_y is episode.query_y


def test_channels_last_gives_the_same_second_order_meta_gradient():
    """float64 so that the two memory formats agree to rounding of double precision."""
    spec = MetaModelSpec("conv4", {"width": 4, "adaptive_pool": False}, 3, 16, 3)
    model = build_meta_model(spec, seed=0).double().requires_grad_(False)
    params = meta_parameters(model)
    episode = _episode(torch.Generator().manual_seed(1), torch.float64)
    learner = build_learner("maml", 0.1)
    grads = []
    for formatted in (episode, in_memory_format(episode, True)):
        loss, _ = episode_loss(learner, model, params, formatted, steps=1, create_graph=True)
        grads.append(torch.autograd.grad(loss, list(params.values())))
    for contiguous, channels_last in zip(*grads, strict=True):
        torch.testing.assert_close(channels_last, contiguous, rtol=1e-9, atol=1e-11)


def test_host_values_reach_the_device_with_their_dtype():
    weights = _to_device([3.0, 2.0, 1.0], torch.float32, torch.device("cpu"))
    index = _to_device([2, 0], torch.int64, torch.device("cpu"))
    assert weights.dtype == torch.float32 and weights.tolist() == [3.0, 2.0, 1.0]
    assert index.dtype == torch.int64 and index.tolist() == [2, 0]


def _naive_loop(pool: ResidentPool, data: PseudoData, config: InversionConfig, order: list[int]) -> torch.Tensor:
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
    data = PseudoData(pool.teachers, 3, 0.25, make_generator(0, "pseudo"))
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
