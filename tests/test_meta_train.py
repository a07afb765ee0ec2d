"""Meta-training end to end on a tiny pool: outputs, methods, FedAvg, resume, non-finite losses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from pool_helpers import fake_checkpoint, synthetic_split

from purer import paths
from purer import runtime as runtime_module
from purer.cli.main import main
from purer.config import load_config
from purer.data.cache import save_split
from purer.errors import CheckpointError, ConfigError, PurerError
from purer.inversion.teacher_pool import ResidentPool
from purer.meta import engine as engine_module
from purer.meta import train as train_module
from purer.meta.checkpoint import grid_iterations
from purer.meta.model_file import load_meta_model
from purer.meta.train import meta_train
from purer.models.manifest import load_manifest, write_manifest
from purer.models.pool import teacher_specs
from purer.models.pretrain import train_teacher

CHANNELS = 1


def _raw_config(root: Path, architectures=("conv4",), **meta_train) -> dict:
    return {
        "experiment": "t",
        "seed": 0,
        "data_dir": str(root / "data"),
        "results_dir": str(root / "results"),
        "datasets": {"toy": {"source": "folder", "path": str(root / "raw"), "image_size": 16}},
        "pool": {"datasets": ["toy"], "n_way": 3, "epochs": 1, "batch_size": 8, "conv4_width": 4,
                 "architectures": list(architectures)},
        "meta_train": {
            "meta_model_width": 4, "n_way": 3, "n_query": 2, "meta_batch_size": 2, "iterations": 6,
            "val_interval": 3, "val_episodes": 4, "checkpoint_interval": 3, "grid_snapshots": 2,
            "init": "random", "outer_lr": 0.01,
            "inversion": {"data_lr": 0.1},
            "curriculum": {"warmup": 1, "patience": 1, "adv_scale": 1.0},
        } | meta_train,
        "meta_test": {"inner_steps": 1},
    }


def _write_caches(config, name: str = "toy", channels: int = CHANNELS) -> None:
    size = config.datasets[name].image_size
    for split, n_classes, seed in (("train", 6, 0), ("val", 4, 1), ("test", 4, 2)):
        save_split(paths.dataset_cache(config, name, split), synthetic_split(n_classes, 6, size, channels, seed))


def _make_pool(root: Path, architectures=("conv4",), trained: bool = True, second: dict | None = None) -> Path:
    """Config, caches, teachers and manifest; ``second`` adds a dataset ``big`` with those settings."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    raw = _raw_config(root, architectures)
    if second is not None:
        raw["datasets"]["big"] = {"source": "folder", "path": str(root / "raw_big"), "image_size": second["size"]}
        raw["pool"]["datasets"].append("big")
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    _write_caches(config)
    if second is not None:
        _write_caches(config, "big", second["channels"])
    for spec in teacher_specs(config):
        if trained:
            train_teacher(config, spec.index)
        else:
            channels = CHANNELS if spec.dataset == "toy" else second["channels"]
            fake_checkpoint(spec, paths.teacher_path(config, spec.index), channels=channels, seed=spec.index)
    write_manifest(config)
    return path


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """A config over a 6-class toy dataset and its two trained 3-way conv4 teachers."""
    return _make_pool(tmp_path_factory.mktemp("pool"))


def _config(path: Path, *overrides: str):
    return load_config(path, list(overrides))


def _curve(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]


