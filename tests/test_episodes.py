"""Fixed, seeded episodes (docs/method.md §4): determinism, validity, materialisation."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import tiny_split

from purer.data.episodes import (
    check_episode_shape,
    fixed_episodes,
    materialise,
    member_table,
    sample_episode_indices,
)
from purer.errors import ConfigError


def test_fixed_episodes_are_identical_across_calls():
    split = tiny_split()
    a = fixed_episodes(split, 5, 1, 3, 10, seed=7, name="toy/test")
    b = fixed_episodes(split, 5, 1, 3, 10, seed=7, name="toy/test")
    assert torch.equal(a.classes, b.classes) and torch.equal(a.indices, b.indices)
    assert (a.n_episodes, a.n_way, a.n_shot, a.n_query) == (10, 5, 1, 3)


def test_fixed_episodes_depend_on_seed_name_and_shape():
    split = tiny_split()
    base = fixed_episodes(split, 5, 1, 3, 10, seed=7, name="toy/test")
    for other in (
        fixed_episodes(split, 5, 1, 3, 10, seed=8, name="toy/test"),
        fixed_episodes(split, 5, 1, 3, 10, seed=7, name="toy/val"),
    ):
        assert not torch.equal(base.indices, other.indices)
    # a longer set starts with the same episodes (one generator stream)
    longer = fixed_episodes(split, 5, 1, 3, 12, seed=7, name="toy/test")
    assert torch.equal(longer.indices[:10], base.indices)


def test_episodes_are_valid_tasks():
    split = tiny_split(n_classes=7, per_class=6)
    episodes = fixed_episodes(split, 5, 2, 3, 20, seed=0, name="toy/test")
    for e in range(episodes.n_episodes):
        classes, idx = episodes.classes[e], episodes.indices[e]
        assert len(set(classes.tolist())) == 5
        assert len(set(idx.flatten().tolist())) == idx.numel()  # distinct images
        assert torch.equal(split.labels[idx], classes.unsqueeze(1).expand_as(idx))  # each row from its class


def test_episodes_cover_classes_and_images():
    split = tiny_split(n_classes=6, per_class=8)
    episodes = fixed_episodes(split, 5, 1, 3, 200, seed=0, name="toy/test")
    assert set(episodes.classes.flatten().tolist()) == set(range(6))
    assert len(set(episodes.indices.flatten().tolist())) == len(split.labels)


def test_uneven_classes_never_pick_padding():
    labels = torch.tensor([0] * 3 + [1] * 9 + [2] * 4)
    split = tiny_split(n_classes=3, per_class=1)
    split = type(split)(torch.zeros(len(labels), 3, 8, 8, dtype=torch.uint8), labels, ("a", "b", "c"), split.mean, split.std)
    table, counts = member_table(split)
    assert counts.tolist() == [3, 9, 4] and table.shape == (3, 9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        classes, idx = sample_episode_indices(table, counts, 3, 3, generator)
        assert (idx >= 0).all()
        assert torch.equal(labels[idx], classes.unsqueeze(1).expand_as(idx))


def test_materialise_layout_and_normalisation():
    split = tiny_split()
    episodes = fixed_episodes(split, 5, 2, 3, 3, seed=0, name="toy/test")
    episode = materialise(split, episodes, 1)
    assert episode.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert episode.query_y.tolist() == [c for c in range(5) for _ in range(3)]
    idx = episodes.indices[1]
    assert torch.allclose(episode.support_x, split.normalise(split.images[idx[:, :2].reshape(-1)]))
    assert torch.allclose(episode.query_x, split.normalise(split.images[idx[:, 2:].reshape(-1)]))
    cached = materialise(split, episodes, 1, images=split.normalise(split.images))
    assert torch.equal(cached.support_x, episode.support_x) and torch.equal(cached.query_x, episode.query_x)


def test_impossible_episode_shapes_are_reported():
    split = tiny_split(n_classes=4, per_class=5)
    with pytest.raises(ConfigError, match="toy/test: n_way=5 but the split has only 4 classes"):
        fixed_episodes(split, 5, 1, 3, 2, seed=0, name="toy/test")
    with pytest.raises(ConfigError, match="6 images per class needed, but the smallest class has 5"):
        check_episode_shape(split, 3, 1, 5, "toy/test")
