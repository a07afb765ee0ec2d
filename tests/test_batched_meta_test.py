"""Plain meta-testing batched over episodes (``meta_test.adapt_batch``) against a naive per-episode loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from eval_helpers import tiny_model, tiny_split
from torch.func import functional_call

from purer.config import load_config
from purer.data.episodes import fixed_episodes, materialise
from purer.errors import ConfigError
from purer.meta.evaluate import adapt_episodes_first_order, evaluate
from purer.meta.learners import build_learner


def naive_adapt(model, params, support_x, support_y, inner_lr, steps, names):
    """Plain SGD on one episode's support set with torch.autograd.grad, written out by hand."""
    fast = {name: p.detach().clone() for name, p in params.items()}
    for _ in range(steps):
        leaves = {name: fast[name].requires_grad_(True) for name in names}
        loss = F.cross_entropy(functional_call(model, fast, (support_x,)), support_y)
        grads = torch.autograd.grad(loss, [leaves[name] for name in names])
        fast = {name: p.detach() for name, p in fast.items()}
        for name, grad in zip(names, grads, strict=True):
            fast[name] = fast[name] - inner_lr * grad
    return fast


def naive_accuracies(model, params, split, episodes, inner_lr, steps, names):
    accuracies = []
    for index in range(episodes.n_episodes):
        episode = materialise(split, episodes, index)
        fast = naive_adapt(model, params, episode.support_x, episode.support_y, inner_lr, steps, names)
        with torch.no_grad():
            predictions = functional_call(model, fast, (episode.query_x,)).argmax(dim=1)
        accuracies.append(float((predictions == episode.query_y).double().mean() * 100.0))
    return accuracies


@pytest.mark.parametrize(("algorithm", "steps"), [("maml", 1), ("maml", 3), ("anil", 2), ("maml", 0)])
def test_batched_adaptation_equals_the_naive_loop_in_float64(algorithm, steps):
    model = tiny_model().double()
    params = {name: p.detach() for name, p in model.named_parameters()}
    learner = build_learner(algorithm, 0.5)
    generator = torch.Generator().manual_seed(1)
    support_x = torch.randn(4, 10, 3, 16, 16, generator=generator, dtype=torch.float64)  # 4 episodes, 5-way 2-shot
    support_y = torch.arange(5).repeat_interleave(2).expand(4, 10)
    adapted, shared = adapt_episodes_first_order(learner, model, params, support_x, support_y, steps)
    names = learner.adapted_names(params) if steps else []
    assert set(adapted) == set(names) and set(shared) == set(params) - set(names)
    if algorithm == "anil":
        assert names and all(name.startswith("head.") for name in names)
    for g in range(4):
        expected = naive_adapt(model, params, support_x[g], support_y[g], 0.5, steps, names)
        for name in params:
            got = adapted[name][g] if name in adapted else shared[name]
            torch.testing.assert_close(got, expected[name], rtol=0, atol=1e-12)
        if steps:  # the episodes differ, so their adapted parameters must too
            assert not torch.equal(adapted[names[0]][g], params[names[0]])


@pytest.mark.parametrize("adapt_batch", [1, 3, 4, 50])
def test_evaluate_with_groups_equals_the_naive_loop(adapt_batch):
    split = tiny_split(n_classes=6, per_class=8)
    episodes = fixed_episodes(split, 5, 1, 3, 7, seed=3, name="t/test")  # 7 episodes: groups of 3 leave 1
    model = tiny_model(seed=2)
    params = {name: p.detach() for name, p in model.named_parameters()}
    learner = build_learner("maml", 0.5, True)
    oracle = naive_accuracies(model, params, split, episodes, 0.5, 2, list(params))
    result = evaluate(model, params, learner, split, episodes, 2, adapt_batch=adapt_batch)
    assert result["accuracies"] == pytest.approx(oracle, abs=1e-4)
    assert result["episodes"] == 7 and 0 <= result["seconds_total"] < 600  # the elapsed time, not an episode index
    assert len(set(oracle)) > 1  # a model that scores every episode alike would not test the order


def test_protonet_and_calibrated_tests_keep_the_per_episode_path():
    split = tiny_split(n_classes=6, per_class=8)
    episodes = fixed_episodes(split, 5, 2, 3, 5, seed=4, name="t/test")
    model = tiny_model(seed=5)
    params = {name: p.detach() for name, p in model.named_parameters()}
    protonet = build_learner("protonet", 0.0)
    one = evaluate(model, params, protonet, split, episodes, 1)
    many = evaluate(model, params, protonet, split, episodes, 1, adapt_batch=4)
    assert one["accuracies"] == many["accuracies"]
    seen = []

    def calibrate(model, state, episode, index):
        seen.append(index)
        return state

    evaluate(model, params, build_learner("maml", 0.5), split, episodes, 1, calibrate=calibrate, adapt_batch=4)
    assert seen == [0, 1, 2, 3, 4]  # the hook still sees every episode, one at a time


def test_adapt_batch_is_a_documented_key_with_a_range(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("meta_test: {adapt_batch: 8}\n", encoding="utf-8")
    assert load_config(path).meta_test.adapt_batch == 8
    assert load_config(None).meta_test.adapt_batch == 1
    path.write_text("meta_test: {adapt_batch: 0}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"meta_test\.adapt_batch: expected at least 1, got 0"):
        load_config(path)


@pytest.mark.slow  # compiles (about a minute on a quiet 2-core CPU)
def test_compiled_episodes_score_as_the_eager_loop():
    """``evaluate(compile=True)``: one compiled graph per episode shape, channels-last; same accuracies."""
    split = tiny_split(n_classes=6, per_class=8)
    episodes = fixed_episodes(split, 5, 1, 3, 5, seed=3, name="t/test")
    learner = build_learner("maml", 0.5, True)
    results = []
    for seed in (2, 7):  # two checkpoints of one architecture share the compiled graph
        model = tiny_model(seed=seed)
        params = {name: p.detach() for name, p in model.named_parameters()}
        eager = evaluate(model, params, learner, split, episodes, 2)
        compiled = evaluate(model, params, learner, split, episodes, 2, compile=True)
        assert compiled["accuracies"] == pytest.approx(eager["accuracies"], abs=1e-4)
        results.append(eager["accuracies"])
    assert results[0] != results[1]  # the second checkpoint's own parameters were used
