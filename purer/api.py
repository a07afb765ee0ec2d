"""Use a meta-learned model from Python: load it, adapt it to a support set, predict a query.

    from purer.api import load_meta_model

    meta = load_meta_model("results/default/glyphs/purer/5w1s/seed0/meta_model.pt")
    adapted = meta.adapt(meta.preprocess(support_images), support_labels, inner_steps=10)
    labels = adapted.predict(meta.preprocess(query_images))

``meta_model.pt`` is what ``purer meta-train`` writes (:mod:`purer.meta.model_file`); it is read
with ``weights_only=True`` (nothing in it executes). Adaptation is the pipeline's own meta-test
adaptation (:func:`purer.meta.evaluate.adapt_first_order` with the model's learner: MAML, ANIL or
ProtoNet), so on the same episode it gives the same predictions as ``purer meta-test``.

The meta model's BatchNorm normalises with the statistics of the batch it is given (it keeps no
running statistics, as in meta-training): pass the whole support set to :meth:`MetaModel.adapt`
and a batch of queries to :meth:`AdaptedModel.predict`, as the pipeline does.

Bad input (a tensor of the wrong shape or dtype, a label outside ``0..n_way-1``) raises
:class:`purer.errors.DataError` with one line saying what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from purer.data.episodes import Episode
from purer.errors import ConfigError, DataError
from purer.meta.evaluate import adapt_first_order
from purer.meta.learners import AdaptedState, GradientLearner, Params, ProtoNet, build_learner
from purer.meta.model_file import load_meta_model as _load_meta_model_file

__all__ = ["AdaptedModel", "MetaModel", "load_meta_model"]


@dataclass(frozen=True)
class AdaptedModel:
    """A meta model adapted to one support set; predicts that task's classes ``0..n_way-1``."""

    meta: MetaModel
    state: AdaptedState

    def logits(self, query_x: torch.Tensor) -> torch.Tensor:
        """Args: query_x [Q, C, S, S] float, preprocessed (:meth:`MetaModel.preprocess`).
        Returns: logits [Q, n_way] (float32, no graph)."""
        self.meta.check_images(query_x, "query_x")
        with torch.no_grad():
            return self.meta.learner.predict(self.meta.module, self.state, query_x.to(self.meta.device)).float()

    def predict(self, query_x: torch.Tensor) -> torch.Tensor:
        """Args: query_x [Q, C, S, S] float, preprocessed. Returns: predicted labels [Q] (int64)."""
        return self.logits(query_x).argmax(dim=1)


@dataclass(frozen=True)
class MetaModel:
    """A meta-learned initialisation and the learner that adapts it (built by :func:`load_meta_model`).

    Attributes:
        module: the network (batch-statistics BatchNorm), on ``device``.
        params: its meta-learned parameters ``{name: tensor}``.
        learner: the learner it was meta-trained with (MAML / ANIL / ProtoNet).
        info: the file's other entries (``method``, ``n_shot``, ``iteration``, ``val_accuracy``, ...).
        device: where it computes.
    """

    module: nn.Module
    params: Params
    learner: GradientLearner | ProtoNet
    info: dict[str, Any]
    device: torch.device

    @property
    def n_way(self) -> int:
        """Classes per task (the head's outputs)."""
        return int(self.info["n_way"])

    @property
    def input_size(self) -> int:
        """Square input side S in pixels."""
        return int(self.info["input_size"])

    @property
    def channels(self) -> int:
        """Input channels C."""
        return int(self.info["channels"])

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images as the meta model was trained on: scaled, normalised, resized.

        Args:
            images: uint8 [N, C, H, W] (0..255) or float [N, C, H, W] in [0, 1].

        Returns:
            float32 [N, C, S, S] on ``device``, normalised with the training images' mean/std and
            resized (bilinear, antialiased) to ``input_size`` when H, W differ from it.
        """
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != self.channels:
            raise DataError(f"images: expected a tensor [N, {self.channels}, H, W], got {_shape(images)}")
        x = images.to(self.device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        mean = torch.tensor(self.info["mean"], device=self.device).view(-1, 1, 1)
        std = torch.tensor(self.info["std"], device=self.device).view(-1, 1, 1)
        x = (x - mean) / std
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            size = (self.input_size, self.input_size)
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x

    def adapt(
        self, support_x: torch.Tensor, support_y: torch.Tensor, inner_steps: int = 10, inner_lr: float | None = None
    ) -> AdaptedModel:
        """Adapt to one task's support set (first-order, as ``purer meta-test``).

        Args:
            support_x: float [S, C, input_size, input_size], preprocessed (:meth:`preprocess`).
            support_y: int64 [S], labels in ``0..n_way-1``.
            inner_steps: SGD steps on the support cross-entropy (MAML, ANIL; ProtoNet has none).
            inner_lr: their step size; ``None`` = the meta-training inner learning rate.

        Returns:
            An :class:`AdaptedModel` (the meta model itself is not changed).
        """
        self.check_images(support_x, "support_x")
        if not isinstance(support_y, torch.Tensor) or support_y.dim() != 1 or len(support_y) != len(support_x):
            raise DataError(f"support_y: expected labels [{len(support_x)}] (one per support image), got {_shape(support_y)}")
        if support_y.dtype.is_floating_point or support_y.dtype == torch.bool:
            raise DataError(f"support_y: expected integer labels, got dtype {support_y.dtype}")
        if len(support_y) and not 0 <= int(support_y.min()) <= int(support_y.max()) < self.n_way:
            raise DataError(f"support_y: expected labels in 0..{self.n_way - 1}, got {sorted(set(support_y.tolist()))}")
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
            raise ConfigError(f"inner_steps: expected an integer of at least 0, got {inner_steps!r}")
        if inner_lr is not None and not inner_lr > 0:
            raise ConfigError(f"inner_lr: expected a positive number or None, got {inner_lr!r}")
        learner = self.learner if inner_lr is None else _learner(self.info, inner_lr)
        episode = Episode(support_x.to(self.device), support_y.to(self.device, torch.int64), support_x[:0], support_y[:0])
        state = adapt_first_order(learner, self.module, self.params, episode, inner_steps)
        return AdaptedModel(MetaModel(self.module, self.params, learner, self.info, self.device), state)

    def check_images(self, x: torch.Tensor, name: str) -> None:
        """Raise DataError unless ``x`` is a float [N >= 1, C, S, S] batch this model takes."""
        wanted = (self.channels, self.input_size, self.input_size)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != wanted or len(x) == 0:
            raise DataError(
                f"{name}: expected a float tensor [N, {', '.join(map(str, wanted))}] with N >= 1 "
                f"(use MetaModel.preprocess on raw images), got {_shape(x)}"
            )
        if not x.dtype.is_floating_point:
            raise DataError(f"{name}: expected a float tensor (use MetaModel.preprocess on raw images), got dtype {x.dtype}")


def load_meta_model(path: str | Path, device: str | torch.device = "cpu") -> MetaModel:
    """Load ``meta_model.pt`` (or ``last.pt``, a snapshot) written by ``purer meta-train``.

    Raises:
        CheckpointError: naming the file, when it is missing, truncated or not a meta model.
    """
    device = torch.device(device)
    module, params, info = _load_meta_model_file(path, device)
    return MetaModel(module, params, _learner(info, float(info["learner"]["inner_lr"])), info, device)


def _learner(info: dict[str, Any], inner_lr: float) -> GradientLearner | ProtoNet:
    learner = info["learner"]
    return build_learner(learner["algorithm"], inner_lr, bool(learner.get("first_order", False)))


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"shape {list(value.shape)} ({value.dtype})"
    return type(value).__name__
