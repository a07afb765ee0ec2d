"""ICFIL's controls and the batched ICFIL: the batch equals the per-episode path, the controls do
what they claim, every variant is scored on the same checkpoint and episodes, and bad variant names
are one clear error."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from eval_helpers import tiny_config, tiny_model, tiny_split, write_meta_model

from purer import paths
from purer.cli.main import main
from purer.config import IcfilConfig
from purer.data.episodes import fixed_episodes, materialise
from purer.errors import ConfigError
from purer.meta.calibration import (
    can_batch,
    icfil_calibrate,
    icfil_calibrate_batch,
    invert_adapted_model,
    invert_adapted_models,
    noise_config,
    stack_params,
    support_finetune,
)
from purer.meta.evaluate import adapt_first_order, evaluate
from purer.meta.learners import Episode, build_learner, features, logits
from purer.meta.meta_test import icfil_batch_hook, icfil_hook, meta_test
from purer.variants import all_variants, control_names, grid_variants

SMALL = IcfilConfig(pseudo_per_class=2, inversion_steps=3, feature_steps=2, head_steps=2)


def _double(episode: Episode) -> Episode:
    return Episode(episode.support_x.double(), episode.support_y, episode.query_x.double(), episode.query_y)


def _adapted(n_episodes: int = 3, algorithm: str = "maml", n_shot: int = 1, dtype=torch.float64):
    split = tiny_split()
    episodes = fixed_episodes(split, 5, n_shot, 3, n_episodes, seed=0, name="toy/test")
    model = tiny_model().to(dtype)
    params = {n: p.detach() for n, p in model.named_parameters()}
    batch = [materialise(split, episodes, i) for i in range(n_episodes)]
    if dtype == torch.float64:
        batch = [_double(e) for e in batch]
    states = [adapt_first_order(build_learner(algorithm, 0.1), model, params, e, 1) for e in batch]
    return model, states, batch


def _generators(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(100 + i) for i in range(n)]


# --------------------------------------------------------------------------------------------
# Batched ICFIL == per-episode ICFIL
# --------------------------------------------------------------------------------------------


def test_batched_inversion_equals_the_per_episode_inversion():
    model, states, batch = _adapted()
    support = torch.stack([e.support_x for e in batch])
    many, labels = invert_adapted_models(model, stack_params(states), support, 5, SMALL, _generators(3))
    for i, (state, episode, generator) in enumerate(zip(states, batch, _generators(3), strict=True)):
        one, one_labels = invert_adapted_model(model, state, episode.support_x, 5, SMALL, generator)
        torch.testing.assert_close(many[i], one, rtol=0, atol=1e-10)
        assert torch.equal(labels, one_labels)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("n_shot", [1, 2])
def test_batched_icfil_equals_the_per_episode_icfil(symmetric, n_shot):
    config = dataclasses.replace(SMALL, symmetric=symmetric)
    model, states, batch = _adapted(n_shot=n_shot)
    many = icfil_calibrate_batch(model, states, batch, config, 5, _generators(3))
    for state, episode, generator, batched in zip(states, batch, _generators(3), many, strict=True):
        one = icfil_calibrate(model, state, episode, config, 5, generator)
        assert batched.prototypes is None
        for name, value in one.params.items():
            torch.testing.assert_close(batched.params[name], value, rtol=0, atol=1e-10)
        assert not torch.equal(one.params["head.weight"], state.params["head.weight"])  # it did calibrate


def test_unsupported_settings_fall_back_to_the_per_episode_loop():
    model, states, batch = _adapted(algorithm="protonet")
    assert not can_batch(states, SMALL)
    many = icfil_calibrate_batch(model, states, batch, SMALL, 5, _generators(3))
    one = icfil_calibrate(model, states[1], batch[1], SMALL, 5, _generators(3)[1])
    torch.testing.assert_close(many[1].prototypes, one.prototypes, rtol=0, atol=0)
    model, states, _ = _adapted()
    assert not can_batch(states, dataclasses.replace(SMALL, bn_mode="support")) and can_batch(states, SMALL)


@pytest.mark.parametrize("noise", [False, True])
def test_evaluate_in_groups_equals_episode_by_episode(tmp_path, noise):
    """float32, groups of 3 over 5 episodes (a short last group): the same per-episode accuracies."""
    _, config = tiny_config(tmp_path)
    split = tiny_split()
    episodes = fixed_episodes(split, 5, 1, 3, 5, seed=0, name="toy/test")
    model = tiny_model()
    params = {n: p.detach() for n, p in model.named_parameters()}
    learner = build_learner("maml", 0.1)
    one = evaluate(model, params, learner, split, episodes, 1, calibrate=icfil_hook(config, "toy", 5, noise))
    grouped = evaluate(model, params, learner, split, episodes, 1, calibrate_batch=icfil_batch_hook(config, "toy", 5, noise),
                       episode_batch=3)
    assert grouped["accuracies"] == one["accuracies"]


# --------------------------------------------------------------------------------------------
# The controls
# --------------------------------------------------------------------------------------------


def test_noise_control_calibrates_on_the_uninverted_initialisation():
    model, states, batch = _adapted(1)
    noise = noise_config(SMALL)
    assert noise.inversion_steps == 0 and dataclasses.replace(noise, inversion_steps=3) == SMALL
    images, _ = invert_adapted_model(model, states[0], batch[0].support_x, 5, noise, torch.Generator().manual_seed(4))
    expected = torch.randn(images.shape, generator=torch.Generator().manual_seed(4)).double()
    assert torch.equal(images, expected)
    inverted, _ = invert_adapted_model(model, states[0], batch[0].support_x, 5, SMALL, torch.Generator().manual_seed(4))
    assert not torch.allclose(inverted, expected)


def test_support_finetune_is_sgd_on_the_support_only():
    """One feature step (CE through the whole model on the support), then one head step on the
    fixed features, both by hand."""
    model, states, batch = _adapted(1)
    config = dataclasses.replace(SMALL, feature_steps=1, head_steps=1, feature_lr=0.05, head_lr=0.2)
    episode, params = batch[0], states[0].params
    result = support_finetune(model, states[0], episode, config).params

    names = [n for n in params if not n.startswith("head.")]
    leaves = {n: p.detach().clone().requires_grad_(n in names) for n, p in params.items()}
    loss = F.cross_entropy(logits(model, leaves, episode.support_x), episode.support_y)
    grads = dict(zip(names, torch.autograd.grad(loss, [leaves[n] for n in names]), strict=True))
    after = {n: (p.detach() - 0.05 * grads[n]) if n in names else p.detach() for n, p in leaves.items()}
    feats = features(model, after, episode.support_x).detach()
    weight, bias = after["head.weight"].clone().requires_grad_(True), after["head.bias"].clone().requires_grad_(True)
    head_loss = F.cross_entropy(feats @ weight.T + bias, episode.support_y)
    g_weight, g_bias = torch.autograd.grad(head_loss, [weight, bias])
    after["head.weight"], after["head.bias"] = weight.detach() - 0.2 * g_weight, bias.detach() - 0.2 * g_bias
    for name in params:
        torch.testing.assert_close(result[name], after[name], rtol=0, atol=1e-12)


def test_variants_of_the_default_settings():
    from purer.config import ExperimentConfig, GridConfig

    config = ExperimentConfig()
    variants = all_variants(config.meta_test)
    assert sorted(variants) == ["finetune-support", "icfil", "icfil-noise", "plain", "plain-steps10", "plain-steps16"]
    assert variants["plain-steps16"].inner_steps == 16 and variants["plain-steps16"].calibration == "none"
    assert variants["icfil-noise"].icfil and not variants["finetune-support"].icfil
    assert control_names(config) == ["plain-steps10", "plain-steps16", "icfil-noise", "finetune-support"]
    assert grid_variants(config, "random") == ["plain"]
    assert grid_variants(config, "purer") == ["plain", "icfil", *control_names(config)]
    only_noise = dataclasses.replace(config, grid=GridConfig(icfil_controls=("noise",), icfil_methods=("ei",)))
    assert grid_variants(only_noise, "ei") == ["plain", "icfil", "icfil-noise"]


# --------------------------------------------------------------------------------------------
# meta_test: the same checkpoint and episodes for every variant
# --------------------------------------------------------------------------------------------


def test_every_variant_is_scored_on_the_same_checkpoint_and_episodes(tmp_path):
    _, config = tiny_config(tmp_path, matched_steps=[3])
    run = paths.run_dir(config, "purer", 1, 0)
    write_meta_model(run / "meta_model.pt")
    results = {name: meta_test(config, "purer", 1, 0, "toy", name) for name in all_variants(config.meta_test)}
    assert {r["episodes_digest"] for r in results.values()} == {results["plain"]["episodes_digest"]}
    assert {r["checkpoint"] for r in results.values()} == {"meta_model.pt"}
    for name in results:
        on_disk = json.loads((paths.test_dir(run, "toy", name) / "metrics.json").read_text())
        assert on_disk["test_variant"] == name and len(on_disk["accuracies"]) == 4
    assert results["plain-steps3"]["inner_steps"] == 3 and results["plain-steps3"]["calibration"] == "none"
    assert results["icfil-noise"]["icfil"] is True and "icfil_note" in results["icfil-noise"]
    assert results["finetune-support"]["calibration"] == "support"
    # the matched-step control is plain adaptation with more steps
    (tmp_path / "three").mkdir()
    _, three_steps = tiny_config(tmp_path / "three", inner_steps=3)
    write_meta_model(paths.run_dir(three_steps, "purer", 1, 0) / "meta_model.pt")
    assert meta_test(three_steps, "purer", 1, 0, "toy", "plain")["accuracies"] == results["plain-steps3"]["accuracies"]


def test_best_on_test_is_recorded_beside_the_clean_plain_result(tmp_path):
    _, config = tiny_config(tmp_path, inner_steps=0)
    run = paths.run_dir(config, "purer", 1, 0)
    write_meta_model(run / "meta_model.pt", seed=1)
    write_meta_model(run / "last.pt", seed=2, iteration=99)
    write_meta_model(run / "snapshots" / "iter00050.pt", seed=3, iteration=50)
    plain = meta_test(config, "purer", 1, 0, "toy", "plain")
    assert plain["checkpoint"] == "meta_model.pt" and plain["selection"] == "val"
    best = plain["best_on_test"]
    assert best["n_checkpoints"] == 3 and best["accuracy"] >= plain["accuracy"]
    assert "optimistically biased" in best["label"]
    # the job's time counts every checkpoint it scored: the clean one and the two further ones
    assert best["seconds_further"] > 0
    assert plain["seconds_all_checkpoints"] == pytest.approx(plain["seconds_total"] + best["seconds_further"])
    steps10 = meta_test(config, "purer", 1, 0, "toy", "plain-steps10")
    assert "best_on_test" not in steps10 and steps10["seconds_all_checkpoints"] == steps10["seconds_total"]
    (tmp_path / "off").mkdir()
    _, off = tiny_config(tmp_path / "off", inner_steps=0, best_on_test_beside=False)
    write_meta_model(paths.run_dir(off, "purer", 1, 0) / "meta_model.pt", seed=1)
    assert "best_on_test" not in meta_test(off, "purer", 1, 0, "toy", "plain")


def test_unknown_variant_is_one_clear_error(tmp_path, capsys):
    config_path, config = tiny_config(tmp_path)
    write_meta_model(paths.run_dir(config, "purer", 1, 0) / "meta_model.pt")
    with pytest.raises(ConfigError, match="unknown meta-test variant 'plain-steps7'.*plain-steps10"):
        meta_test(config, "purer", 1, 0, "toy", "plain-steps7")
    argv = ["meta-test", "-c", str(config_path), "--method", "purer", "--n-shot", "1", "--seed", "0"]
    assert main([*argv, "--variant", "noise"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("purer meta-test: error: unknown meta-test variant 'noise'")
    assert main([*argv, "--variant", "icfil-noise", "--icfil"]) == 2
    assert "--icfil and --variant icfil-noise contradict each other" in capsys.readouterr().err
    assert main([*argv, "--variant", "finetune-support"]) == 0
    assert (paths.run_dir(config, "purer", 1, 0) / "test" / "toy" / "finetune-support" / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("matched_steps", [0], "meta_test.matched_steps: expected values of at least 1"),
     ("episode_batch", 0, "meta_test.episode_batch: expected at least 1")],
)
def test_bad_control_settings_name_the_key(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, **{key: value})


def test_meta_test_in_episode_groups_equals_the_per_episode_path(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "groups").mkdir()
    _, one = tiny_config(tmp_path / "one", episode_batch=1)
    _, groups = tiny_config(tmp_path / "groups", episode_batch=3)  # 4 episodes: groups of 3 and 1
    results = []
    for config in (one, groups):
        write_meta_model(paths.run_dir(config, "purer", 1, 0) / "meta_model.pt")
        results.append([meta_test(config, "purer", 1, 0, "toy", name)["accuracies"] for name in ("icfil", "icfil-noise")])
    assert results[0] == results[1]
