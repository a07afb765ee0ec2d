"""Sweeps: the member is selected per shot on validation, never on test numbers."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from purer import paths
from purer.cli.main import main
from purer.config import load_config
from purer.errors import DataError
from purer.io import write_json
from purer.report.sweeps import select, validation_scores

# validation prefers s1 at 1-shot and s3 at 5-shot; the test split says the opposite
VAL = {("purer-s1", 1): [60.0, 62.0], ("purer-s3", 1): [59.0, 58.0],
       ("purer-s1", 5): [70.0, 70.0], ("purer-s3", 5): [71.0, 70.5]}
TEST = {("purer-s1", 1): 40.0, ("purer-s3", 1): 50.0, ("purer-s1", 5): 55.0, ("purer-s3", 5): 45.0,
        ("ei", 1): 42.0, ("ei", 5): 50.0}


def _write_results(tmp_path):
    raw = {"experiment": "sw", "results_dir": str(tmp_path / "results"),
           "grid": {"methods": ["random"], "shots": [1, 5], "seeds": [0, 1], "icfil": [False], "icfil_methods": [],
                    "arms": {"ei": {"method": "ei"},
                             "purer-s1": {"method": "purer", "set": {"curriculum.adv_scale": 1.0}},
                             "purer-s3": {"method": "purer", "set": {"curriculum.adv_scale": 3.0}}},
                    "sweeps": {"purer-equal": ["purer-s1", "purer-s3"]},
                    "pairs": [["purer-equal", "ei"]]},
           "report": {"formats": ["md", "csv"], "figure_formats": ["png"]}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    for name in ("random", "ei", "purer-s1", "purer-s3"):
        for n_shot in (1, 5):
            for seed in (0, 1):
                run = paths.run_dir(config, name, n_shot, seed)
                val = VAL.get((name, n_shot), [30.0, 30.0])[seed]
                write_json(run / "summary.json", {"method": name, "best_val_accuracy": val, "best_iteration": 3})
                test = TEST.get((name, n_shot), 20.0) + seed
                accuracies = [test - 1.0, test + 1.0]
                write_json(paths.test_dir(run, "glyphs", "plain") / "metrics.json", {
                    "method": name, "dataset": "glyphs", "n_way": 5, "n_shot": n_shot, "seed": seed,
                    "accuracy": test, "ci95": 1.0, "accuracies": accuracies, "episodes_digest": "e",
                    "test_variant": "plain", "icfil": False, "selection": "val", "episodes": 2})
    return path, config


def test_select_picks_the_best_validation_score_per_shot_and_the_first_on_ties():
    scores = pd.DataFrame([{"name": n, "n_shot": k, "seed": s, "val_accuracy": a}
                           for (n, k), values in VAL.items() for s, a in enumerate(values)])
    chosen = select({"sw": ["purer-s1", "purer-s3"]}, scores, 5)
    assert chosen[chosen["selected"]][["n_shot", "member"]].values.tolist() == [[1, "purer-s1"], [5, "purer-s3"]]
    assert chosen["val_score"].tolist() == [61.0, 58.5, 70.0, 70.75]
    tie = scores.assign(val_accuracy=50.0)
    assert select({"sw": ["purer-s3", "purer-s1"]}, tie, 5).query("selected")["member"].tolist() == ["purer-s3"] * 2


def test_the_report_selects_on_validation_where_the_test_split_disagrees(tmp_path):
    path, config = _write_results(tmp_path)
    assert main(["report", "--config", str(path)]) in (0, None)
    report = paths.report_dir(config)
    summary = json.loads((report / "summary.json").read_text())
    # 1-shot: s1 (validation 61 > 58.5) although s3 tests better; 5-shot: s3 (70.75 > 70) although s1 tests better
    assert summary["glyphs/5w1s/purer-equal"]["accuracy"] == pytest.approx(40.5)
    assert summary["glyphs/5w5s/purer-equal"]["accuracy"] == pytest.approx(45.5)
    assert summary["sweep/purer-equal/5w1s/purer-s1"] == {"val_score": 61.0, "n_seeds": 2, "selected": True}
    assert summary["sweep/purer-equal/5w5s/purer-s1"]["selected"] is False
    assert summary["glyphs/5w1s/purer-equal - ei"]["difference"] == pytest.approx(-2.0)  # (40 - 42 + 41 - 43) / 2
    assert summary["glyphs/5w1s/purer-equal"]["base_method"] == "purer"
    table = (report / "tables" / "sweeps.md").read_text()
    assert "| purer-equal | 5-way 1-shot | purer-s1 * | 61.00 | 0:60.0000;1:62.0000 |" in table
    assert "| purer-equal | 5-way 5-shot | purer-s1 | 70.00 |" in table
    assert "purer-equal (= purer-s1 on validation)" in (report / "tables" / "main.md").read_text()


def test_selection_never_reads_a_test_number(tmp_path):
    path, config = _write_results(tmp_path)
    for metrics in paths.experiment_dir(config).glob("**/metrics.json"):
        metrics.unlink()
    scores = validation_scores(config)
    assert select(config.grid.sweeps, scores, 5).query("selected")["member"].tolist() == ["purer-s1", "purer-s3"]


def test_a_member_without_its_run_summary_is_an_error(tmp_path):
    path, config = _write_results(tmp_path)
    (paths.run_dir(config, "purer-s3", 5, 1) / "summary.json").unlink()
    with pytest.raises(DataError, match=r"sweep member purer-s3: .*seed1/summary.json is missing"):
        validation_scores(config)
