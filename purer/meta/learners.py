"""Functional meta-learners: MAML, first-order MAML, ANIL and ProtoNet (docs/method.md §2.5, §9).

All learners work on a ``{name: tensor}`` parameter dict through ``torch.func.functional_call``,
so the same meta model serves every episode and the outer gradient flows back to the dict.

- MAML adapts every parameter with ``inner_steps`` SGD steps on the support cross-entropy
  (``torch.func.grad``); ``create_graph=True`` keeps second-order terms (first-order MAML
  passes ``False``).
- ANIL adapts only the linear head (``head.*``).
- ProtoNet has no inner loop: class prototypes are mean support features, logits are negative
  squared Euclidean distances.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from purer.compiler import compile_graph
from purer.data.episodes import Episode
from purer.errors import ConfigError

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class AdaptedState:
    """What adaptation produced: adapted parameters, and prototypes [n_way, D] for ProtoNet."""

    params: Params
    prototypes: torch.Tensor | None = None


def meta_parameters(model: nn.Module) -> Params:
    """The model's parameters as a dict of leaf tensors that require grad (the meta-parameters θ)."""
    return {name: p.detach().clone().requires_grad_(True) for name, p in model.named_parameters()}


def features(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Feature extractor output [B, D] under ``params``."""
    return functional_call(model, params, (x,), {"return_features": True})


def logits(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Logits [B, n_way] under ``params``."""
    return functional_call(model, params, (x,))


class GradientLearner:
    """MAML (``head_only=False``) or ANIL (``head_only=True``): SGD inner loop on the support set."""

    def __init__(self, inner_lr: float, first_order: bool = False, head_only: bool = False) -> None:
        self.inner_lr = inner_lr
        self.first_order = first_order
        self.head_only = head_only

    def adapted_names(self, params: Params) -> list[str]:
        names = [n for n in params if n.startswith("head.")] if self.head_only else list(params)
        if not names:
            raise ConfigError("the meta model has no parameters named 'head.*' to adapt")
        return names

    def adapt(
        self,
        model: nn.Module,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int,
        create_graph: bool,
    ) -> AdaptedState:
        """θ' ← θ' − α ∇ CE(f_θ'(support_x), support_y), ``steps`` times.

        The inner gradient is ``torch.func.grad``: differentiable by the outer autograd (the
        second-order terms of MAML) unless ``create_graph`` is False or the learner is
        first-order, in which case it is detached. Being a function transform, it also traces
        under ``torch.compile`` (one graph for the whole episode) and needs no ``requires_grad``
        on ``params``.
        """
        create_graph = create_graph and not self.first_order
        names = self.adapted_names(params)
        fast = dict(params)
        for _ in range(steps):
            frozen = {n: t for n, t in fast.items() if n not in names}

            def support_loss(adapted: Params, frozen: Params = frozen) -> torch.Tensor:
                return F.cross_entropy(logits(model, frozen | adapted, support_x).float(), support_y)

            grads = torch.func.grad(support_loss)({n: fast[n] for n in names})
            if not create_graph:
                grads = {n: g.detach() for n, g in grads.items()}
            fast.update({n: fast[n] - self.inner_lr * grads[n] for n in names})
        return AdaptedState(fast)

    def predict(self, model: nn.Module, state: AdaptedState, query_x: torch.Tensor) -> torch.Tensor:
        """Query logits [Q, n_way] under the adapted parameters."""
        return logits(model, state.params, query_x)


class ProtoNet:
    """Prototypical networks: no inner loop; negative squared distances to class-mean features."""

    first_order = False

    def __init__(self, **_: object) -> None:
        pass

    def adapt(
        self,
        model: nn.Module,
        params: Params,
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        steps: int = 0,
        create_graph: bool = True,
    ) -> AdaptedState:
        del steps, create_graph
        return AdaptedState(params, class_prototypes(features(model, params, support_x), support_y))

    def predict(self, model: nn.Module, state: AdaptedState, query_x: torch.Tensor) -> torch.Tensor:
        return prototype_logits(features(model, state.params, query_x), state.prototypes)


def class_prototypes(support_features: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
    """Mean feature per class. Args: [S, D], [S]. Returns: [n_way, D]."""
    n_way = int(support_y.max().item()) + 1
    one_hot = F.one_hot(support_y, n_way).to(support_features.dtype)  # [S, n_way]
    return (one_hot.T @ support_features) / one_hot.sum(0).unsqueeze(1)


def prototype_logits(query_features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Negative squared Euclidean distances. Args: [Q, D], [n_way, D]. Returns: [Q, n_way]."""
    return -torch.cdist(query_features, prototypes).pow(2)


LEARNERS: dict[str, Callable[..., GradientLearner | ProtoNet]] = {
    "maml": lambda inner_lr, first_order=False: GradientLearner(inner_lr, first_order, head_only=False),
    "anil": lambda inner_lr, first_order=False: GradientLearner(inner_lr, first_order, head_only=True),
    "protonet": lambda inner_lr=0.0, first_order=False: ProtoNet(),
}


def build_learner(name: str, inner_lr: float, first_order: bool = False) -> GradientLearner | ProtoNet:
    """A learner by registry name (``maml``, ``anil``, ``protonet``)."""
    if name not in LEARNERS:
        raise ConfigError(f"unknown meta-learner {name!r} (valid: {sorted(LEARNERS)})")
    return LEARNERS[name](inner_lr=inner_lr, first_order=first_order)


def episode_loss(
    learner: GradientLearner | ProtoNet,
    model: nn.Module,
    params: Params,
    episode: Episode,
    steps: int,
    create_graph: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapt on the support set, then the query cross-entropy and accuracy.

    Returns:
        (outer loss scalar with graph to ``params``, accuracy in [0, 1] as a 0-d tensor, no sync).
    """
    state = learner.adapt(model, params, episode.support_x, episode.support_y, steps, create_graph)
    query_logits = learner.predict(model, state, episode.query_x)
    loss = F.cross_entropy(query_logits, episode.query_y)
    accuracy = (query_logits.argmax(dim=1) == episode.query_y).float().mean()
    return loss, accuracy.detach()


EpisodeFn = Callable[
    [Params, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]
]


def episode_loss_fn(
    learner: GradientLearner | ProtoNet,
    model: nn.Module,
    steps: int,
    channels_last: bool = False,
    compile: bool = False,
) -> EpisodeFn:
    """:func:`episode_loss` (with ``create_graph=True``) as ``fn(params, support_x, support_y,
    query_x, query_y) -> (loss, accuracy)``.

    ``channels_last`` converts the episode images to channels-last memory (same values).
    ``compile`` wraps the whole episode (forward, inner ``torch.func.grad``, query loss) in one
    ``torch.compile`` graph; the outer backward, second-order terms included, is compiled with it.
    The first call per episode shape pays the compilation.
    """
    fn = partial(_episode_from_tensors, learner, model, steps, channels_last)
    return compile_graph(fn) if compile else fn


def _episode_from_tensors(
    learner: GradientLearner | ProtoNet,
    model: nn.Module,
    steps: int,
    channels_last: bool,
    params: Params,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    query_y: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    if channels_last:
        support_x = support_x.contiguous(memory_format=torch.channels_last)
        query_x = query_x.contiguous(memory_format=torch.channels_last)
    return episode_loss(learner, model, params, Episode(support_x, support_y, query_x, query_y), steps)


def reversed_outer_loss(
    learner: GradientLearner | ProtoNet,
    meta_model: nn.Module,
    params: dict[str, torch.Tensor],
    episode: Episode,
    steps: int,
    adv_scale: float,
) -> torch.Tensor:
    """``-adv_scale * L_outer`` of the current meta model on a non-detached pseudo episode.

    The inner loop is always second-order (docs/method.md §2.6), so the support images receive
    gradient through the adapted parameters and the query images through the outer loss. The meta
    parameters enter as detached copies: differentiate the result with
    ``torch.autograd.grad(loss, [images])`` only, so no gradient is computed or accumulated for the
    meta model (docs/method.md §8 item 5).

    Args:
        learner: the meta-learner (a first-order one is run second-order here).
        meta_model: the module ``params`` belong to.
        params: the meta parameters θ (not modified, no gradient reaches them).
        episode: a pseudo episode sampled from the images with their graph kept.
        steps: inner steps (the train-time number).
        adv_scale: weight of the reversed term.

    Returns:
        A 0-d tensor whose graph reaches the episode's images.
    """
    if isinstance(learner, GradientLearner) and learner.first_order:
        learner = GradientLearner(learner.inner_lr, first_order=False, head_only=learner.head_only)
    frozen = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    loss, _ = episode_loss(learner, meta_model, frozen, episode, steps, create_graph=True)
    return -adv_scale * loss
