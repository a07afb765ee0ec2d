"""The dynamic dataset: layout, episodes, domains, optimiser state, grids (docs/method.md §2.2, §2.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from inversion_helpers import (
    entry,
    mixed_pool_entries,
)
from PIL import Image

from purer.config import InversionConfig
from purer.errors import CheckpointError, ConfigError
from purer.inversion.dataset import Domain, DynamicDataset, resolve_images_per_class, save_png
from purer.seeding import make_generator


def _domain(spc: int = 4, classes=(10, 11, 12, 13, 14), size: int = 8, channels: int = 3, seed: int = 0):
    return Domain(classes, spc, size, channels, make_generator(seed, "data"), mean=(0.5,) * channels, std=(0.25,) * channels)


def test_layout_is_class_major_with_fixed_labels():
    d = _domain(spc=3, classes=(7, 2, 9))
    assert d.images.shape == (9, 3, 8, 8) and d.images.requires_grad and d.images.is_leaf
    assert d.labels.tolist() == [7, 7, 7, 2, 2, 2, 9, 9, 9]
    assert torch.equal(d.rows([9, 7]), torch.tensor([6, 7, 8, 0, 1, 2]))


def test_initial_images_are_seeded_standard_normal():
    a, b, c = _domain(spc=50, seed=0), _domain(spc=50, seed=0), _domain(spc=50, seed=1)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert abs(a.images.mean().item()) < 0.05 and abs(a.images.std().item() - 1) < 0.05


def test_teacher_batch_indexes_and_gradients_reach_only_its_rows():
    d = _domain(spc=2)
    x, targets = d.teacher_batch([12, 10])
    assert torch.equal(x, d.images.detach()[[4, 5, 0, 1]])
    assert targets.tolist() == [0, 0, 1, 1]
    x.sum().backward()
    touched = d.images.grad.flatten(1).abs().sum(1) > 0
    assert touched.tolist() == [True, True, False, False, True, True, False, False, False, False]
    with pytest.raises(ConfigError, match=r"unknown class ids \[99\]"):
        d.teacher_batch([10, 99])


def test_sample_rows_distinct_classes_and_disjoint_support_query():
    d = _domain(spc=6, classes=tuple(range(20, 28)))
    generator = make_generator(0, "episodes")
    for _ in range(30):
        support, query = d.sample_rows(4, 2, 3, generator)
        s_cls = d.labels[support].view(4, 2)
        q_cls = d.labels[query].view(4, 3)
        assert (s_cls == s_cls[:, :1]).all() and (q_cls == s_cls[:, :1]).all()  # one class per label
        assert len(set(s_cls[:, 0].tolist())) == 4
        assert not set(support.tolist()) & set(query.tolist())
        assert len(set(query.tolist())) == query.numel()


def test_sampling_is_deterministic_and_covers_all_classes():
    d = _domain(spc=4, classes=tuple(range(12)))
    a = [d.sample_rows(3, 1, 2, make_generator(3, "e")) for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(a[0], a[1], strict=True))
    generator = make_generator(0, "cover")
    seen = {int(d.labels[r]) for _ in range(60) for r in d.sample_rows(3, 1, 2, generator)[0]}
    assert seen == set(range(12))


def test_full_use_when_spc_equals_shots_plus_queries():
    d = _domain(spc=4)
    support, query = d.sample_rows(5, 1, 3, make_generator(0, "full"))
    assert sorted(torch.cat([support, query]).tolist()) == list(range(20))


def test_episode_labels_values_and_detach():
    d = _domain(spc=4)
    episode = d.sample_episode(3, 1, 2, make_generator(1, "ep"), detach=True)
    support, query = d.sample_rows(3, 1, 2, make_generator(1, "ep"))
    assert episode.support_y.tolist() == [0, 1, 2] and episode.query_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(episode.support_x, d.images.detach()[support])
    assert torch.equal(episode.query_x, d.images.detach()[query])
    assert not episode.support_x.requires_grad and not episode.query_x.requires_grad


def test_non_detached_episode_sends_gradient_to_support_and_query_images():
    d = _domain(spc=4)
    episode = d.sample_episode(2, 1, 2, make_generator(2, "adv"), detach=False)
    (episode.support_x.sum() + episode.query_x.sum()).backward()
    support, query = d.sample_rows(2, 1, 2, make_generator(2, "adv"))
    touched = set(torch.nonzero(d.images.grad.flatten(1).abs().sum(1)).flatten().tolist())
    assert touched == set(support.tolist()) | set(query.tolist())


def test_resizing_and_channel_conversion():
    d = _domain(spc=4, size=16, channels=3)
    episode = d.sample_episode(2, 1, 1, make_generator(0, "rs"), size=8, channels=1)
    support, _ = d.sample_rows(2, 1, 1, make_generator(0, "rs"))
    expected = F.interpolate(d.images.detach()[support], size=(8, 8), mode="bilinear", align_corners=False)
    assert episode.support_x.shape == (2, 1, 8, 8)
    torch.testing.assert_close(episode.support_x, expected.mean(dim=1, keepdim=True))
    grey = _domain(spc=4, size=16, channels=1)
    rgb = grey.sample_episode(2, 1, 1, make_generator(0, "g"), channels=3).support_x
    assert rgb.shape == (2, 3, 16, 16) and torch.equal(rgb[:, 0], rgb[:, 2])


def test_episode_shape_errors():
    d = _domain(spc=4)
    with pytest.raises(ConfigError, match="n_way=6"):
        d.sample_episode(6, 1, 1, make_generator(0, "x"))
    with pytest.raises(ConfigError, match="images_per_class = 4"):
        d.sample_episode(2, 2, 3, make_generator(0, "x"))


def test_resolve_images_per_class():
    assert resolve_images_per_class(InversionConfig(), 1, 15) == 16
    assert resolve_images_per_class(InversionConfig(images_per_class=30), 5, 15) == 30
    with pytest.raises(ConfigError, match="images_per_class"):
        resolve_images_per_class(InversionConfig(images_per_class=10), 5, 15)


def _data(entries=None, spc: int = 3, seed: int = 0) -> DynamicDataset:
    return DynamicDataset(entries or mixed_pool_entries(), spc, 0.25, make_generator(seed, "pseudo"))


def test_domains_from_teachers_and_shared_classes_once():
    data = _data()
    assert list(data.domains) == [(16, 1), (20, 3)]
    assert data.domains[(16, 1)].class_ids == tuple(range(12))
    assert data.domains[(20, 3)].class_ids == (12, 13, 14, 15, 16)
    assert data.domains[(20, 3)].mean == (0.5, 0.5, 0.5)
    overlapping = _data([entry(0, [3, 1, 4]), entry(1, [4, 0, 3])])
    assert overlapping.class_ids == (0, 1, 3, 4) and overlapping.domains[(16, 3)].images.shape[0] == 12
    with pytest.raises(ConfigError, match="several domains"):
        data.teacher_batch([0, 12])


def test_dataset_seen_at_two_sizes_is_rejected():
    with pytest.raises(ConfigError, match="dataset 'toy'"):
        _data([entry(0, [0, 1]), entry(1, [2, 3], image_size=20)])


def test_domain_choice_is_proportional_to_classes():
    data = _data()
    generator = make_generator(0, "domains")
    picks = [data.sample_episode(2, 1, 1, generator).support_x.shape[1] for _ in range(600)]
    share_grey = picks.count(1) / len(picks)  # 12 of 17 classes
    assert abs(share_grey - 12 / 17) < 0.07
    # 6-way episodes exist only in the grey domain; with one candidate no domain draw is made
    only = [data.sample_episode(6, 1, 1, generator).support_x.shape[1] for _ in range(5)]
    assert only == [1] * 5
    with pytest.raises(ConfigError, match="n_way=13"):
        data.sample_episode(13, 1, 1, generator)


def _adam_step(data: DynamicDataset) -> None:
    data.optimizer.zero_grad(set_to_none=True)
    loss = sum((p**2).sum() + p.sum() for p in data.parameters())
    loss.backward()
    data.optimizer.step()


def test_state_dict_round_trip_resumes_identically():
    a = _data(seed=0)
    _adam_step(a)
    state = a.state_dict()
    b = _data(seed=1)
    b.load_state_dict(state)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    _adam_step(a)
    _adam_step(b)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_load_state_dict_mismatch_is_a_clear_error():
    state = _data(spc=3).state_dict()
    with pytest.raises(CheckpointError, match=r"domain 16px-1ch: images \(36, 1, 16, 16\), expected \(48, 1, 16, 16\)"):
        _data(spc=4).load_state_dict(state)
    with pytest.raises(CheckpointError, match="domains"):
        _data([entry(0, [0, 1])]).load_state_dict(state)


def test_class_grid_denormalises_and_saves(tmp_path):
    d = _domain(spc=4, classes=(1, 2, 3), size=8, channels=1)
    grid = d.class_grid(per_class=2, padding=2)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 3 * 10 + 2, 2 * 10 + 2)
    # class 2 (row 1), its second image (column 1), pixel (0, 0): image row 1*4 + 1 = 5
    value = (d.images.detach()[5, 0, 0, 0] * 0.25 + 0.5).clamp(0, 1) * 255
    assert grid[:, 10 + 2, 10 + 2].tolist() == [round(value.item())] * 3
    assert grid[:, 0, :].max() == 0  # padding
    path = tmp_path / "grid.png"
    save_png(grid, path)
    assert np.array_equal(np.asarray(Image.open(path)), grid.permute(1, 2, 0).numpy())
