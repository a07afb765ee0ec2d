"""DVC's metrics and plot data of an experiment (purer/report/dvc_export.py), on a hand-made results tree."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from purer.report.dvc_export import main


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _metrics(run: Path, variant: str, accuracy: float, ci95: float) -> None:
    _write(run / "test" / "glyphs" / variant / "metrics.json", json.dumps({"accuracy": accuracy, "ci95": ci95}))


@pytest.fixture
def experiment(tmp_path, monkeypatch) -> Path:
    """results/x/glyphs/{purer,ei}/5w1s/seed{0,1}: purer plain + ICFIL, ei plain; purer curves."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "x.yaml", yaml.safe_dump({"experiment": "x", "results_dir": "results"}))
    root = tmp_path / "results" / "x" / "glyphs"
    for seed, (purer, icfil, ei) in enumerate([(40.0, 50.0, 30.0), (44.0, 54.0, 34.0)]):
        _metrics(root / "purer" / "5w1s" / f"seed{seed}", "plain", purer, 2.0)
        _metrics(root / "purer" / "5w1s" / f"seed{seed}", "icfil", icfil, 2.0)
        _metrics(root / "ei" / "5w1s" / f"seed{seed}", "plain", ei, 2.0)
    run = root / "purer" / "5w1s" / "seed0"
    _write(run / "curve.jsonl", "".join(json.dumps({"iteration": i, "train_accuracy": 10.0 * i}) + "\n" for i in (1, 2)))
    _write(run / "val.jsonl", json.dumps({"iteration": 2, "accuracy": 30.0, "ci95": 5.0}) + "\n")
    return tmp_path / "results" / "x"


def test_metrics_are_the_headline(experiment):
    """Four numbers at most per setting: PURER's accuracy (mean of 40 and 44), no paired difference
    here (the hand-made results have no per-episode accuracies); tests/test_dvc_readable.py has more."""
    assert main(["--config", "x.yaml"]) == 0
    metrics = json.loads((experiment / "metrics.json").read_text(encoding="utf-8"))
    assert metrics == {"1s": {"purer": 42.0}}


def test_plot_data_names_the_interval_and_the_chance_level(experiment):
    main(["--config", "x.yaml"])
    accuracy = pd.read_csv(experiment / "plots" / "accuracy.csv")
    row = accuracy[accuracy["variant"] == "purer+ICFIL-reconstruction"].iloc[0]
    assert (row["setting"], row["accuracy"], row["chance"]) == ("5w1s", 52.0, 20.0)
    assert row["interval"] == "95% t-interval across 2 seeds"
    assert row["ci_low"] == pytest.approx(52.0 - 25.41, abs=0.01)
    train = pd.read_csv(experiment / "plots" / "train_curves.csv")
    assert list(train["series"]) == ["purer 5w1s seed0"] * 2 and list(train["train_accuracy"]) == [10.0, 20.0]
    val = pd.read_csv(experiment / "plots" / "val_curves.csv")
    assert val.iloc[0][["val_accuracy", "ci_low", "ci_high"]].tolist() == [30.0, 25.0, 35.0]


def test_a_rerun_removes_a_variant_that_disappeared(experiment):
    main(["--config", "x.yaml"])
    for path in (experiment / "glyphs" / "ei").glob("**/metrics.json"):
        path.unlink()
    main(["--config", "x.yaml"])
    assert "ei" not in set(pd.read_csv(experiment / "plots" / "accuracy.csv")["variant"])
