"""Meta-learners against hand-derived values: one MAML step, FO vs SO outer gradient, ANIL, ProtoNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from purer.errors import ConfigError
from purer.meta.learners import (
    Episode,
    build_learner,
    episode_loss,
    episode_loss_fn,
    meta_parameters,
)

N_WAY, DIM, ALPHA = 3, 4, 0.5


class SoftmaxRegression(nn.Module):
    """A "meta model" whose features are the flattened input: logits = W x + b."""

    def __init__(self, dim: int = DIM, n_way: int = N_WAY, hidden: int | None = None) -> None:
        super().__init__()
        self.body = nn.Linear(dim, hidden) if hidden else nn.Identity()
        self.head = nn.Linear(hidden or dim, n_way)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        h = self.features(x)
        return h if return_features else self.head(h)


def _episode(seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    support_x = torch.randn(6, DIM, generator=g, dtype=torch.float64)
    query_x = torch.randn(9, DIM, generator=g, dtype=torch.float64)
    return Episode(support_x, torch.arange(N_WAY).repeat(2), query_x, torch.arange(N_WAY).repeat(3))


def _model() -> SoftmaxRegression:
    torch.manual_seed(0)
    return SoftmaxRegression().double()


def _ce_grad(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Closed-form gradient of mean CE of softmax(W x + b): ((p - onehot)^T x / n, mean(p - onehot))."""
    p = torch.softmax(x @ w.T + b, dim=1)
    r = p - F.one_hot(y, N_WAY).double()
    return r.T @ x / x.shape[0], r.mean(0)


def test_one_maml_step_matches_closed_form():
    model, episode = _model(), _episode()
    params = meta_parameters(model)
    learner = build_learner("maml", inner_lr=ALPHA)
    state = learner.adapt(model, params, episode.support_x, episode.support_y, steps=1, create_graph=True)
    gw, gb = _ce_grad(params["head.weight"].detach(), params["head.bias"].detach(), episode.support_x, episode.support_y)
    torch.testing.assert_close(state.params["head.weight"], params["head.weight"] - ALPHA * gw)
    torch.testing.assert_close(state.params["head.bias"], params["head.bias"] - ALPHA * gb)


def _flat_support_loss(model, episode):
    def loss(theta: torch.Tensor) -> torch.Tensor:
        w, b = theta[: N_WAY * DIM].view(N_WAY, DIM), theta[N_WAY * DIM :]
        return F.cross_entropy(episode.support_x @ w.T + b, episode.support_y)

    return loss


def _outer_grad(first_order: bool) -> torch.Tensor:
    model, episode = _model(), _episode()
    params = meta_parameters(model)
    learner = build_learner("maml", inner_lr=ALPHA, first_order=first_order)
    loss, _ = episode_loss(learner, model, params, episode, steps=1, create_graph=True)
    grads = torch.autograd.grad(loss, [params["head.weight"], params["head.bias"]])
    return torch.cat([g.reshape(-1) for g in grads])


def test_outer_gradients_first_vs_second_order():
    model, episode = _model(), _episode()
    w0, b0 = model.head.weight.detach(), model.head.bias.detach()
    gw, gb = _ce_grad(w0, b0, episode.support_x, episode.support_y)
    w1, b1 = w0 - ALPHA * gw, b0 - ALPHA * gb
    qw, qb = _ce_grad(w1, b1, episode.query_x, episode.query_y)
    query_grad = torch.cat([qw.reshape(-1), qb])  # dL_q/dθ' at θ'

    theta0 = torch.cat([w0.reshape(-1), b0])
    hessian = torch.autograd.functional.hessian(_flat_support_loss(model, episode), theta0)
    identity = torch.eye(theta0.numel(), dtype=torch.float64)

    first = _outer_grad(first_order=True)
    second = _outer_grad(first_order=False)
    torch.testing.assert_close(first, query_grad)
    torch.testing.assert_close(second, (identity - ALPHA * hessian) @ query_grad)
    # the difference is exactly the Hessian term, and it is not negligible here
    torch.testing.assert_close(first - second, ALPHA * hessian @ query_grad)
    assert (first - second).abs().max() > 1e-3


def test_anil_adapts_only_the_head():
    torch.manual_seed(0)
    model = SoftmaxRegression(hidden=5).double()
    episode = _episode()
    params = meta_parameters(model)
    state = build_learner("anil", inner_lr=ALPHA).adapt(
        model, params, episode.support_x, episode.support_y, steps=2, create_graph=True
    )
    for name in ("body.weight", "body.bias"):
        assert state.params[name] is params[name]
    for name in ("head.weight", "head.bias"):
        assert not torch.equal(state.params[name], params[name])
    maml = build_learner("maml", inner_lr=ALPHA).adapt(
        model, params, episode.support_x, episode.support_y, steps=2, create_graph=True
    )
    assert not torch.equal(maml.params["body.weight"], params["body.weight"])


def test_protonet_logits_are_negative_squared_distances():
    torch.manual_seed(0)
    model = SoftmaxRegression(hidden=5).double()
    episode = _episode()
    params = meta_parameters(model)
    learner = build_learner("protonet", inner_lr=ALPHA)
    state = learner.adapt(model, params, episode.support_x, episode.support_y)
    got = learner.predict(model, state, episode.query_x)

    support_f = model.features(episode.support_x).detach()
    query_f = model.features(episode.query_x).detach()
    expected = torch.zeros(len(query_f), N_WAY, dtype=torch.float64)
    for c in range(N_WAY):
        members = [support_f[i] for i in range(len(support_f)) if int(episode.support_y[i]) == c]
        prototype = sum(members) / len(members)
        for q in range(len(query_f)):
            expected[q, c] = -sum((query_f[q, d] - prototype[d]) ** 2 for d in range(query_f.shape[1]))
    torch.testing.assert_close(got.detach(), expected)


def test_unknown_learner_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown meta-learner 'reptile'.*anil.*maml.*protonet"):
        build_learner("reptile", inner_lr=0.1)


def test_compiled_episode_matches_eager():
    """``episode_loss_fn(compile=True)``: one compiled graph of the episode (inner ``torch.func.grad``
    included); the loss and the second-order outer gradient equal the eager episode's."""
    from purer.models.backbones import build_backbone

    torch.manual_seed(0)
    model = build_backbone("conv4", N_WAY, 1, 16, running_stats=False, width=4).requires_grad_(False)
    params = meta_parameters(model)
    g = torch.Generator().manual_seed(1)
    support_x, query_x = torch.randn(6, 1, 16, 16, generator=g), torch.randn(9, 1, 16, 16, generator=g)
    tensors = (support_x, torch.arange(N_WAY).repeat(2), query_x, torch.arange(N_WAY).repeat(3))
    learner = build_learner("maml", 0.1)
    results = []
    for compile in (False, True):
        fn = episode_loss_fn(learner, model, 2, channels_last=compile, compile=compile)
        loss, accuracy = fn(params, *tensors)
        results.append((loss, accuracy, torch.autograd.grad(loss, list(params.values()))))
    (loss, accuracy, grads), (c_loss, c_accuracy, c_grads) = results
    torch.testing.assert_close(c_loss, loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_accuracy, accuracy)
    for name, grad, c_grad in zip(params, grads, c_grads, strict=True):
        # conv biases feed batch-statistics BN: their true gradient is 0, both are rounding noise
        atol = 1e-4 if name.endswith("bias") and not name.startswith("head") else 1e-5
        torch.testing.assert_close(c_grad, grad, atol=atol, rtol=1e-4, msg=name)