def _val(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "val.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------


def test_purer_writes_every_output_and_switches(pool, tmp_path, monkeypatch):
    out = tmp_path / "purer"
    summary = meta_train(_config(pool), "purer", 1, 0, out)
    for name in ("meta_model.pt", "last.pt", "checkpoint.pt", "summary.json", "config.resolved.yaml", "env.json"):
        assert (out / name).is_file(), name
    # grid_snapshots 2, plus the warm-up iteration (the images before the first reversed step)
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["grid_iter00001.png", "grid_iter00003.png",
                                                                 "grid_iter00006.png"]
    curve = _curve(out)
    assert [r["iteration"] for r in curve] == [1, 2, 3, 4, 5, 6]
    assert set(curve[0]) == {"iteration", "seconds", "loss_outer", "train_accuracy", "switch", "loss_inv_total",
                             "loss_ce", "loss_tv", "loss_bn", "loss_l2", "loss_adv", "adv_grad_ratio_median",
                             "adv_grad_ratio_max", "teacher_ce", "teacher_ce_max"}
    assert all(len(r["teacher_ce"]) == 2 and r["teacher_ce_max"] == max(r["teacher_ce"]) for r in curve)
    assert all((r["adv_grad_ratio_median"] is not None) == r["switch"] for r in curve)
    assert summary["switch_iterations"] == [r["iteration"] for r in curve if r["switch"]]
    assert summary["reversed_strength"] == {"min": 1.0, "median": 1.0, "max": 1.0}  # equal weights, adv_scale 1
    # warm-up 1: the switch turns on after iteration 1, so iteration 2's data step is reversed
    assert curve[0]["switch"] is False and curve[1]["switch"] is True
    assert all((r["loss_adv"] is not None) == r["switch"] for r in curve)
    assert all(r["loss_adv"] < 0 for r in curve if r["switch"])
    assert all(0 <= r["train_accuracy"] <= 100 for r in curve)
    assert summary["switch_events"] == sum(r["switch"] for r in curve) >= 2  # patience 1: again within 3 steps
    assert [v["iteration"] for v in _val(out)] == [3, 6]
    best = max(_val(out), key=lambda v: v["accuracy"])
    assert (summary["best_val_accuracy"], summary["best_iteration"]) == (best["accuracy"], best["iteration"])

    model, params, info = load_meta_model(out / "meta_model.pt")
    assert (info["method"], info["n_shot"], info["seed"], info["iteration"]) == ("purer", 1, 0, best["iteration"])
    assert info["learner"] == {"algorithm": "maml", "inner_lr": 0.01, "first_order": False}
    assert (info["n_way"], info["input_size"], info["channels"], info["arch_kwargs"]) == (
        3, 16, 1, {"width": 4, "adaptive_pool": False})
    assert info["mean"] == [0.5] and info["std"] == [0.25]
    last = torch.load(out / "last.pt", weights_only=False)
    assert last["iteration"] == 6

    # a finished run is not redone
    monkeypatch.setattr(engine_module, "train_iteration", lambda *a: pytest.fail("redone"))
    assert meta_train(_config(pool), "purer", 1, 0, out) == summary


def test_ei_never_switches(pool, tmp_path):
    out = tmp_path / "ei"
    summary = meta_train(_config(pool, "meta_train.iterations=4"), "ei", 1, 0, out)
    curve = _curve(out)
    assert len(curve) == 4 and summary["switch_events"] == 0
    assert not any(r["switch"] for r in curve) and all(r["loss_adv"] is None for r in curve)


def _teacher_params(config) -> list[dict[str, torch.Tensor]]:
    entries = load_manifest(paths.manifest_path(config)).teachers
    return [torch.load(e.checkpoint, weights_only=False)["state_dict"] for e in entries]


def test_random_and_average_are_not_trained(pool, tmp_path):
    config = _config(pool)
    for method in ("random", "average"):
        summary = meta_train(config, method, 1, 0, tmp_path / method)
        assert summary["iterations"] == 0 and summary["switch_events"] == 0
        assert (tmp_path / method / "curve.jsonl").read_text() == ""
        assert [v["iteration"] for v in _val(tmp_path / method)] == [0]
        assert not (tmp_path / method / "checkpoint.pt").exists()
    average = torch.load(tmp_path / "average" / "meta_model.pt", weights_only=False)["state_dict"]
    teachers = _teacher_params(config)
    for name in ("encoder.0.weight", "encoder.1.bias", "head.weight", "head.bias"):
        torch.testing.assert_close(average[name], (teachers[0][name] + teachers[1][name]) / 2)
    assert set(average) == {n for n in teachers[0] if "running" not in n and "num_batches" not in n}
    random_init = torch.load(tmp_path / "random" / "meta_model.pt", weights_only=False)["state_dict"]
    again = meta_train(config, "random", 1, 0, tmp_path / "random2")
    assert again["best_val_accuracy"] == json.loads((tmp_path / "random" / "summary.json").read_text())["best_val_accuracy"]
    other = torch.load(tmp_path / "random2" / "meta_model.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(random_init[k], other[k]) for k in random_init)


def test_average_init_starts_purer_from_fedavg(pool, tmp_path, monkeypatch):
    config = _config(pool, "meta_train.init=average", "meta_train.iterations=1")
    captured = {}
    original = engine_module.meta_step

    def spy(run, state):
        captured.setdefault("head", state.params["head.weight"].detach().clone())
        return original(run, state)

    monkeypatch.setattr(engine_module, "meta_step", spy)
    meta_train(config, "ei", 1, 0, tmp_path / "ei")
    teachers = _teacher_params(config)
    torch.testing.assert_close(captured["head"], (teachers[0]["head.weight"] + teachers[1]["head.weight"]) / 2)


def test_average_refuses_a_mixed_pool(tmp_path):
    path = _make_pool(tmp_path / "mixed", architectures=("conv4", "resnet10"), trained=False)
    with pytest.raises(ConfigError, match=r"average needs a pool of one architecture matching the meta model "
                                          r"\(conv4\); this pool has conv4 ×1, resnet10 ×1$"):
        meta_train(_config(path), "average", 1, 0, tmp_path / "avg")
    with pytest.raises(ConfigError, match=r"resnet10 ×1; set meta_train.init: random"):
        meta_train(_config(path, "meta_train.init=average"), "purer", 1, 0, tmp_path / "purer")
    assert not (tmp_path / "avg").exists() and not (tmp_path / "purer").exists()  # nothing written


def test_average_names_a_width_mismatch(pool, tmp_path):
    with pytest.raises(ConfigError, match=r"\(conv4 width=8\); this pool has conv4 width=4 ×2"):
        meta_train(_config(pool, "meta_train.meta_model_width=8"), "average", 1, 0, tmp_path / "avg")


def _kill_after_checkpoint(monkeypatch, at_iteration: int) -> None:
    original = train_module.ckpt.save_checkpoint

    def save_then_die(path, state, fingerprint):
        original(path, state, fingerprint)
        if state["iteration"] == at_iteration:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train_module.ckpt, "save_checkpoint", save_then_die)


def test_resume_ends_exactly_like_an_uninterrupted_run(pool, tmp_path, monkeypatch):
    config = _config(pool, "meta_train.iterations=8", "meta_train.checkpoint_interval=4", "meta_train.val_interval=2")
    straight = tmp_path / "straight"
    meta_train(config, "purer", 1, 0, straight)

    resumed = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        _kill_after_checkpoint(patch, 4)
        with pytest.raises(KeyboardInterrupt):
            meta_train(config, "purer", 1, 0, resumed)
    assert len(_curve(resumed)) == 4 and not (resumed / "summary.json").exists()
    # lines a killed run wrote after its last checkpoint must not survive the resume
    for name, record in (("curve.jsonl", _curve(straight)[4]), ("val.jsonl", {"iteration": 5, "accuracy": 1.0})):
        with (resumed / name).open("a") as handle:
            handle.write(json.dumps(record) + "\n")
    summary = meta_train(config, "purer", 1, 0, resumed)
    assert summary["resumed_from"] == 4

    for name in ("meta_model.pt", "last.pt"):
        a = torch.load(straight / name, weights_only=False)
        b = torch.load(resumed / name, weights_only=False)
        assert a["iteration"] == b["iteration"] and a["val_accuracy"] == b["val_accuracy"]
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert _val(resumed) == _val(straight)
    drop = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert drop(_curve(resumed)) == drop(_curve(straight))


def test_changed_config_does_not_resume(pool, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _kill_after_checkpoint(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            meta_train(_config(pool), "purer", 1, 0, out)
    # the killed run's meta_model.pt is kept: a run of another configuration is refused, --restart discards it
    with pytest.raises(CheckpointError, match=f"{out} holds meta_model.pt of a run with another configuration"):
        meta_train(_config(pool, "meta_train.outer_lr=0.02"), "purer", 1, 0, out)
    summary = meta_train(_config(pool, "meta_train.outer_lr=0.02"), "purer", 1, 0, out, restart=True)
    assert summary["resumed_from"] is None and len(_curve(out)) == 6


def _nan_at(monkeypatch, iteration: int) -> None:
    """Make the pool's loss (vmapped or loop, whichever the trainer picks) NaN at one call."""
    calls = {"n": 0}

    def poisoned(original):
        def maybe_nan(self, *args, **kwargs):
            total, terms = original(self, *args, **kwargs)
            calls["n"] += 1
            if calls["n"] == iteration:
                total = total * float("nan")
                terms = dict(terms) | {"bn": terms["bn"] * float("nan"), "total": terms["total"] * float("nan")}
            return total, terms

        return maybe_nan

    for name in ("inversion_loss", "reference_inversion_loss"):
        monkeypatch.setattr(ResidentPool, name, poisoned(getattr(ResidentPool, name)))


def test_nonfinite_data_loss_stops_with_the_iteration(pool, tmp_path, monkeypatch):
    _nan_at(monkeypatch, 2)
    with pytest.raises(PurerError, match=r"not finite at meta-iteration 2 \(term bn\).*on_nonfinite: skip"):
        meta_train(_config(pool), "purer", 1, 0, tmp_path / "stop")
    assert not (tmp_path / "stop" / "summary.json").exists()


def test_nonfinite_data_loss_can_be_skipped(pool, tmp_path, monkeypatch):
    _nan_at(monkeypatch, 2)
    out = tmp_path / "skip"
    summary = meta_train(_config(pool, "meta_train.inversion.on_nonfinite=skip"), "purer", 1, 0, out)
    curve = _curve(out)
    assert summary["iterations"] == 6 and len(curve) == 6
    assert curve[1]["loss_inv_total"] is None and curve[1]["switch"] is False
    assert curve[2]["switch"] is True  # the reversed step is retried at the next data step
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(d["images"]).all() for d in checkpoint["data"]["domains"].values())


def test_unknown_method_and_cli(pool, tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"unknown method 'maml' \(valid: \['purer', 'ei', 'random', 'average'\]\)"):
        meta_train(_config(pool), "maml", 1, 0, tmp_path / "x")
    out = tmp_path / "cli"
    code = main(["meta-train", "--config", str(pool), "--method", "random", "--n-shot", "1", "--out", str(out)])
    assert code == 0 and (out / "meta_model.pt").is_file()
    assert json.loads((out / "summary.json").read_text())["seed"] == 0
    shutil.rmtree(out)


@pytest.mark.parametrize("learner", ["algorithm=anil", "algorithm=protonet", "first_order=true"])
def test_other_meta_learners_train(pool, tmp_path, learner):
    config = _config(pool, "meta_train.iterations=2", f"meta_train.learner.{learner}")
    summary = meta_train(config, "purer", 1, 0, tmp_path / "run")
    assert summary["iterations"] == 2 and summary["switch_events"] == 1
    info = torch.load(tmp_path / "run" / "meta_model.pt", weights_only=False)["learner"]
    key, _, value = learner.partition("=")
    assert str(info[key]).lower() == value


def test_pool_of_two_sizes_and_channel_counts(tmp_path):
    """A 16 px grey and a 20 px RGB dataset: two image domains, a global-pool meta model."""
    path = _make_pool(tmp_path / "mh", trained=False, second={"size": 20, "channels": 3})
    out = tmp_path / "run"
    summary = meta_train(_config(path, "meta_train.iterations=3", "meta_train.grid_snapshots=1"), "purer", 1, 0, out)
    assert summary["n_teachers"] == 4 and summary["iterations"] == 3
    model = torch.load(out / "meta_model.pt", weights_only=False)
    assert (model["input_size"], model["channels"], model["arch_kwargs"]["adaptive_pool"]) == (16, 1, True)
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["grid_iter00001.png", "grid_iter00001_20px-3ch.png",
                                                                 "grid_iter00003.png", "grid_iter00003_20px-3ch.png"]


def test_grid_iterations_are_spread_and_include_the_end():
    assert grid_iterations(60000, 3) == {20000, 40000, 60000}
    assert grid_iterations(2, 5) == {1, 2}
    assert grid_iterations(0, 3) == set()


@pytest.mark.parametrize(("mode", "expected"), [("vmap", "inversion_loss"), ("loop", "reference_inversion_loss"),
                                              ("auto", "reference_inversion_loss")])
def test_teacher_batching_picks_the_inversion_path(pool, tmp_path, monkeypatch, mode, expected):
    """vmap and loop are the same maths (tests/test_batched_pool.py); here: the setting is honoured (CPU)."""
    calls = []
    for name in ("inversion_loss", "reference_inversion_loss"):
        original = getattr(ResidentPool, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ResidentPool, name, counted)
    config = _config(pool, "meta_train.iterations=2", f"meta_train.inversion.teacher_batching={mode}")
    meta_train(config, "purer", 1, 0, tmp_path / mode)
    assert calls == [expected, expected]


def test_finite_flag_catches_nan_inf_and_overflow():
    def flag(loss, grads):
        result = engine_module.finite_flag(loss, grads)
        assert result.dtype == torch.bool and result.dim() == 0  # stays a device tensor (no sync)
        return bool(result)

    finite = torch.ones(3, 4)
    assert flag(torch.tensor(1.0), (finite, None))
    for bad in (float("nan"), float("inf"), float("-inf")):
        grad = finite.clone()
        grad[1, 2] = bad
        assert not flag(torch.tensor(1.0), (finite, grad))
    assert not flag(torch.tensor(float("nan")), (finite,))
    # +inf and -inf in one tensor sum to NaN: still caught
    mixed = finite.clone()
    mixed[0, 0], mixed[0, 1] = float("inf"), float("-inf")
    assert not flag(torch.tensor(1.0), (mixed,))
    # finite elements whose sum overflows fp32 count as non-finite
    assert not flag(torch.tensor(1.0), (torch.full((4,), 3e38),))
    assert flag(torch.tensor(1.0), (torch.full((4,), 3e37, dtype=torch.bfloat16),))


def test_found_inf_skips_the_image_step_on_the_device():
    """The images' fused Adam with ``found_inf = 1`` leaves images, moments and step count alone;
    with 0 it steps as usual."""
    images = torch.nn.Parameter(torch.randn(4, 1, 2, 2))
    optimizer = torch.optim.Adam([images], lr=0.25, fused=True)
    images.grad = torch.ones_like(images)
    optimizer.found_inf = torch.tensor(0.0)
    optimizer.step()
    after_one = images.detach().clone()
    state = {k: v.clone() for k, v in optimizer.state[images].items()}
    images.grad = torch.full_like(images, float("nan"))
    optimizer.found_inf = torch.tensor(1.0)
    optimizer.step()
    assert torch.equal(images.detach(), after_one)
    for key, value in optimizer.state[images].items():
        assert torch.equal(value, state[key]), key
    assert float(optimizer.state[images]["step"]) == 1.0


def test_compile_without_a_cpp_compiler_is_a_clear_error(monkeypatch):
    runtime_module.require_compiler(False, torch.device("cpu"))  # nothing to check
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(runtime_module.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match=r"^compile: true needs a C\+\+ compiler on CPU .*set compile: false$"):
        runtime_module.require_compiler(True, torch.device("cpu"))
    monkeypatch.setattr(runtime_module.shutil, "which", lambda name: "/usr/bin/g++" if name == "g++" else None)
    runtime_module.require_compiler(True, torch.device("cpu"))


def test_the_fingerprint_leaves_out_exactly_the_neutral_keys(pool):
    import dataclasses

    from purer.config import NEUTRAL_META_TRAIN_KEYS, MetaTrainConfig
    from purer.meta.checkpoint import fingerprint

    assert set(NEUTRAL_META_TRAIN_KEYS) <= {f.name for f in dataclasses.fields(MetaTrainConfig)}
    base = fingerprint(_config(pool), "purer", 1, 0, [])
    for neutral in ("checkpoint_interval=7", "grid_snapshots=1", "snapshots=true"):
        assert fingerprint(_config(pool, f"meta_train.{neutral}"), "purer", 1, 0, []) == base, neutral
    assert fingerprint(_config(pool, "meta_train.val_interval=7"), "purer", 1, 0, []) != base
