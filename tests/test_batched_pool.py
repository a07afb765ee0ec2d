"""The vmapped inversion loss equals the per-teacher loop (docs/method.md §2.3, §2.7, §8.3).

Tolerances: fp32 totals, terms and image gradients agree to atol 1e-5 / rtol 1e-5 (the vmapped
groups only sum in another order). bf16 is compared with fp32: totals to 1e-2 relative, image
gradients by cosine similarity > 0.95.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from inversion_helpers import (
    conv4_pool_entries,
    entry,
    loaded,
    mixed_pool_entries,
)

from purer.config import InversionConfig
from purer.errors import ConfigError
from purer.inversion.dataset import DynamicDataset
from purer.inversion.losses import draw_shifts, inversion_terms, roll
from purer.inversion.teacher_pool import ResidentPool, _gathered, teacher_weights
from purer.models.backbones import record_bn_stats
from purer.seeding import make_generator

FP32 = {"atol": 1e-5, "rtol": 1e-5}


def _setup(entries, spc: int = 3, **pool_kwargs):
    pool = ResidentPool(None, loaded=loaded(entries), **pool_kwargs)
    data = DynamicDataset(pool.teachers, spc, 0.25, make_generator(0, "pseudo"))
    return pool, data


def _run(method, data, config, teachers=None, seed: int = 0):
    total, terms = method(data, make_generator(seed, "jitter"), config, teachers)
    grads = torch.autograd.grad(total, data.parameters(), allow_unused=True)
    return total, terms, grads


def _assert_same(pool, data, config, teachers=None):
    total, terms, grads = _run(pool.inversion_loss, data, config, teachers)
    ref_total, ref_terms, ref_grads = _run(pool.reference_inversion_loss, data, config, teachers)
    torch.testing.assert_close(total, ref_total, **FP32)
    for name in ("ce", "tv", "bn", "l2", "total"):
        torch.testing.assert_close(terms[name], ref_terms[name], **FP32)
    for g, ref in zip(grads, ref_grads, strict=True):
        if ref is None:
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, ref, **FP32)
    return total, grads


@pytest.mark.parametrize("weighting", ["equal", "triangular"])
def test_conv4_pool_with_short_block_matches_reference(weighting):
    pool, data = _setup(conv4_pool_entries())
    assert [g.members for g in pool.groups] == [[0, 1], [2]]  # the 2-class block is its own group
    _, grads = _assert_same(pool, data, InversionConfig(teacher_weighting=weighting, first_bn_multiplier=10.0))
    assert grads[0].abs().sum() > 0


def test_mixed_architectures_and_two_domains_match_reference():
    pool, data = _setup(mixed_pool_entries(), spc=2)
    assert [g.members for g in pool.groups] == [[0, 3], [1, 2], [4], [5]]
    _assert_same(pool, data, InversionConfig(teacher_weighting="triangular"))


def test_permuted_teacher_order_matches_reference():
    pool, data = _setup(conv4_pool_entries())
    _assert_same(pool, data, InversionConfig(teacher_weighting="triangular"), teachers=[1, 2, 0])


def test_teacher_subset_in_given_order_and_untouched_images():
    pool, data = _setup(conv4_pool_entries())
    _, grads = _assert_same(pool, data, InversionConfig(teacher_weighting="triangular"), teachers=[2, 0])
    touched = grads[0].flatten(1).abs().sum(1) > 0
    rows_teacher1 = data.domains[(16, 3)].rows([3, 4, 5])
    assert not touched[rows_teacher1].any() and touched.sum() == 5 * 3


def test_single_teacher_by_hand():
    """Teacher 1 alone equals its module on its rolled slice, with the shift drawn from the same seed."""
    pool, data = _setup(conv4_pool_entries())
    config = InversionConfig()
    total, terms = pool.inversion_loss(data, make_generator(4, "j"), config, teachers=[1])
    (shift,) = draw_shifts(1, config.jitter, make_generator(4, "j"))
    x, targets = data.teacher_batch([3, 4, 5])
    x = roll(x, shift)
    with record_bn_stats() as stats:
        logits = pool.modules[1](x)
    assert len(stats) == 4
    expected = inversion_terms(logits, targets, x, stats, config)
    torch.testing.assert_close(total, expected["total"], **FP32)
    torch.testing.assert_close(terms["bn"], expected["bn"].detach(), **FP32)


def test_triangular_weights_by_hand_on_two_teachers():
    pool, data = _setup([entry(0, [0, 1, 2]), entry(1, [3, 4, 5])])
    for weighting in ("equal", "triangular"):
        config = InversionConfig(jitter=0, teacher_weighting=weighting)
        l0, _ = pool.inversion_loss(data, make_generator(0, "j"), config, teachers=[0])
        l1, _ = pool.inversion_loss(data, make_generator(0, "j"), config, teachers=[1])
        both, terms = pool.inversion_loss(data, make_generator(0, "j"), config)
        reverse, _ = pool.inversion_loss(data, make_generator(0, "j"), config, teachers=[1, 0])
        if weighting == "equal":
            torch.testing.assert_close(both, l0 + l1, **FP32)
        else:
            torch.testing.assert_close(both, 2 * l0 + l1, **FP32)
            torch.testing.assert_close(reverse, 2 * l1 + l0, **FP32)
    assert teacher_weights(3, "triangular") == [3.0, 2.0, 1.0]


def test_logged_terms_are_teacher_means_and_detached():
    pool, data = _setup(conv4_pool_entries())
    config = InversionConfig(jitter=0)
    _, terms = pool.inversion_loss(data, make_generator(0, "j"), config)
    singles = [pool.inversion_loss(data, make_generator(0, "j"), config, teachers=[t])[1] for t in range(3)]
    for name in ("ce", "tv", "bn", "l2"):
        assert not terms[name].requires_grad and terms[name].dim() == 0
        torch.testing.assert_close(terms[name], sum(s[name] for s in singles) / 3, **FP32)


def test_teacher_weights_stay_frozen_and_storage_is_shared():
    pool, data = _setup(conv4_pool_entries())
    total, _ = pool.inversion_loss(data, make_generator(0, "j"), InversionConfig())
    total.backward()
    for module in pool.modules:
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    for group in pool.groups:
        assert not any(v.requires_grad for v in group.params.values())
    weight = pool.groups[0].params["encoder.0.weight"]
    assert pool.modules[1].encoder[0].weight.data_ptr() == weight[1].data_ptr()
    assert pool.modules[1].encoder[1].running_var.data_ptr() == pool.groups[0].buffers["encoder.1.running_var"][1].data_ptr()


def test_channels_last_matches_reference():
    pool, data = _setup(conv4_pool_entries(), channels_last=True)
    _assert_same(pool, data, InversionConfig())
    plain, plain_data = _setup(conv4_pool_entries())
    total, _ = plain.inversion_loss(plain_data, make_generator(0, "jitter"), InversionConfig())
    torch.testing.assert_close(total, _run(pool.inversion_loss, data, InversionConfig())[0], **FP32)


def test_bf16_close_to_fp32():
    """bf16 (autocast in the loop, an explicit cast under vmap) stays close to fp32.

    Single gradient elements are noisy in bf16 (max-pool and ReLU routing), so whole gradients are
    compared by cosine similarity.
    """
    fp32, fp32_data = _setup(conv4_pool_entries())
    bf16, bf16_data = _setup(conv4_pool_entries(), precision="bf16")
    total, _, (grad,) = _run(fp32.inversion_loss, fp32_data, InversionConfig())
    for method in (bf16.inversion_loss, bf16.reference_inversion_loss):
        low_total, terms, (low_grad,) = _run(method, bf16_data, InversionConfig())
        assert low_total.dtype == torch.float32 and terms["bn"].dtype == torch.float32
        torch.testing.assert_close(low_total, total, atol=0.0, rtol=1e-2)
        assert not torch.equal(low_grad, grad)  # really computed in bf16
        assert torch.nn.functional.cosine_similarity(low_grad.flatten(), grad.flatten(), dim=0) > 0.95


def test_bad_arguments_are_clear_errors():
    pool, data = _setup(conv4_pool_entries())
    for teachers in ([0, 0], [3], []):
        with pytest.raises(ConfigError, match="teachers: expected distinct positions in 0..2"):
            pool.inversion_loss(data, make_generator(0, "j"), InversionConfig(), teachers)
    with pytest.raises(ConfigError, match="precision"):
        ResidentPool(None, precision="fp16", loaded=loaded(conv4_pool_entries()))
    with pytest.raises(ConfigError, match="teacher_weighting"):
        teacher_weights(2, "linear")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_vmap_matches_reference_loop():
    """On CUDA (TF32 off): the vmapped loss and image gradients equal the loop to 1e-4."""
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        pool = ResidentPool(None, "cuda", loaded=loaded(mixed_pool_entries()))
        data = DynamicDataset(pool.teachers, 2, 0.25, make_generator(0, "pseudo"), "cuda")
        config = InversionConfig(teacher_weighting="triangular")
        total, _, grads = _run(pool.inversion_loss, data, config)
        ref_total, _, ref_grads = _run(pool.reference_inversion_loss, data, config)
        torch.testing.assert_close(total, ref_total, atol=1e-4, rtol=1e-4)
        for g, ref in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, ref, atol=1e-4, rtol=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


def test_compiled_loop_matches_eager_loop():
    """``compile=True`` runs each teacher through its group's compiled graph: same terms and image
    gradients as the eager loop (fp32, float rounding only), one graph per group."""
    eager, data = _setup(conv4_pool_entries())
    compiled, compiled_data = _setup(conv4_pool_entries(), compile=True)
    config = InversionConfig()
    total, terms, grads = _run(eager.reference_inversion_loss, data, config)
    for _ in range(2):  # the second call reuses the compiled graphs
        c_total, c_terms, c_grads = _run(compiled.reference_inversion_loss, compiled_data, config)
        torch.testing.assert_close(c_total, total, **FP32)
        for name in ("ce", "tv", "bn", "l2"):
            torch.testing.assert_close(c_terms[name], terms[name], **FP32)
        torch.testing.assert_close(c_grads[0], grads[0], **FP32)
    assert len(compiled._compiled) == 2  # two groups: the 3-class blocks and the short block


def test_consecutive_spans_match_the_gather():
    """Class-major data in pool order is sliced (views), not gathered: same slices, same gradient."""
    pool, data = _setup(conv4_pool_entries())
    tables = pool.tables(data)
    assert tables.spans == [(0, 9), (9, 9), (18, 6)]
    gathered = _gathered(replace(tables, spans=[None] * 3), [0, 1, 2])
    sliced = _gathered(tables, [0, 1, 2])
    (images,) = data.parameters()
    assert all(part._base is images for part in sliced)  # views of the images themselves
    for a, b in zip(gathered, sliced, strict=True):
        torch.testing.assert_close(a, b, atol=0.0, rtol=0.0)
    weights = torch.randn(24)
    (ga,) = torch.autograd.grad((torch.cat(gathered).sum(dim=(1, 2, 3)) * weights).sum(), data.parameters())
    (gb,) = torch.autograd.grad((torch.cat(sliced).sum(dim=(1, 2, 3)) * weights).sum(), data.parameters())
    torch.testing.assert_close(ga, gb, atol=0.0, rtol=0.0)
    # a permuted order is not consecutive: the gather is used
    assert _gathered(tables, [2, 0])[0]._base is not images
