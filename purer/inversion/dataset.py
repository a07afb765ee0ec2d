"""The dynamic dataset of ECI: learnable images per class, and pseudo episodes (docs/method.md §2.2, §2.4).

A :class:`Domain` holds the images of one *domain* (image size, channels): a tensor
``images`` [C·spc, ch, s, s] drawn i.i.d. N(0, 1) in the teachers' normalised input space, never
clamped. The layout is class-major: rows ``c·spc … c·spc + spc − 1`` belong to global class
``class_ids[c]``; labels are fixed. (The reference cycles labels inside a block; every inversion term
is invariant to the order of a teacher's batch, so only the bookkeeping differs.)

:class:`DynamicDataset` gathers the domains of a pool (one per distinct (image_size, channels) of its
teachers; MH pools have several), the Adam optimiser of all images (its state persists for the
whole run) and their checkpoint state. A class belongs to the domain of its dataset; a class shared
by several teachers (overlapping pools, docs/method.md §9) has one set of images. Only classes that at
least one teacher knows get images.

Pseudo episodes (§2.4) pick N distinct classes uniformly from all classes of one domain, then
n_shot + n_query of each class's spc images without replacement (vectorised: random keys + argsort),
the first n_shot as support. ``detach=True`` (meta-training episodes) cuts the graph to the images;
``detach=False`` (the reversed step, §2.6) keeps it, optionally with a per-class gradient multiplier
(``grad_scale``: the reversed step at ``curriculum.adv_strength``, purer.inversion.curriculum). With
several domains a domain is drawn per episode with probability proportional to its number of classes.

Resizing for MH pools (a design decision, docs/method.md §5): when the meta model's input differs
from a domain, episode images are resized with bilinear interpolation (``antialias=False``) and
converted in normalised space: RGB → grey averages the three channels, grey → RGB replicates.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from purer.config import InversionConfig
from purer.data.episodes import Episode
from purer.errors import CheckpointError, ConfigError
from purer.io import atomic_path
from purer.models.manifest import TeacherEntry

logger = logging.getLogger(__name__)

DomainKey = tuple[int, int]  # (image_size, channels)


def resolve_images_per_class(config: InversionConfig, n_shot: int, n_query: int) -> int:
    """spc: ``config.images_per_class`` or, when unset, n_shot + n_query (docs/method.md §2.2)."""
    spc = config.images_per_class if config.images_per_class is not None else n_shot + n_query
    if spc < n_shot + n_query:
        raise ConfigError(
            f"meta_train.inversion.images_per_class: {spc} images per class cannot provide "
            f"n_shot + n_query = {n_shot + n_query} per episode"
        )
    return spc


def domain_name(key: DomainKey) -> str:
    """Readable name of a domain, e.g. ``32px-3ch`` (used in checkpoints and file names)."""
    return f"{key[0]}px-{key[1]}ch"


def adapt_input(x: torch.Tensor, size: int | None, channels: int | None) -> torch.Tensor:
    """Resize ``x`` [B, ch, s, s] to ``size`` and convert it to ``channels`` (None = keep).

    Bilinear interpolation (``align_corners=False``, ``antialias=False``); 3 → 1 channels averages,
    1 → 3 replicates, both in normalised space.
    """
    if size is not None and size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    if channels is not None and channels != x.shape[1]:
        if channels == 1:
            x = x.mean(dim=1, keepdim=True)
        elif x.shape[1] == 1:
            x = x.expand(-1, channels, -1, -1)
        else:
            raise ConfigError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
    return x


class _ScaleGradient(torch.autograd.Function):
    """Identity forward (a copy); the backward multiplies the incoming gradient by ``scale``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def scale_gradient(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x`` [B, ...] unchanged, whose gradient is multiplied by ``scale`` [B] per row on the way back."""
    return _ScaleGradient.apply(x, scale.to(x.dtype).view(-1, *([1] * (x.dim() - 1))))


class Domain:
    """Learnable images of one domain (docs/method.md §2.2).

    Attributes:
        class_ids: global class ids, in layout order.
        images: leaf tensor [C·spc, channels, image_size, image_size], requires grad.
        labels: int64 [C·spc], the global class id of each row.
        mean, std: the teachers' normalisation of this domain (per channel).
    """

    def __init__(
        self,
        class_ids: Sequence[int],
        images_per_class: int,
        image_size: int,
        channels: int,
        generator: torch.Generator,
        device: str | torch.device = "cpu",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.class_ids = tuple(int(c) for c in class_ids)
        if not self.class_ids or len(set(self.class_ids)) != len(self.class_ids):
            raise ConfigError(f"dynamic dataset: expected distinct class ids, got {list(self.class_ids)}")
        if images_per_class < 1:
            raise ConfigError(f"dynamic dataset: images_per_class must be at least 1, got {images_per_class}")
        self.images_per_class = int(images_per_class)
        self.image_size, self.channels = int(image_size), int(channels)
        self.mean = tuple(mean) if mean is not None else (0.0,) * channels
        self.std = tuple(std) if std is not None else (1.0,) * channels
        shape = (len(self.class_ids) * images_per_class, channels, image_size, image_size)
        noise = torch.randn(shape, generator=generator, device=generator.device)
        self.images = noise.to(device).requires_grad_(True)
        self.device = self.images.device
        ids = torch.tensor(self.class_ids, dtype=torch.int64, device=self.device)
        self.labels = ids.repeat_interleave(images_per_class)
        self._local = {c: i for i, c in enumerate(self.class_ids)}
        self._offsets = torch.arange(images_per_class, device=self.device)

    @property
    def key(self) -> DomainKey:
        return (self.image_size, self.channels)

    @property
    def n_classes(self) -> int:
        return len(self.class_ids)

    def local_ids(self, classes: Sequence[int]) -> torch.Tensor:
        """Layout positions [len(classes)] of global class ids; ConfigError for an unknown id."""
        missing = [int(c) for c in classes if int(c) not in self._local]
        if missing:
            raise ConfigError(f"dynamic dataset {domain_name(self.key)}: unknown class ids {missing}")
        return torch.tensor([self._local[int(c)] for c in classes], dtype=torch.int64, device=self.device)

    def rows(self, classes: Sequence[int]) -> torch.Tensor:
        """Row indices [len(classes)·spc] of the classes' images, class by class."""
        local = self.local_ids(classes)
        return (local.unsqueeze(1) * self.images_per_class + self._offsets).reshape(-1)

    def teacher_batch(self, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A teacher's slice (gradients flow to ``images``).

        Args:
            classes: global ids in the order of the teacher's logits.

        Returns:
            x [len·spc, ch, s, s] and relative targets [len·spc] (0..len−1, class by class).
        """
        targets = torch.arange(len(classes), device=self.device).repeat_interleave(self.images_per_class)
        return self.images[self.rows(classes)], targets

    def sample_rows(
        self, n_way: int, n_shot: int, n_query: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw an episode's rows (docs/method.md §2.4), vectorised.

        Returns:
            support rows [n_way·n_shot] and query rows [n_way·n_query], class by class, in the
            order of the drawn classes (which defines the relative labels).
        """
        self._check_episode(n_way, n_shot, n_query)
        device = generator.device
        classes = torch.randperm(self.n_classes, generator=generator, device=device)[:n_way]
        keys = torch.rand(n_way, self.images_per_class, generator=generator, device=device)
        picks = keys.argsort(dim=1)[:, : n_shot + n_query]
        rows = (classes.unsqueeze(1) * self.images_per_class + picks).to(self.device)
        return rows[:, :n_shot].reshape(-1), rows[:, n_shot:].reshape(-1)

    def _check_episode(self, n_way: int, n_shot: int, n_query: int) -> None:
        if not 1 <= n_way <= self.n_classes:
            raise ConfigError(
                f"n_way={n_way}: the dynamic dataset {domain_name(self.key)} has {self.n_classes} classes"
            )
        if n_shot < 1 or n_query < 0 or n_shot + n_query > self.images_per_class:
            raise ConfigError(
                f"n_shot={n_shot}, n_query={n_query}: need n_shot >= 1 and n_shot + n_query <= "
                f"images_per_class = {self.images_per_class}"
            )

    def sample_episode(
        self,
        n_way: int,
        n_shot: int,
        n_query: int,
        generator: torch.Generator,
        detach: bool = True,
        size: int | None = None,
        channels: int | None = None,
        grad_scale: torch.Tensor | None = None,
    ) -> Episode:
        """A pseudo episode (docs/method.md §2.4); relative labels follow the drawn class order.

        Args:
            detach: True for meta-training episodes (no gradient to the images); False for the
                reversed step, whose loss must reach the support and query images.
            size, channels: the meta model's input (None = the domain's); see :func:`adapt_input`.
            grad_scale: [n_classes] (layout order) multipliers of the gradient that reaches each
                class's images (``detach=False`` only); None = 1. The episode's values are unchanged.
        """
        support_rows, query_rows = self.sample_rows(n_way, n_shot, n_query, generator)
        images = self.images.detach() if detach else self.images
        support, query = images[support_rows], images[query_rows]
        if grad_scale is not None and not detach:
            support = scale_gradient(support, grad_scale[support_rows // self.images_per_class])
            query = scale_gradient(query, grad_scale[query_rows // self.images_per_class])
        labels = torch.arange(n_way, device=self.device)
        return Episode(
            support_x=adapt_input(support, size, channels),
            support_y=labels.repeat_interleave(n_shot),
            query_x=adapt_input(query, size, channels),
            query_y=labels.repeat_interleave(n_query),
        )

    def denormalised(self, rows: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1]: clamp(x·std + mean, 0, 1) of the given rows, [len(rows), ch, s, s]."""
        mean = torch.tensor(self.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, -1, 1, 1)
        return (self.images.detach()[rows] * std + mean).clamp(0.0, 1.0)

    def class_grid(self, per_class: int = 8, max_classes: int | None = None, padding: int = 2) -> torch.Tensor:
        """A uint8 image grid [3, H, W]: one row per class (layout order), ``per_class`` columns.

        Grey domains are replicated to RGB; cells are separated by ``padding`` black pixels.
        """
        n_classes = self.n_classes if max_classes is None else min(max_classes, self.n_classes)
        per_class = min(per_class, self.images_per_class)
        rows = (torch.arange(n_classes, device=self.device).unsqueeze(1) * self.images_per_class
                + torch.arange(per_class, device=self.device)).reshape(-1)
        cells = adapt_input(self.denormalised(rows), None, 3)
        cells = F.pad(cells, (padding, 0, padding, 0))
        side = cells.shape[-1]
        grid = cells.view(n_classes, per_class, 3, side, side).permute(2, 0, 3, 1, 4)
        grid = F.pad(grid.reshape(3, n_classes * side, per_class * side), (0, padding, 0, padding))
        return (grid * 255.0).round().to(torch.uint8).cpu()


def save_png(grid: torch.Tensor, path: str | Path) -> None:
    """Write a uint8 [3, H, W] grid as a PNG, atomically."""
    array = grid.permute(1, 2, 0).contiguous().numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array, mode="RGB").save(tmp, format="PNG")


class DynamicDataset:
    """All domains of a pool, their Adam optimiser and episode sampling (docs/method.md §2.2, §2.4, §5).

    Args:
        teachers: the pool's teacher entries (fields ``index``, ``dataset``, ``classes``,
            ``image_size``, ``channels``, ``mean``, ``std``).
        images_per_class: spc.
        data_lr: Adam learning rate on the images (0.25 in PURER).
        generator: draws the initial images (domains in order of first appearance).
        device: where the images live.

    Attributes:
        domains: ``{(image_size, channels): Domain}``.
        optimizer: ``torch.optim.Adam`` (fused kernel) over every domain's images.
    """

    def __init__(
        self,
        teachers: Sequence[TeacherEntry],
        images_per_class: int,
        data_lr: float,
        generator: torch.Generator,
        device: str | torch.device = "cpu",
    ) -> None:
        self.images_per_class = int(images_per_class)
        plan = _domain_plan(teachers)
        self.domains: dict[DomainKey, Domain] = {
            key: Domain(
                sorted(spec["classes"]), images_per_class, key[0], key[1], generator, device, spec["mean"], spec["std"]
            )
            for key, spec in plan.items()
        }
        self._class_domain = {c: key for key, d in self.domains.items() for c in d.class_ids}
        self.optimizer = torch.optim.Adam(self.parameters(), lr=data_lr, fused=True)  # one pass per step

    @classmethod
    def from_config(
        cls,
        teachers: Sequence[TeacherEntry],
        config: InversionConfig,
        n_shot: int,
        n_query: int,
        generator: torch.Generator,
        device: str | torch.device = "cpu",
    ) -> DynamicDataset:
        """Build with spc from :func:`resolve_images_per_class` and ``config.data_lr``."""
        spc = resolve_images_per_class(config, n_shot, n_query)
        return cls(teachers, spc, config.data_lr, generator, device)

    @property
    def class_ids(self) -> tuple[int, ...]:
        """Every class with images, ascending."""
        return tuple(sorted(self._class_domain))

    @property
    def n_classes(self) -> int:
        return len(self._class_domain)

    def parameters(self) -> list[torch.Tensor]:
        """The learnable image tensors, one per domain."""
        return [d.images for d in self.domains.values()]

    def domain_of(self, classes: Sequence[int]) -> Domain:
        """The domain holding all ``classes``; ConfigError for unknown ids or mixed domains."""
        keys = {self._class_domain.get(int(c)) for c in classes}
        if None in keys:
            unknown = [int(c) for c in classes if int(c) not in self._class_domain]
            raise ConfigError(f"dynamic dataset: no images for class ids {unknown}")
        if len(keys) != 1:
            raise ConfigError(f"dynamic dataset: classes {list(classes)} span several domains {sorted(keys)}")
        return self.domains[keys.pop()]

    def teacher_batch(self, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`Domain.teacher_batch` (the classes' domain is looked up)."""
        return self.domain_of(classes).teacher_batch(classes)

    def pick_domain(self, n_way: int, generator: torch.Generator) -> Domain:
        """One domain with at least ``n_way`` classes, with probability ∝ its number of classes.

        With a single domain no random number is drawn.
        """
        eligible = [d for d in self.domains.values() if d.n_classes >= n_way]
        if not eligible:
            sizes = {domain_name(k): d.n_classes for k, d in self.domains.items()}
            raise ConfigError(f"n_way={n_way}: no domain of the dynamic dataset has that many classes {sizes}")
        if len(eligible) == 1:
            return eligible[0]
        weights = torch.tensor([float(d.n_classes) for d in eligible], device=generator.device)
        return eligible[int(torch.multinomial(weights, 1, generator=generator))]

    def sample_episode(
        self,
        n_way: int,
        n_shot: int,
        n_query: int,
        generator: torch.Generator,
        detach: bool = True,
        size: int | None = None,
        channels: int | None = None,
        grad_scales: dict[DomainKey, torch.Tensor] | None = None,
    ) -> Episode:
        """A pseudo episode from one domain (see :meth:`Domain.sample_episode`).

        ``grad_scales``: per domain, the ``grad_scale`` of its classes (:meth:`class_scales`).
        """
        domain = self.pick_domain(n_way, generator)
        scale = grad_scales[domain.key] if grad_scales is not None else None
        return domain.sample_episode(n_way, n_shot, n_query, generator, detach, size, channels, scale)

    def class_scales(self, multipliers: dict[int, float]) -> dict[DomainKey, torch.Tensor]:
        """Per domain, a float32 [n_classes] tensor (layout order) of ``multipliers`` (1 for a class
        not in it), copied to the device without a host-device synchronisation."""
        return {
            key: torch.tensor([float(multipliers.get(c, 1.0)) for c in d.class_ids]).to(d.device, non_blocking=True)
            for key, d in self.domains.items()
        }

    def class_grid(self, domain: DomainKey | None = None, per_class: int = 8, max_classes: int | None = None) -> torch.Tensor:
        """uint8 grid [3, H, W] of a domain's images (default: the first domain)."""
        key = domain if domain is not None else next(iter(self.domains))
        if key not in self.domains:
            raise ConfigError(f"dynamic dataset: no domain {key} (valid: {list(self.domains)})")
        return self.domains[key].class_grid(per_class, max_classes)

    def state_dict(self) -> dict[str, Any]:
        """Images per domain and the optimiser state (for resumable checkpoints)."""
        return {
            "images_per_class": self.images_per_class,
            "domains": {
                domain_name(k): {"class_ids": list(d.class_ids), "images": d.images.detach().clone()}
                for k, d in self.domains.items()
            },
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),  # a snapshot, not live tensors
        }

    def load_state_dict(self, state: dict[str, Any], where: str = "dynamic dataset state") -> None:
        """Restore images (in place, so the optimiser keeps its parameters) and optimiser state.

        Raises:
            CheckpointError: naming ``where`` and the entry, when the state does not match this pool.
        """
        if not isinstance(state, dict) or not {"domains", "optimizer"} <= set(state):
            raise CheckpointError(f"{where}: expected a mapping with 'domains' and 'optimizer'")
        saved = state["domains"]
        expected = {domain_name(k): d for k, d in self.domains.items()}
        if set(saved) != set(expected):
            raise CheckpointError(f"{where}: domains {sorted(saved)} do not match the pool's {sorted(expected)}")
        for name, domain in expected.items():
            _check_domain_state(saved[name], domain, f"{where}: domain {name}")
        with torch.no_grad():
            for name, domain in expected.items():
                domain.images.copy_(saved[name]["images"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{where}: optimizer state does not match ({exc})") from None


def _check_domain_state(saved: Any, domain: Domain, where: str) -> None:
    if not isinstance(saved, dict) or "images" not in saved or "class_ids" not in saved:
        raise CheckpointError(f"{where}: expected 'class_ids' and 'images'")
    if tuple(saved["class_ids"]) != domain.class_ids:
        raise CheckpointError(f"{where}: class ids {list(saved['class_ids'])} differ from the pool's {list(domain.class_ids)}")
    images = saved["images"]
    if not isinstance(images, torch.Tensor) or tuple(images.shape) != tuple(domain.images.shape):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise CheckpointError(f"{where}: images {shape}, expected {tuple(domain.images.shape)}")


def _domain_plan(teachers: Sequence[Any]) -> dict[DomainKey, dict[str, Any]]:
    """Classes and normalisation per (image_size, channels), in order of first appearance.

    Raises:
        ConfigError: no teachers, or a dataset whose teachers disagree on size or channels.
    """
    if not teachers:
        raise ConfigError("dynamic dataset: the pool has no teachers")
    plan: dict[DomainKey, dict[str, Any]] = {}
    dataset_domain: dict[str, DomainKey] = {}
    for entry in teachers:
        key = (int(entry.image_size), int(entry.channels))
        if dataset_domain.setdefault(entry.dataset, key) != key:
            raise ConfigError(
                f"teacher {entry.index} sees dataset {entry.dataset!r} as {domain_name(key)}, "
                f"another teacher as {domain_name(dataset_domain[entry.dataset])}"
            )
        spec = plan.setdefault(key, {"classes": set(), "mean": entry.mean, "std": entry.std})
        spec["classes"].update(int(c) for c in entry.classes)
        if (entry.mean, entry.std) != (spec["mean"], spec["std"]):
            logger.warning("domain %s: teachers disagree on mean/std; grids use the first teacher's", domain_name(key))
    return plan
