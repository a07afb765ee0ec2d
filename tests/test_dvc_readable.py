"""`dvc metrics show` and `dvc exp show` stay readable: a four-number headline per experiment
(purer/report/dvc_export.py) and params that vary between the shipped experiments (dvc.yaml)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from workflow_support import REPO, tool_env

from purer.report.dvc_export import main


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")


@pytest.fixture
def experiment(tmp_path, monkeypatch) -> Path:
    """purer and ei, 5-way 1- and 5-shot, two seeds, per-episode accuracies (so they pair)."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "x.yaml", yaml.safe_dump({"experiment": "x", "results_dir": "results"}))
    root = tmp_path / "results" / "x" / "glyphs"
    episodes = {  # (method, shot, seed) -> per-episode accuracies of 4 shared episodes
        ("purer", 1, 0): [40, 60, 40, 60], ("ei", 1, 0): [30, 50, 40, 40],  # differences 10, 10, 0, 20
        ("purer", 1, 1): [50, 50, 50, 50], ("ei", 1, 1): [40, 40, 40, 40],  # 10
        ("purer", 5, 0): [70, 70, 70, 70], ("ei", 5, 0): [75, 75, 75, 75],  # -5
        ("purer", 5, 1): [80, 80, 80, 80], ("ei", 5, 1): [85, 85, 85, 85],  # -5
    }
    for (method, shot, seed), accuracies in episodes.items():
        mean = sum(accuracies) / len(accuracies)
        _write(root / method / f"5w{shot}s" / f"seed{seed}" / "test" / "glyphs" / "plain" / "metrics.json",
               {"accuracy": mean, "ci95": 1.0, "accuracies": accuracies, "episodes_digest": "same"})
    # a manual run (purer/manual.py) is never part of the headline
    _write(tmp_path / "results" / "x" / "manual" / "abc" / "glyphs" / "purer" / "5w1s" / "seed0" / "test" / "glyphs"
           / "plain" / "metrics.json", {"accuracy": 99.0, "ci95": 1.0, "accuracies": [99.0] * 4})
    return tmp_path / "results" / "x"


def test_the_headline_is_purers_accuracy_and_the_paired_difference(experiment):
    assert main(["--config", "x.yaml"]) == 0
    metrics = json.loads((experiment / "metrics.json").read_text(encoding="utf-8"))
    # 1-shot: PURER mean of 50 and 50; paired difference mean over seeds of 10 and 10
    assert metrics == {"1s": {"purer": 50.0, "purer-ei": 10.0}, "5s": {"purer": 75.0, "purer-ei": -5.0}}


def test_other_ways_and_several_datasets_are_named():
    import pandas as pd

    from purer.report.dvc_export import short_setting

    row = pd.Series({"n_way": 10, "n_shot": 1, "dataset": "cifar-fs"})
    assert short_setting(row, False) == "10w1s" and short_setting(row, True) == "cifar-fs.10w1s"


def test_dvc_metrics_show_fits_80_columns():
    """The committed default metrics as DVC prints them (one header line, one row)."""
    result = subprocess.run(["dvc", "metrics", "show", "results/default/metrics.json"], cwd=REPO, env=tool_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line.rstrip() for line in result.stdout.splitlines() if line.strip()]
    assert lines[0].split() == ["Path", "1s.purer", "1s.purer-ei", "5s.purer", "5s.purer-ei"]
    assert lines[1].split()[0] == "results/default/metrics.json" and len(lines) == 2
    assert max(map(len, lines)) <= 80


def test_dvc_exp_show_has_only_the_headline_columns():
    """No deps or params columns (tests/test_dvc_consistency.py): the experiment, its time and 4 metrics."""
    result = subprocess.run(["dvc", "exp", "show", "--csv"], cwd=REPO, env=tool_env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0].split(",")
    data = [name for name in header if name not in ("Experiment", "rev", "typ", "Created", "parent", "State", "Executor")]
    assert data == ["1s.purer", "1s.purer-ei", "5s.purer", "5s.purer-ei"]
