"""Meta-testing (docs/method.md §4): CI formula, scoring on fixed episodes, checkpoints, metrics.json, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from eval_helpers import tiny_config, tiny_model, tiny_split, write_meta_model

from purer import paths
from purer.cli.main import main
from purer.data.episodes import fixed_episodes, materialise
from purer.errors import CheckpointError, ConfigError
from purer.meta.evaluate import adapt_first_order, confidence_interval, evaluate, normalised_images
from purer.meta.learners import AdaptedState, build_learner, logits
from purer.meta.meta_test import ICFIL_NOTE, meta_test
from purer.meta.model_file import load_meta_model

# ------------------------------------------------------------------------------------------ CI


def test_confidence_interval_by_hand():
    mean, ci = confidence_interval([0.0, 100.0])
    assert mean == 50.0
    assert ci == pytest.approx(1.96 * 50.0 / math.sqrt(2))  # population sigma = 50
    mean, ci = confidence_interval([40.0, 60.0, 80.0, 60.0])  # sigma^2 = (400 + 0 + 400 + 0) / 4
    assert mean == 60.0 and ci == pytest.approx(1.96 * math.sqrt(200.0) / 2)
    assert confidence_interval([70.0] * 5) == (70.0, 0.0)


# ------------------------------------------------------------------------------------------ evaluate


class OracleLearner:
    """Predicts the true query labels (the episode layout is class-major)."""

    def adapt(self, model, params, support_x, support_y, steps, create_graph):
        return AdaptedState(params)

    def predict(self, model, state, query_x):
        labels = torch.arange(5).repeat_interleave(query_x.shape[0] // 5)
        return F.one_hot(labels, 5).float()


def _fixture():
    split = tiny_split()
    episodes = fixed_episodes(split, 5, 1, 3, 6, seed=0, name="toy/test")
    model = tiny_model()
    params = {n: p.detach() for n, p in model.named_parameters()}
    return split, episodes, model, params


def test_perfect_oracle_scores_100_with_zero_ci():
    split, episodes, model, params = _fixture()
    result = evaluate(model, params, OracleLearner(), split, episodes, 1)
    assert result["accuracies"] == [100.0] * 6
    assert (result["accuracy"], result["ci95"], result["episodes"]) == (100.0, 0.0, 6)


def test_random_model_matches_a_naive_per_episode_loop():
    split, episodes, model, params = _fixture()
    learner = build_learner("maml", inner_lr=0.1)
    result = evaluate(model, params, learner, split, episodes, 2)
    assert len(result["accuracies"]) == 6 and all(0 <= a <= 100 for a in result["accuracies"])
    assert result["seconds_total"] > 0 and result["seconds_per_episode"] == pytest.approx(result["seconds_total"] / 6)
    for e in range(6):
        episode = materialise(split, episodes, e)
        fast = {n: p.clone().requires_grad_(True) for n, p in params.items()}
        for _ in range(2):  # plain first-order SGD on the support cross-entropy
            loss = F.cross_entropy(logits(model, fast, episode.support_x), episode.support_y)
            grads = torch.autograd.grad(loss, list(fast.values()))
            fast = {n: (p - 0.1 * g).detach().requires_grad_(True) for (n, p), g in zip(fast.items(), grads, strict=True)}
        predicted = logits(model, fast, episode.query_x).argmax(1)
        expected = (predicted == episode.query_y).float().mean().item() * 100
        assert result["accuracies"][e] == pytest.approx(expected, abs=1e-4)
    assert (result["accuracy"], result["ci95"]) == pytest.approx(confidence_interval(result["accuracies"]))


def test_adaptation_keeps_no_graph():
    split, episodes, model, params = _fixture()
    state = adapt_first_order(build_learner("maml", 0.1), model, params, materialise(split, episodes, 0), 1)
    assert not any(p.requires_grad or p.grad_fn is not None for p in state.params.values())
    assert not any(p.requires_grad for p in params.values())  # the meta parameters are untouched


def test_anil_adapts_only_the_head_and_protonet_uses_prototypes():
    split, episodes, model, params = _fixture()
    episode = materialise(split, episodes, 0)
    state = adapt_first_order(build_learner("anil", 0.5), model, params, episode, 2)
    changed = {n for n in params if not torch.equal(params[n], state.params[n])}
    assert changed == {"head.weight", "head.bias"}
    proto = adapt_first_order(build_learner("protonet", 0.0), model, params, episode, 2)
    assert proto.prototypes.shape == (5, model.feature_dim) and not proto.prototypes.requires_grad
    result = evaluate(model, params, build_learner("protonet", 0.0), split, episodes, 0)
    assert len(result["accuracies"]) == 6 and 0 <= result["accuracy"] <= 100


def test_calibrate_hook_gets_each_episode_and_its_state_is_used():
    split, episodes, model, params = _fixture()
    seen = []

    def perfect_head(model, state, episode, index):
        seen.append(index)
        return AdaptedState(state.params | {"head.weight": torch.zeros_like(state.params["head.weight"])})

    result = evaluate(model, params, build_learner("maml", 0.1), split, episodes, 1, calibrate=perfect_head)
    assert seen == list(range(6))
    # a zero weight matrix makes the logits equal to the bias for every query image: one class wins
    assert all(a == pytest.approx(20.0) for a in result["accuracies"])


def test_test_images_are_resized_to_the_model_input():
    split = tiny_split(size=32)
    resized = normalised_images(split, "cpu", input_size=16)
    expected = F.interpolate(split.normalise(split.images), size=(16, 16), mode="bilinear", antialias=True)
    assert resized.shape == (len(split.labels), 3, 16, 16) and torch.allclose(resized, expected)
    assert torch.equal(normalised_images(split, "cpu", input_size=32), split.normalise(split.images))
    episodes = fixed_episodes(split, 5, 1, 3, 2, seed=0, name="toy/test")
    model = tiny_model(size=16)
    params = {n: p.detach() for n, p in model.named_parameters()}
    assert len(evaluate(model, params, build_learner("maml", 0.1), split, episodes, 1, input_size=16)["accuracies"]) == 2
    with pytest.raises(RuntimeError):  # without resizing, 32 px images do not fit a 16 px Conv4 head
        evaluate(model, params, build_learner("maml", 0.1), split, episodes, 0)


# ------------------------------------------------------------------------------------------ checkpoints


def test_load_meta_model_roundtrip(tmp_path):
    path = write_meta_model(tmp_path / "meta_model.pt", seed=3)
    model, params, info = load_meta_model(path)
    reference = tiny_model(seed=3)
    assert all(torch.equal(params[n], p) for n, p in reference.named_parameters())
    assert info["n_way"] == 5 and info["learner"]["algorithm"] == "maml" and "state_dict" not in info
    assert all(m.running_mean is None for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_truncated_or_mismatched_meta_model_is_reported(tmp_path):
    path = write_meta_model(tmp_path / "meta_model.pt")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=f"meta model {path} is truncated"):
        load_meta_model(path)
    wide = write_meta_model(tmp_path / "wide.pt", width=4, arch_kwargs={"width": 8})
    with pytest.raises(CheckpointError, match=f"meta model {wide} does not match architecture 'conv4'"):
        load_meta_model(wide)
    partial = tmp_path / "partial.pt"
    torch.save({"state_dict": {}}, partial)
    with pytest.raises(CheckpointError, match="lacks the entries"):
        load_meta_model(partial)
    no_lr = write_meta_model(tmp_path / "no_lr.pt", learner={"algorithm": "maml"})
    with pytest.raises(CheckpointError, match="`learner` must be a dict with algorithm and inner_lr"):
        load_meta_model(no_lr)


# ------------------------------------------------------------------------------------------ meta_test


def _run(config, seed: int = 0, method: str = "purer"):
    return paths.run_dir(config, method, 1, seed)


def test_meta_test_writes_metrics(tmp_path):
    _, config = tiny_config(tmp_path)
    write_meta_model(_run(config) / "meta_model.pt")
    metrics = meta_test(config, "purer", 1, 0, "toy", icfil=False)
    out = paths.test_dir(_run(config), "toy", False)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert (out / "config.resolved.yaml").is_file() and (out / "env.json").is_file()
    assert metrics["episodes"] == 4 and len(metrics["accuracies"]) == 4
    assert (metrics["n_way"], metrics["n_shot"], metrics["n_query"], metrics["seed"]) == (5, 1, 3, 0)
    assert metrics["selection"] == "val" and metrics["checkpoint_iteration"] == 10 and metrics["val_accuracy"] == 40.0
    assert metrics["learner"] == {"algorithm": "maml", "inner_lr": 0.1, "first_order": False}
    assert metrics["icfil"] is False and "icfil_note" not in metrics
    assert metrics["teacher_weighting"] == "equal" and metrics["inner_steps"] == 1


def test_every_method_and_seed_gets_the_same_episodes(tmp_path):
    _, config = tiny_config(tmp_path, inner_steps=0)
    runs = [_run(config, 0), _run(config, 1), _run(config, 0, "random")]
    for run in runs:
        write_meta_model(run / "meta_model.pt", seed=5)  # the same model in every run
    results = [meta_test(config, r.parts[-3], 1, int(r.name[4:]), "toy", False) for r in runs]
    assert results[0]["accuracies"] == results[1]["accuracies"] == results[2]["accuracies"]


def test_icfil_metrics_carry_the_note(tmp_path):
    _, config = tiny_config(tmp_path)
    write_meta_model(_run(config) / "meta_model.pt")
    metrics = meta_test(config, "purer", 1, 0, "toy", icfil=True)
    assert metrics["icfil"] is True and metrics["icfil_note"] == ICFIL_NOTE
    assert (paths.test_dir(_run(config), "toy", True) / "metrics.json").is_file()


def test_wrong_way_or_channels_is_a_clear_error(tmp_path):
    _, config = tiny_config(tmp_path)
    model_path = write_meta_model(_run(config) / "meta_model.pt", n_way=10)
    with pytest.raises(ConfigError, match=f"meta model at {model_path} was trained for 10-way, but meta_test.n_way is 5"):
        meta_test(config, "purer", 1, 0, "toy", False)
    write_meta_model(model_path, channels=1, arch_kwargs={"width": 4}, state_dict=tiny_grey_state())
    with pytest.raises(ConfigError, match="takes 1-channel images, but the toy test split has 3 channels"):
        meta_test(config, "purer", 1, 0, "toy", False)
    assert not (_run(config) / "test").exists()  # nothing written on error


def tiny_grey_state():
    from purer.models.backbones import build_backbone

    return build_backbone("conv4", 5, 1, 16, running_stats=False, width=4).state_dict()


def test_selection_last_and_best_on_test(tmp_path):
    _, config = tiny_config(tmp_path, selection="last", inner_steps=0)
    run = _run(config)
    write_meta_model(run / "meta_model.pt", seed=1)
    write_meta_model(run / "last.pt", seed=2, iteration=99)
    assert meta_test(config, "purer", 1, 0, "toy", False)["checkpoint_iteration"] == 99
    write_meta_model(run / "snapshots" / "it0050.pt", seed=3, iteration=50)
    _, best_config = tiny_config(tmp_path, selection="best-on-test", inner_steps=0)
    metrics = meta_test(best_config, "purer", 1, 0, "toy", False)
    assert metrics["selection"] == "best-on-test (authors' protocol, optimistically biased)"
    assert [c["checkpoint"] for c in metrics["candidates"]] == ["meta_model.pt", "last.pt", "it0050.pt"]
    assert metrics["accuracy"] == max(c["accuracy"] for c in metrics["candidates"])


def test_missing_meta_model_is_reported(tmp_path):
    _, config = tiny_config(tmp_path)
    with pytest.raises(CheckpointError, match="meta model not found: .*meta_model.pt"):
        meta_test(config, "purer", 1, 0, "toy", False)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_tests_every_dataset_and_writes_the_average(tmp_path, capsys):
    config_path, config = tiny_config(tmp_path, datasets={"toy": 16, "big": 32})
    run = paths.run_dir(config, "purer", 1, config.grid.seeds[0])  # --seed defaults to the grid's first
    write_meta_model(run / "meta_model.pt")
    assert main(["meta-test", "--config", str(config_path), "--method", "purer", "--n-shot", "1"]) == 0
    toy, big, average = (json.loads((run / "test" / d / "plain" / "metrics.json").read_text()) for d in ("toy", "big", "average"))
    assert big["input_size"] == 16 and big["test_image_size"] == 32
    assert average["datasets"] == ["toy", "big"]
    assert average["accuracy"] == pytest.approx((toy["accuracy"] + big["accuracy"]) / 2)
    assert average["ci95"] == pytest.approx(math.hypot(toy["ci95"], big["ci95"]) / 2)


def test_cli_out_dir_and_single_dataset(tmp_path):
    config_path, config = tiny_config(tmp_path)
    run = tmp_path / "myrun"
    write_meta_model(run / "meta_model.pt")
    argv = ["meta-test", "-c", str(config_path), "--method", "purer", "--n-shot", "1", "--seed", "3",
            "--dataset", "toy", "--run", str(run), "--out", str(tmp_path / "out"), "--icfil"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "out" / "toy" / "icfil" / "metrics.json").read_text())
    assert metrics["seed"] == 3 and metrics["icfil"] is True
    assert not (tmp_path / "out" / "average").exists()


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    config_path, config = tiny_config(tmp_path)
    write_meta_model(paths.run_dir(config, "purer", 1, 0) / "meta_model.pt", n_way=10)
    argv = ["meta-test", "-c", str(config_path), "--method", "purer", "--n-shot", "1", "--seed", "0"]
    assert main(argv) == 2
    assert "was trained for 10-way, but meta_test.n_way is 5" in capsys.readouterr().err
    assert main(argv[:-2] + ["--dataset", "nope"]) == 2
    assert "--dataset 'nope' is not defined" in capsys.readouterr().err
