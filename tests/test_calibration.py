"""ICFIL (a reconstruction, docs/method.md §3.3): contrastive loss oracles, which parameters change, determinism."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from eval_helpers import tiny_model, tiny_split

from purer.config import IcfilConfig
from purer.data.episodes import fixed_episodes, materialise
from purer.meta import calibration
from purer.meta.calibration import (
    calibrate_features,
    calibrate_head,
    calibration_loss,
    contrastive_masks,
    icfil_calibrate,
    invert_adapted_model,
    supervised_contrastive_loss,
)
from purer.meta.evaluate import adapt_first_order, evaluate
from purer.meta.learners import AdaptedState, build_learner, class_prototypes, features, logits
from purer.meta.meta_test import icfil_hook

# conv biases feed batch-statistics BN, which removes them: their gradient is zero (up to rounding)
BN_CANCELLED = {f"encoder.{i}.bias" for i in (0, 4, 8, 12)}
SMALL = IcfilConfig(pseudo_per_class=2, inversion_steps=3, feature_steps=2, head_steps=2)


def _setup(algorithm: str = "maml", n_shot: int = 1):
    split = tiny_split()
    episodes = fixed_episodes(split, 5, n_shot, 3, 2, seed=0, name="toy/test")
    episode = materialise(split, episodes, 0)
    model = tiny_model()
    params = {n: p.detach() for n, p in model.named_parameters()}
    learner = build_learner(algorithm, inner_lr=0.1)
    state = adapt_first_order(learner, model, params, episode, 1)
    return split, episodes, episode, model, params, learner, state


def _naive_supcon(anchors, bank, pos, neg, tau):
    """Per-anchor loop of -mean_p log(exp(s_p) / sum_{j in P or N} exp(s_j)) over cosine sims."""
    total = 0.0
    for i in range(anchors.shape[0]):
        sims = [F.cosine_similarity(anchors[i], bank[j], dim=0).item() / tau for j in range(bank.shape[0])]
        considered = [j for j in range(bank.shape[0]) if pos[i, j] or neg[i, j]]
        log_z = math.log(sum(math.exp(sims[j]) for j in considered))
        positives = [j for j in range(bank.shape[0]) if pos[i, j]]
        total += -sum(sims[p] - log_z for p in positives) / len(positives)
    return total / anchors.shape[0]


def test_contrastive_loss_by_hand():
    # r0 = p0 = e1 (class 0), r1 = p1 = e2 (class 1): each anchor has sims 1/tau (positive), 0, 0 (negatives)
    e1, e2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64)
    real, pseudo, y = torch.stack([e1, e2]), torch.stack([3 * e1, e2]), torch.tensor([0, 1])
    for tau in (0.1, 0.5):
        expected = math.log(math.exp(1 / tau) + 2) - 1 / tau
        assert calibration_loss(real, y, pseudo, y, tau).item() == pytest.approx(expected, rel=1e-5)


def test_contrastive_masks_by_hand():
    anchor_y, anchor_pseudo = torch.tensor([0, 1]), torch.tensor([False, True])
    bank_y, bank_pseudo = torch.tensor([0, 0, 1, 1]), torch.tensor([True, False, True, False])
    pos, neg = contrastive_masks(anchor_y, anchor_pseudo, bank_y, bank_pseudo)
    assert pos.tolist() == [[True, False, False, False], [False, False, False, True]]
    assert neg.tolist() == [[False, False, True, True], [True, True, False, False]]


@pytest.mark.parametrize("symmetric", [False, True])
def test_calibration_loss_matches_naive_loop(symmetric):
    g = torch.Generator().manual_seed(0)
    real, pseudo = torch.randn(6, 5, generator=g), torch.randn(9, 5, generator=g)
    real_y, pseudo_y = torch.tensor([0, 0, 1, 1, 2, 2]), torch.arange(3).repeat_interleave(3)
    bank, bank_y = torch.cat([pseudo, real]), torch.cat([pseudo_y, real_y])
    bank_pseudo = torch.tensor([True] * 9 + [False] * 6)
    if symmetric:
        anchors, anchor_y, anchor_pseudo = bank, bank_y, bank_pseudo
    else:
        anchors, anchor_y, anchor_pseudo = real, real_y, torch.zeros(6, dtype=torch.bool)
    pos, neg = contrastive_masks(anchor_y, anchor_pseudo, bank_y, bank_pseudo)
    expected = _naive_supcon(anchors, bank, pos, neg, 0.2)
    assert supervised_contrastive_loss(anchors, bank, pos, neg, 0.2).item() == pytest.approx(expected, rel=1e-5)
    assert calibration_loss(real, real_y, pseudo, pseudo_y, 0.2, symmetric).item() == pytest.approx(expected, rel=1e-5)


def test_inversion_is_seeded_detached_and_fits_the_adapted_model():
    _, _, episode, model, _, _, state = _setup()
    before = {n: p.clone() for n, p in state.params.items()}
    def make():
        return torch.Generator().manual_seed(3)

    none = dataclasses.replace(SMALL, inversion_steps=0)
    x0, y = invert_adapted_model(model, state, episode.support_x, 5, none, make())
    x1, _ = invert_adapted_model(model, state, episode.support_x, 5, dataclasses.replace(SMALL, inversion_steps=10), make())
    again, _ = invert_adapted_model(model, state, episode.support_x, 5, dataclasses.replace(SMALL, inversion_steps=10), make())
    assert x1.shape == (10, 3, 16, 16) and y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert not x1.requires_grad and torch.equal(x1, again)
    assert torch.equal(x0, torch.randn(10, 3, 16, 16, generator=make()))  # N(0, 1) initialisation
    assert F.cross_entropy(logits(model, state.params, x1), y) < F.cross_entropy(logits(model, state.params, x0), y)
    assert all(torch.equal(before[n], state.params[n]) for n in before)  # frozen
    assert all(p.grad is None for p in model.parameters())


def test_support_bn_mode_changes_the_images():
    _, _, episode, model, _, _, state = _setup()
    x_none, _ = invert_adapted_model(model, state, episode.support_x, 5, SMALL, torch.Generator().manual_seed(3))
    support = dataclasses.replace(SMALL, bn_mode="support")
    x_bn, _ = invert_adapted_model(model, state, episode.support_x, 5, support, torch.Generator().manual_seed(3))
    assert x_bn.shape == x_none.shape and not torch.equal(x_bn, x_none)


def _changed(before: dict, after: dict) -> set[str]:
    """Parameters that moved by more than rounding (BN-cancelled biases move by ~1e-10)."""
    return {n for n in before if not torch.allclose(before[n], after[n], rtol=0, atol=1e-7)}


def test_zero_calibration_steps_leave_predictions_unchanged():
    split, episodes, _, model, params, learner, _ = _setup()
    plain = evaluate(model, params, learner, split, episodes, 1)
    config = dataclasses.replace(SMALL, feature_steps=0, head_steps=0)

    def hook(model, state, episode, index):
        return icfil_calibrate(model, state, episode, config, 5, torch.Generator().manual_seed(index))

    assert evaluate(model, params, learner, split, episodes, 1, calibrate=hook)["accuracies"] == plain["accuracies"]


def test_each_stage_changes_exactly_its_parameters():
    _, _, episode, model, _, _, state = _setup()
    pseudo_x, pseudo_y = invert_adapted_model(model, state, episode.support_x, 5, SMALL, torch.Generator().manual_seed(0))
    sx, sy = episode.support_x, episode.support_y
    heads = {n for n in state.params if n.startswith("head.")}
    after_features = calibrate_features(model, state.params, sx, sy, pseudo_x, pseudo_y, SMALL)
    assert _changed(state.params, after_features) == set(state.params) - heads - BN_CANCELLED
    after_head = calibrate_head(model, state.params, sx, sy, pseudo_x, pseudo_y, SMALL)
    assert _changed(state.params, after_head) == heads
    calibrated = icfil_calibrate(model, state, episode, SMALL, 5, torch.Generator().manual_seed(0))
    assert _changed(state.params, calibrated.params) == set(state.params) - BN_CANCELLED
    assert not any(p.requires_grad for p in calibrated.params.values())


def test_one_head_step_is_sgd_on_pooled_cross_entropy():
    _, _, episode, model, _, _, state = _setup()
    pseudo_x, pseudo_y = torch.randn(10, 3, 16, 16), torch.arange(5).repeat_interleave(2)
    config = dataclasses.replace(SMALL, head_steps=1, head_lr=0.5)
    after = calibrate_head(model, state.params, episode.support_x, episode.support_y, pseudo_x, pseudo_y, config)
    with torch.no_grad():
        feats = torch.cat([features(model, state.params, episode.support_x), features(model, state.params, pseudo_x)])
    w = state.params["head.weight"].clone().requires_grad_(True)
    b = state.params["head.bias"].clone().requires_grad_(True)
    F.cross_entropy(feats @ w.T + b, torch.cat([episode.support_y, pseudo_y])).backward()
    assert torch.allclose(after["head.weight"], w.detach() - 0.5 * w.grad, atol=1e-6)
    assert torch.allclose(after["head.bias"], b.detach() - 0.5 * b.grad, atol=1e-6)


def test_feature_calibration_lowers_the_contrastive_loss():
    _, _, episode, model, _, _, state = _setup()
    pseudo_x, pseudo_y = invert_adapted_model(model, state, episode.support_x, 5, SMALL, torch.Generator().manual_seed(0))
    sx, sy = episode.support_x, episode.support_y

    def loss(params):
        with torch.no_grad():
            return calibration_loss(features(model, params, sx), sy, features(model, params, pseudo_x), pseudo_y, 0.1).item()

    config = dataclasses.replace(SMALL, feature_steps=5, feature_lr=0.005)
    assert loss(calibrate_features(model, state.params, sx, sy, pseudo_x, pseudo_y, config)) < loss(state.params)


def test_protonet_prototypes_are_recomputed_from_calibrated_features():
    _, _, episode, model, _, _, state = _setup("protonet", n_shot=2)
    assert state.prototypes is not None
    zero = dataclasses.replace(SMALL, feature_steps=0)
    same = icfil_calibrate(model, state, episode, zero, 5, torch.Generator().manual_seed(0))
    assert torch.allclose(same.prototypes, state.prototypes, atol=1e-6)
    calibrated = icfil_calibrate(model, state, episode, SMALL, 5, torch.Generator().manual_seed(0))
    expected = class_prototypes(features(model, calibrated.params, episode.support_x), episode.support_y)
    assert torch.allclose(calibrated.prototypes, expected, atol=1e-6)
    expected_changed = {n for n in state.params if not n.startswith("head.")} - BN_CANCELLED
    assert _changed(state.params, calibrated.params) == expected_changed


def test_icfil_evaluation_is_reproducible_per_episode(tmp_path):
    from eval_helpers import tiny_config

    _, config = tiny_config(tmp_path)
    split, episodes, _, model, params, learner, _ = _setup()
    hook = icfil_hook(config, "toy", 5)
    first = evaluate(model, params, learner, split, episodes, 1, calibrate=hook)
    second = evaluate(model, params, learner, split, episodes, 1, calibrate=icfil_hook(config, "toy", 5))
    assert first["accuracies"] == second["accuracies"]
    # episode 1's calibration does not depend on whether episode 0 was calibrated first
    episode = materialise(split, episodes, 1)
    state = adapt_first_order(learner, model, params, episode, 1)
    a = hook(model, state, episode, 1)
    b = icfil_hook(config, "toy", 5)(model, state, episode, 1)
    assert all(torch.equal(a.params[n], b.params[n]) for n in a.params)
    assert isinstance(a, AdaptedState)


@pytest.mark.parametrize("algorithm", ["maml", "protonet"])
def test_compiled_inversion_computes_the_eager_objective(algorithm, monkeypatch):
    """``compile=True``: each step's loss and image gradient from one traced graph (the jitter outside it),
    in float64 the same images as the eager steps. The graph is traced by Dynamo and AOT autograd as in a
    real run; the ``aot_eager`` backend stands in for inductor's kernel build, which takes minutes here."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **kw, backend="aot_eager"))
    monkeypatch.setattr(calibration, "_COMPILED_LOSSES", {})
    _, _, episode, model, _, _, state = _setup(algorithm)
    model = model.double()
    state = AdaptedState({n: p.double() for n, p in state.params.items()},
                         None if state.prototypes is None else state.prototypes.double())
    support_x = episode.support_x.double()
    config = dataclasses.replace(SMALL, inversion_steps=4, jitter=2)
    eager, labels = invert_adapted_model(model, state, support_x, 5, config, torch.Generator().manual_seed(3))
    for _ in range(2):  # the second episode reuses the compiled graph
        compiled, compiled_labels = invert_adapted_model(model, state, support_x, 5, config,
                                                         torch.Generator().manual_seed(3), compile=True)
        assert torch.equal(labels, compiled_labels)
        assert torch.allclose(compiled, eager, rtol=0, atol=1e-9)
    assert len(calibration._COMPILED_LOSSES) == 1
    start = torch.randn(eager.shape, generator=torch.Generator().manual_seed(3)).double()  # the initialisation
    assert (compiled - start).abs().max() > 0.1  # the steps moved the images


def test_sgd_steps_by_hand():
    # loss a²·b with b fixed: da = 2ab. a: 2 → 2 − 0.1·12 = 0.8 → 0.8 − 0.1·4.8 = 0.32
    from purer.meta.calibration import sgd_steps

    start = {"a": torch.tensor(2.0), "b": torch.tensor(3.0)}
    out = sgd_steps(start, ["a"], lambda p: p["a"] ** 2 * p["b"], steps=2, lr=0.1)
    assert out["a"].item() == pytest.approx(0.32) and out["b"].item() == 3.0
    assert not any(p.requires_grad for p in out.values())
    assert start["a"].item() == 2.0  # the caller's dict is not changed
    assert sgd_steps(start, ["a"], lambda p: p["a"] ** 2, steps=0, lr=0.1)["a"].item() == 2.0
