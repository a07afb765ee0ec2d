"""Few-shot episodes from a cached split, with explicit generators (docs/method.md §4).

An :class:`EpisodeSet` is a fixed, seeded list of episodes (class ids and image indices) for one
(dataset, split, n_way, n_shot, n_query): generated once from ``derive_seed(seed, "episodes",
dataset, split, n_way, n_shot, n_query)`` and reused by every method, so all methods are scored
on exactly the same tasks. Sampling is vectorised: no Python loop per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from purer.data.cache import SplitData
from purer.errors import ConfigError
from purer.seeding import make_generator


@dataclass(frozen=True)
class Episode:
    """One few-shot task (relative labels 0..n_way-1).

    Attributes:
        support_x: [n_way * n_shot, C, H, W].
        support_y: [n_way * n_shot] int64.
        query_x: [n_way * n_query, C, H, W].
        query_y: [n_way * n_query] int64.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @property
    def n_way(self) -> int:
        return int(self.support_y.max().item()) + 1 if self.support_y.numel() else 0


@dataclass(frozen=True)
class EpisodeSet:
    """Fixed episodes over one split.

    Attributes:
        classes: int64 [E, n_way], local class ids of each episode (label j = classes[e, j]).
        indices: int64 [E, n_way, n_shot + n_query], image indices into the split; the first
            ``n_shot`` per class are support, the rest query.
    """

    classes: torch.Tensor
    indices: torch.Tensor
    n_shot: int

    @property
    def n_episodes(self) -> int:
        return int(self.classes.shape[0])

    @property
    def n_way(self) -> int:
        return int(self.classes.shape[1])

    @property
    def n_query(self) -> int:
        return int(self.indices.shape[2]) - self.n_shot


def check_episode_shape(split: SplitData, n_way: int, n_shot: int, n_query: int, where: str) -> None:
    """Raise ConfigError when the split cannot provide such episodes."""
    if n_way > split.n_classes:
        raise ConfigError(f"{where}: n_way={n_way} but the split has only {split.n_classes} classes")
    smallest = int(torch.bincount(split.labels, minlength=split.n_classes).min())
    if n_shot + n_query > smallest:
        raise ConfigError(
            f"{where}: n_shot + n_query = {n_shot + n_query} images per class needed, "
            f"but the smallest class has {smallest}"
        )


def sample_episode_indices(
    class_members: torch.Tensor,
    class_counts: torch.Tensor,
    n_way: int,
    per_class: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one episode: ``n_way`` distinct classes, ``per_class`` distinct images each.

    Args:
        class_members: int64 [C, max_count], image indices per class (padded with -1).
        class_counts: int64 [C], valid entries per row.
        n_way: classes per episode.
        per_class: images per class (n_shot + n_query).
        generator: the only source of randomness.

    Returns:
        classes [n_way], indices [n_way, per_class].
    """
    n_classes, max_count = class_members.shape
    classes = torch.randperm(n_classes, generator=generator)[:n_way]
    keys = torch.rand(n_way, max_count, generator=generator)
    counts = class_counts[classes]
    keys[torch.arange(max_count).unsqueeze(0) >= counts.unsqueeze(1)] = float("inf")
    picks = keys.argsort(dim=1)[:, :per_class]
    return classes, torch.gather(class_members[classes], 1, picks)


def member_table(split: SplitData) -> tuple[torch.Tensor, torch.Tensor]:
    """Image indices per class, padded with -1: ([C, max_count], counts [C])."""
    groups = split.class_indices()
    counts = torch.tensor([len(g) for g in groups], dtype=torch.int64)
    table = torch.full((len(groups), int(counts.max())), -1, dtype=torch.int64)
    for c, group in enumerate(groups):
        table[c, : len(group)] = group
    return table, counts


def fixed_episodes(
    split: SplitData,
    n_way: int,
    n_shot: int,
    n_query: int,
    n_episodes: int,
    seed: int,
    name: str,
) -> EpisodeSet:
    """The seeded episode set for (``name`` = "dataset/split", n_way, n_shot, n_query)."""
    check_episode_shape(split, n_way, n_shot, n_query, name)
    generator = make_generator(seed, "episodes", name, n_way, n_shot, n_query)
    table, counts = member_table(split)
    classes, indices = [], []
    for _ in range(n_episodes):
        c, idx = sample_episode_indices(table, counts, n_way, n_shot + n_query, generator)
        classes.append(c)
        indices.append(idx)
    return EpisodeSet(torch.stack(classes), torch.stack(indices), n_shot)


def materialise(
    split: SplitData,
    episodes: EpisodeSet,
    index: int,
    device: torch.device | str = "cpu",
    images: torch.Tensor | None = None,
) -> Episode:
    """Episode ``index`` as normalised float tensors on ``device`` (relative labels 0..n_way-1).

    Args:
        images: optionally the split's images already normalised on ``device`` [N, C, H, W]
            (avoids re-normalising per episode).
    """
    idx = episodes.indices[index]  # [n_way, n_shot + n_query]
    n_way, n_shot = idx.shape[0], episodes.n_shot
    support_idx = idx[:, :n_shot].reshape(-1)
    query_idx = idx[:, n_shot:].reshape(-1)
    labels = torch.arange(n_way, device=device)
    if images is None:
        support_x = split.normalise(split.images[support_idx]).to(device)
        query_x = split.normalise(split.images[query_idx]).to(device)
    else:
        support_x, query_x = images[support_idx.to(images.device)], images[query_idx.to(images.device)]
    return Episode(
        support_x=support_x,
        support_y=labels.repeat_interleave(n_shot),
        query_x=query_x,
        query_y=labels.repeat_interleave(idx.shape[1] - n_shot),
    )
