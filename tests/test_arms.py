"""Named arms in the grid: config validation, run folders, resolution, the CLI and paired differences."""

from __future__ import annotations

import pandas as pd
import pytest

from purer import arms, grid, paths
from purer.cli.main import main
from purer.config import ExperimentConfig, arm_meta_train, from_dict, load_config
from purer.errors import ConfigError
from purer.report.aggregate import comparisons, paired_differences, summarise, summary_metrics
from purer.variants import grid_variants

ARMS = {
    "ei": {"method": "ei"},
    "ei-triangular": {"method": "ei", "set": {"inversion.teacher_weighting": "triangular"}},
    "purer-parity": {"method": "purer", "set": {"inversion.teacher_weighting": "triangular", "curriculum.adv_scale": 10.0}},
    "purer-s1": {"method": "purer", "set": {"curriculum.adv_scale": None, "curriculum.adv_strength": 1.0}},
}


def _config(**grid_keys) -> ExperimentConfig:
    return from_dict(ExperimentConfig, {"grid": {"methods": ["random", "average"], "shots": [1], "seeds": [0, 1],
                                                 "icfil_methods": ["purer", "random"]} | grid_keys}, "")


def _refused(tmp_path, grid_keys: dict) -> str:
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"grid": {"methods": ["random"]} | grid_keys}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).removeprefix(f"{path}: ")


def test_without_arms_the_grid_and_its_folders_are_as_before():
    config = ExperimentConfig()
    assert grid.grid_runs(config) == [(m, k, 0) for m in ("purer", "ei", "random", "average") for k in (1, 5)]
    assert paths.run_dir(config, "purer", 5, 0).as_posix() == "results/default/glyphs/purer/5w5s/seed0"
    assert arms.resolve(config, "ei").config is config and arms.resolve(config, "ei").method == "ei"


def test_arms_add_runs_in_folders_of_their_names_with_their_settings():
    config = _config(arms=ARMS)
    names = [name for name, _, seed in grid.grid_runs(config) if seed == 0]
    assert names == ["random", "average", "ei", "ei-triangular", "purer-parity", "purer-s1"]
    assert paths.run_dir(config, "purer-parity", 1, 1).as_posix() == "results/default/glyphs/purer-parity/5w1s/seed1"
    parity = arms.resolve(config, "purer-parity")
    assert parity.method == "purer" and parity.config.meta_train.inversion.teacher_weighting == "triangular"
    assert parity.config.meta_train.curriculum.adv_scale == 10.0 and parity.config.meta_train.outer_lr == 0.001
    s1 = arms.resolve(config, "purer-s1").config.meta_train.curriculum  # not re-checked against the other arms
    assert (s1.adv_scale, s1.adv_strength) == (None, 1.0)
    assert arm_meta_train(config, "ei") is config.meta_train  # no overrides: the experiment's meta_train
    assert arms.base_method(config, "ei-triangular") == "ei" and arms.base_method(config, "random") == "random"


def test_an_arm_gets_icfil_when_it_or_its_base_method_is_listed():
    config = _config(arms=ARMS, icfil_methods=["purer", "ei-triangular"])
    assert "icfil" in grid_variants(config, "purer-s1") and "icfil" in grid_variants(config, "ei-triangular")
    assert grid_variants(config, "ei") == ["plain"] and grid_variants(config, "random") == ["plain"]


def test_an_unknown_key_of_an_arm_is_refused_naming_the_arm_and_the_key(tmp_path):
    message = _refused(tmp_path, {"arms": {"p": {"method": "purer", "set": {"curriculum.adv_strenght": 1.0}}}})
    assert message.startswith("grid.arms.p.set: unknown key meta_train.curriculum.adv_strenght (valid keys in "
                              "meta_train.curriculum: ['adv_scale', 'adv_strength', 'patience', 'warmup', ")
    assert _refused(tmp_path, {"arms": {"p": {"method": "purer", "set": {"outer": 1}}}}).startswith(
        "grid.arms.p.set: unknown key meta_train.outer (valid keys in meta_train: [")
    assert _refused(tmp_path, {"arms": {"p": {"method": "purer", "set": {"curriculum": 1}}}}) == (
        "grid.arms.p.set: meta_train.curriculum is a section; set its keys one by one (e.g. curriculum.adv_scale)")
    assert _refused(tmp_path, {"arms": {"p": {"method": "purer", "set": {"outer_lr.x": 1}}}}).startswith(
        "grid.arms.p.set: unknown key meta_train.outer_lr.x (valid keys in meta_train: [")


