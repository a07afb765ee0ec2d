"""Backbones (docs/method.md §1.3): shapes, Conv4 head size, batch-statistics BN, BN recording."""

import pytest
import torch

from purer.errors import ConfigError
from purer.models.backbones import (
    BACKBONES,
    ChannelStats,
    RecordingBatchNorm2d,
    build_backbone,
    record_bn_stats,
)


@pytest.mark.parametrize("name", ["conv4", "resnet10", "resnet18"])
@pytest.mark.parametrize("size", [32, 84])
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shapes(name, size, channels):
    torch.manual_seed(0)
    model = build_backbone(name, 5, channels, size)
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        logits = model(x)
        features = model.features(x)
    assert logits.shape == (2, 5)
    assert features.shape == (2, model.feature_dim)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("size", "dim"), [(32, 128), (84, 800), (16, 32)])
def test_conv4_head_size(size, dim):
    model = build_backbone("conv4", 5, 3, size, width=32)
    assert model.feature_dim == dim
    assert model.head.in_features == dim


def test_conv4_width_64_and_adaptive_pool():
    assert build_backbone("conv4", 5, 3, 84, width=64).head.in_features == 64 * 5 * 5
    pooled = build_backbone("conv4", 5, 3, 84, adaptive_pool=True)
    assert pooled.head.in_features == 32
    assert pooled(torch.randn(2, 3, 40, 40)).shape == (2, 5)


def test_resnet_feature_dims():
    assert build_backbone("resnet10", 5, 3, 32).feature_dim == 512
    assert build_backbone("resnet18", 5, 3, 32).feature_dim == 512
    n10 = sum(
        1 for m in build_backbone("resnet10", 5, 3, 32).modules() if isinstance(m, RecordingBatchNorm2d)
    )
    n18 = sum(
        1 for m in build_backbone("resnet18", 5, 3, 32).modules() if isinstance(m, RecordingBatchNorm2d)
    )
    assert (n10, n18) == (1 + 4 * 2 + 3, 1 + 8 * 2 + 3)  # stem + two per block + three shortcuts


def test_unknown_architecture_and_tiny_conv4():
    with pytest.raises(ConfigError, match="unknown architecture 'vgg'.*conv4"):
        build_backbone("vgg", 5, 3, 32)
    with pytest.raises(ConfigError, match="image_size >= 16"):
        build_backbone("conv4", 5, 3, 8)
    assert set(BACKBONES) == {"conv4", "resnet10", "resnet18"}


def test_meta_model_bn_uses_batch_stats_in_eval():
    torch.manual_seed(0)
    meta = build_backbone("conv4", 5, 3, 16, running_stats=False).eval()
    bn = meta.encoder[1]
    assert bn.running_mean is None and bn.running_var is None
    x = torch.randn(4, 3, 16, 16) * 3 + 2
    h = meta.encoder[0](x)
    expected = (h - h.mean(dim=(0, 2, 3), keepdim=True)) / torch.sqrt(
        h.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + bn.eps
    )
    torch.testing.assert_close(bn(h), expected, atol=1e-5, rtol=1e-5)
    # a teacher in eval mode uses its running statistics (0 and 1 at init): BN is the identity
    teacher = build_backbone("conv4", 5, 3, 16, running_stats=True).eval()
    h = teacher.encoder[0](x)
    torch.testing.assert_close(teacher.encoder[1](h), h / torch.sqrt(torch.tensor(1.0 + bn.eps)))


def test_record_bn_stats_one_entry_per_bn():
    torch.manual_seed(0)
    model = build_backbone("resnet10", 3, 3, 16).eval()
    n_bn = sum(1 for m in model.modules() if isinstance(m, RecordingBatchNorm2d))
    with record_bn_stats() as stats:
        model(torch.randn(2, 3, 16, 16))
    assert len(stats) == n_bn
    with record_bn_stats() as stats_conv4:
        build_backbone("conv4", 3, 3, 16)(torch.randn(2, 3, 16, 16))
    assert len(stats_conv4) == 4
    model(torch.randn(2, 3, 16, 16))  # outside the block nothing is recorded
    assert len(stats) == n_bn


def test_record_bn_stats_values():
    bn = RecordingBatchNorm2d(2).eval()
    bn.running_mean.fill_(0.5)
    # channel 0 holds 1, 2, 3, 4 (mean 2.5, biased var 1.25); channel 1 holds 0, 0, 0, 8 (mean 2, var 12)
    x = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]]], [[[3.0, 4.0]], [[0.0, 8.0]]]])
    with record_bn_stats() as stats:
        bn(x)
    (entry,) = stats
    torch.testing.assert_close(entry.mean, torch.tensor([2.5, 2.0]))
    torch.testing.assert_close(entry.var, torch.tensor([1.25, 12.0]))
    torch.testing.assert_close(entry.running_mean, torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(entry.running_var, torch.ones(2))


def test_record_bn_stats_under_functional_call_keeps_graph():
    model = build_backbone("conv4", 5, 1, 16)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    x = torch.randn(3, 1, 16, 16, requires_grad=True)
    with record_bn_stats() as stats:
        torch.func.functional_call(model, params, (x,))
    stats[0].mean.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_channel_stats_values_and_gradient_match_autograd():
    """The fused statistics equal mean/var over (B, H, W), and their fused backward equals autograd's
    backward of the plain expressions (float64 gradcheck, then a hand-derived case)."""
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    mean, var = ChannelStats.apply(x)
    torch.testing.assert_close(mean, x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(var, x.var(dim=(0, 2, 3), unbiased=False))
    assert torch.autograd.gradcheck(ChannelStats.apply, (x,))
    g_mean, g_var = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    (fused,) = torch.autograd.grad((mean * g_mean).sum() + (var * g_var).sum(), x)
    plain_mean, plain_var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
    (plain,) = torch.autograd.grad((plain_mean * g_mean).sum() + (plain_var * g_var).sum(), x)
    torch.testing.assert_close(fused, plain)
    # one channel, n = 2 values {1, 3}: d var / dx = 2 (x - 2) / 2 = [-1, 1]; d mean / dx = 1/2
    pair = torch.tensor([[[[1.0]]], [[[3.0]]]], requires_grad=True)
    _, pair_var = ChannelStats.apply(pair)
    pair_var.sum().backward()
    torch.testing.assert_close(pair.grad.flatten(), torch.tensor([-1.0, 1.0]))


def test_channel_stats_channels_last_and_vmap():
    x = torch.randn(3, 2, 4, 4, 4)
    per_item = [ChannelStats.apply(x[i]) for i in range(3)]
    mean, var = torch.func.vmap(ChannelStats.apply)(x)
    torch.testing.assert_close(mean, torch.stack([m for m, _ in per_item]))
    torch.testing.assert_close(var, torch.stack([v for _, v in per_item]))
    last = x[0].contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ChannelStats.apply(last)[1], per_item[0][1])


def test_record_bn_stats_blocks_nest():
    bn = RecordingBatchNorm2d(2).eval()
    with record_bn_stats() as outer:
        bn(torch.randn(2, 2, 3, 3))
        with record_bn_stats() as inner:
            bn(torch.randn(2, 2, 3, 3))
        bn(torch.randn(2, 2, 3, 3))
    assert len(outer) == 2 and len(inner) == 1
