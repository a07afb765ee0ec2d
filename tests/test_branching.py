"""Branching a PURER arm from its EI trunk's warm-up state equals running it from scratch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from test_meta_train import _make_pool

from purer import paths
from purer.arms import branch_differences, check_branch
from purer.cli.main import main
from purer.config import load_config
from purer.errors import ConfigError
from purer.io import load_torch
from purer.meta.branch import WARMUP_CHECKPOINT

TIMING = ("seconds",)


def _config(root: Path, arms: dict, **curriculum) -> Path:
    path = _make_pool(root)
    raw = yaml.safe_load(path.read_text())
    raw["meta_train"]["curriculum"] |= {"warmup": 3, "patience": 1, "adv_scale": 1.0} | curriculum
    raw["grid"] = {"methods": ["random"], "shots": [1], "seeds": [0], "arms": arms}
    path.write_text(yaml.safe_dump(raw))
    return path


def _train(path: Path, name: str) -> Path:
    assert main(["meta-train", "--config", str(path), "--method", name, "--n-shot", "1", "--seed", "0"]) in (0, None)
    return paths.run_dir(load_config(path), name, 1, 0)


def _lines(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


@pytest.fixture(scope="module")
def branched(tmp_path_factory):
    """A trunk EI run, a PURER arm branched from it and the same PURER arm from scratch."""
    root = tmp_path_factory.mktemp("branch")
    arms = {"ei": {"method": "ei"}, "purer-b": {"method": "purer", "branch_from": "ei"},
            "purer-s": {"method": "purer"}}
    path = _config(root, arms)
    return path, _train(path, "ei"), _train(path, "purer-b"), _train(path, "purer-s")


def test_the_trunk_saves_its_warmup_state_and_a_plain_ei_run_does_not(branched):
    path, trunk, _, _ = branched
    saved = load_torch(trunk / WARMUP_CHECKPOINT, "checkpoint")
    assert saved["iteration"] == 3 and saved["switch"]["enabled"] is False
    assert not (paths.run_dir(load_config(path), "purer-s", 1, 0) / WARMUP_CHECKPOINT).exists()


def test_a_branched_run_equals_the_run_from_scratch(branched):
    _, trunk, branch, scratch = branched
    for name in ("meta_model.pt", "last.pt"):
        a, b = torch.load(branch / name, weights_only=True), torch.load(scratch / name, weights_only=True)
        assert a["method"] == b["method"] == "purer" and a["iteration"] == b["iteration"]
        for key in a["state_dict"]:
            torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=1e-6)
    assert _lines(branch / "curve.jsonl") == _lines(scratch / "curve.jsonl")
    assert _lines(branch / "val.jsonl") == _lines(scratch / "val.jsonl")
    assert any(r["switch"] for r in _lines(scratch / "curve.jsonl"))  # the switch acted after the warm-up
    grids = sorted(p.name for p in (scratch / "grids").glob("*.png"))
    assert grids == sorted(p.name for p in (branch / "grids").glob("*.png")) and grids
    for name in grids:
        assert (branch / "grids" / name).read_bytes() == (scratch / "grids" / name).read_bytes()
    a, b = torch.load(branch / "checkpoint.pt", weights_only=False), torch.load(scratch / "checkpoint.pt", weights_only=False)
    torch.testing.assert_close(a["data"], b["data"], rtol=0, atol=1e-6)  # the final images
    summary = json.loads((branch / "summary.json").read_text())
    assert summary["branched_from"] == {"run": str(trunk), "iteration": 3}
    assert summary["switch_iterations"] == json.loads((scratch / "summary.json").read_text())["switch_iterations"]


def test_a_branch_differing_before_the_warmup_is_refused(tmp_path):
    arms = {"ei": {"method": "ei"}, "purer-b": {"method": "purer", "branch_from": "ei",
                                                 "set": {"inversion.data_lr": 0.2, "curriculum.adv_scale": 5.0}}}
    path = _config(tmp_path, arms)
    with pytest.raises(ConfigError, match=r"grid.arms.purer-b.branch_from: ei: the two runs differ before the "
                                          r"warm-up in meta_train.inversion.data_lr \("):
        check_branch(load_config(path), "purer-b")
    assert main(["meta-train", "--config", str(path), "--method", "purer-b", "--n-shot", "1"]) == 2
    assert not paths.run_dir(load_config(path), "purer-b", 1, 0).exists()


def test_strength_patience_and_length_may_differ_but_not_the_warmup():
    from purer.config import CurriculumConfig, MetaTrainConfig

    trunk = MetaTrainConfig(iterations=100, curriculum=CurriculumConfig(warmup=10))
    branch = MetaTrainConfig(iterations=50, curriculum=CurriculumConfig(adv_scale=None, adv_strength=3.0, warmup=10,
                                                                         patience=2))
    assert branch_differences(trunk, branch) == []
    moved = MetaTrainConfig(iterations=100, curriculum=CurriculumConfig(warmup=11))
    assert branch_differences(trunk, moved) == ["curriculum.warmup"]
    same = MetaTrainConfig(iterations=100, curriculum=CurriculumConfig(warmup=None, warmup_fraction=0.1))
    assert branch_differences(trunk, same) == []


def test_a_trunk_shorter_than_the_warmup_is_refused(tmp_path):
    arms = {"ei": {"method": "ei", "set": {"iterations": 2}}, "purer-b": {"method": "purer", "branch_from": "ei"}}
    path = _config(tmp_path, arms)
    with pytest.raises(ConfigError, match=r"the trunk runs 2 meta-iterations, fewer than the warm-up \(3\)"):
        check_branch(load_config(path), "purer-b")


def test_branch_from_must_name_an_ei_run(tmp_path):
    arms = {"p": {"method": "purer"}, "purer-b": {"method": "purer", "branch_from": "p"}}
    with pytest.raises(ConfigError, match=r"grid.arms.purer-b.branch_from: expected an ei arm"):
        _config(tmp_path, arms) and load_config(tmp_path / "config.yaml")


def test_a_run_that_becomes_a_trunk_is_rerun_to_save_its_warmup_state(tmp_path):
    path = _config(tmp_path, {"ei": {"method": "ei"}})
    trunk = _train(path, "ei")
    assert not (trunk / WARMUP_CHECKPOINT).exists()
    first = json.loads((trunk / "summary.json").read_text())
    raw = yaml.safe_load(path.read_text())
    raw["grid"]["arms"]["purer-b"] = {"method": "purer", "branch_from": "ei"}
    path.write_text(yaml.safe_dump(raw))
    _train(path, "ei")
    assert load_torch(trunk / WARMUP_CHECKPOINT, "checkpoint")["iteration"] == 3
    again = json.loads((trunk / "summary.json").read_text())
    assert again["best_val_accuracy"] == first["best_val_accuracy"] and again["resumed_from"] is None
    branch = _train(path, "purer-b")
    assert json.loads((branch / "summary.json").read_text())["branched_from"]["iteration"] == 3


def test_a_killed_branch_resumes_from_its_own_checkpoint(tmp_path, monkeypatch):
    from purer.meta import engine

    arms = {"ei": {"method": "ei"}, "purer-s": {"method": "purer"},
            "purer-b": {"method": "purer", "branch_from": "ei", "set": {"checkpoint_interval": 1}}}
    path = _config(tmp_path, arms)
    _train(path, "ei")
    scratch = _train(path, "purer-s")
    real = engine.train_iteration

    def killed_at_5(run, state, iteration):
        if iteration == 5:
            raise KeyboardInterrupt
        return real(run, state, iteration)

    monkeypatch.setattr(engine, "train_iteration", killed_at_5)
    assert main(["meta-train", "--config", str(path), "--method", "purer-b", "--n-shot", "1", "--seed", "0"]) not in (0, None)
    monkeypatch.setattr(engine, "train_iteration", real)
    branch = _train(path, "purer-b")
    summary = json.loads((branch / "summary.json").read_text())
    assert summary["resumed_from"] == 4 and summary["branched_from"]["iteration"] == 3
    assert _lines(branch / "curve.jsonl") == _lines(scratch / "curve.jsonl")
    a, b = torch.load(branch / "last.pt", weights_only=True), torch.load(scratch / "last.pt", weights_only=True)
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=1e-6)