def test_an_arms_settings_go_through_the_same_checks(tmp_path):
    both = _refused(tmp_path, {"arms": {"p": {"method": "purer", "set": {"curriculum.adv_strength": 1.0}}}})
    assert both.startswith("grid.arms.p.set: meta_train.curriculum.adv_scale / adv_strength: expected exactly one")
    assert _refused(tmp_path, {"arms": {"p": {"method": "purer", "set": {"outer_lr": -1}}}}) == (
        "grid.arms.p.set: meta_train.outer_lr: expected a positive number, got -1.0")
    assert _refused(tmp_path, {"arms": {"p": {"method": "purer", "set": {"iterations": True}}}}) == (
        "grid.arms.p.set: meta_train.iterations: expected an integer, got True")


@pytest.mark.parametrize("grid_keys, expected", [
    ({"arms": {"p": {"set": {}}}}, "grid.arms.p.method: expected a base method"),
    ({"arms": {"random": {"method": "random"}}}, "grid.arms.random: expected a name not also in grid.methods"),
    ({"arms": {"ei": {"method": "purer"}}}, "grid.arms.ei: expected a name that is not another base method"),
    ({"arms": {"a/b": {"method": "ei"}}}, "grid.arms: expected a name usable as one folder name"),
    ({"arms": {"p": {"method": "ei", "branch_from": "x"}}}, "grid.arms.p.branch_from: expected only on a purer arm"),
    ({"sweeps": {"s": ["nope"]}}, "grid.sweeps.s: expected distinct arm names of grid.arms"),
    ({"pairs": [["random", "nope"]]}, "grid.pairs: expected pairs [a, b] of methods, arms or sweeps"),
    ({"pairs": [["random"]]}, "grid.pairs: expected pairs [a, b]"),
    ({"icfil_methods": ["nope"]}, "grid.icfil_methods: expected methods"),
])
def test_bad_arms_sweeps_and_pairs_are_refused(tmp_path, grid_keys, expected):
    assert _refused(tmp_path, grid_keys).startswith(expected)


def test_the_cli_refuses_an_unknown_run_name_with_one_line(tmp_path, capsys):
    assert main(["meta-train", "--method", "purer-x", "--n-shot", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("purer meta-train: error: --method purer-x: expected a method (purer, ei, random, average) "
                   "or an arm of grid.arms (defined: [])")
    assert not paths.run_dir(ExperimentConfig(), "purer-x", 1, 0).exists()


def _metrics(method: str, seed: int, accuracies: list[float], weighting: str = "equal") -> dict:
    return {"method": method, "base_method": method.split("-")[0], "dataset": "glyphs", "n_way": 5, "n_shot": 1,
            "seed": seed, "accuracy": sum(accuracies) / len(accuracies), "ci95": 1.0, "accuracies": accuracies,
            "episodes_digest": "d", "test_variant": "plain", "icfil": False, "variant": method, "pool": "glyphs",
            "experiment": "t", "scenario": "glyphs", "learner": "maml", "teacher_weighting": weighting,
            "n_teachers": 4, "selection": "val", "episodes": 2, "best_on_test_accuracy": float("nan"),
            "best_on_test_ci95": float("nan"), "path": f"{method}/{seed}"}


def test_configured_pairs_replace_purer_minus_ei():
    frame = pd.DataFrame([_metrics(m, s, acc) for m, s, acc in [
        ("purer", 0, [60.0, 40.0]), ("ei", 0, [50.0, 40.0]), ("purer-s1", 0, [70.0, 50.0]),
        ("purer", 1, [60.0, 60.0]), ("ei", 1, [50.0, 60.0]), ("purer-s1", 1, [70.0, 70.0])]])
    assert comparisons(frame) == [(("purer", "plain"), ("ei", "plain"))]
    differences = paired_differences(frame, [["purer-s1", "ei"], ["purer-s1", "purer"]])
    assert list(zip(differences["a_method"], differences["b_method"], strict=True)) == [("purer-s1", "ei"), ("purer-s1", "purer")]
    # per seed: (20 + 10) / 2 = 15 and (20 + 10) / 2 = 15 -> 15 with zero spread; vs purer: 10 and 10
    assert differences["difference"].tolist() == [15.0, 10.0] and differences["seed_differences"].iloc[0] == "0:15.0000;1:15.0000"


def test_summary_metrics_name_the_base_method_of_an_arm():
    frame = pd.DataFrame([_metrics("purer-s1", 0, [70.0, 50.0]), _metrics("ei", 0, [50.0, 50.0])])
    frame.loc[frame["method"] == "ei", "base_method"] = "ei"
    out = summary_metrics(summarise(frame))
    assert out["glyphs/5w1s/purer-s1"]["base_method"] == "purer" and "base_method" not in out["glyphs/5w1s/ei"]
