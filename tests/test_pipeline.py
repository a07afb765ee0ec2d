"""The pipeline's one description (purer/pipeline.py): the grid the report reads, the methods, the
modules each step runs, as read by the report, the CLI, the schema and the resume fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from purer import grid, paths, pipeline
from purer.cli import main as cli_main
from purer.config import load_config
from purer.meta import checkpoint

REPO = Path(__file__).resolve().parents[1]
GRID = {"methods": ["ei", "random"], "shots": [1], "seeds": [0, 1], "icfil_methods": []}
STALE_ACCURACY = 99.0  # far from every grid value: any trace of it in the report is a failure


def _metrics(folder: Path, method: str, n_shot: int, seed: int, accuracy: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"method": method, "dataset": "glyphs", "n_way": 5, "n_shot": n_shot, "n_query": 15, "seed": seed,
              "icfil": False, "selection": "val", "episodes": 100, "accuracy": accuracy, "ci95": 1.0}
    (folder / "metrics.json").write_text(json.dumps(record))


@pytest.fixture
def grid_results(write_config):
    """A config whose grid is ei/random x 1-shot x seeds 0, 1, with its four plain meta-tests written,
    and three stale runs of an older grid beside them: a seed, a shot and a method outside the grid."""
    config_file = write_config({"grid": GRID})
    config = load_config(config_file)
    for method, n_shot, seed in grid.grid_runs(config):
        run = paths.run_dir(config, method, n_shot, seed)
        _metrics(paths.test_dir(run, "glyphs", "plain"), method, n_shot, seed, 40.0 + 10 * (method == "ei") + seed)
    for method, n_shot, seed in (("ei", 1, 7), ("ei", 5, 0), ("purer", 1, 0)):
        _metrics(paths.test_dir(paths.run_dir(config, method, n_shot, seed), "glyphs", "plain"), method, n_shot, seed,
                 STALE_ACCURACY)
    return config_file, config


def test_grid_tests_are_the_configured_runs_and_variants(grid_results):
    _, config = grid_results
    expected = [paths.test_dir(paths.run_dir(config, m, 1, s), "glyphs", "plain") / "metrics.json"
                for m in ("ei", "random") for s in (0, 1)]
    assert grid.grid_tests(config) == expected


def test_a_stale_run_outside_the_grid_is_not_in_the_report(grid_results, monkeypatch):
    config_file, config = grid_results
    monkeypatch.setattr(cli_main, "COMMANDS", {"report": cli_main.COMMANDS["report"]})
    assert cli_main.main(["report", "-c", str(config_file)]) == 0
    report = paths.report_dir(config)
    summary = json.loads((report / "summary.json").read_text())
    assert str(STALE_ACCURACY) not in json.dumps(summary)
    for name in ("main.csv", "main.md"):
        assert "99.0" not in (report / "tables" / name).read_text()
    read = sorted(entry["path"] for entry in json.loads((report / "inputs.json").read_text())["metrics"])
    assert read == sorted(str(p) for p in grid.grid_tests(config))  # exactly the grid, no stale run
    # the mean over the two grid seeds (hand-computed): ei 50.0 and 51.0, random 40.0 and 41.0
    csv = (report / "tables" / "main.csv").read_text()
    assert "50.5" in csv and "40.5" in csv


def test_root_reads_every_run_under_the_folder(grid_results, monkeypatch, tmp_path):
    """``--root DIR`` is the explicit "everything under DIR" mode (a folder of runs from anywhere)."""
    config_file, config = grid_results
    monkeypatch.setattr(cli_main, "COMMANDS", {"report": cli_main.COMMANDS["report"]})
    out = tmp_path / "everything"
    root = paths.experiment_dir(config)
    assert cli_main.main(["report", "-c", str(config_file), "--root", str(root), "--out", str(out)]) == 0
    assert "99" in (out / "tables" / "main.csv").read_text()


def test_methods_are_described_once():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text(encoding="utf-8"))
    enums = []

    def walk(node):
        if isinstance(node, dict):
            if "purer" in node.get("enum", []):
                enums.append(tuple(node["enum"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert enums and all(set(e) == set(pipeline.METHODS) for e in enums)
    assert set(pipeline.REPORT_ORDER) == set(pipeline.METHODS) and set(pipeline.TRAINED) <= set(pipeline.METHODS)


def test_step_modules_exist_and_the_fingerprint_reads_the_meta_train_step():
    for modules in [*pipeline.STEP_MODULES.values(), *pipeline.SOURCE_MODULES.values(), pipeline.SHARED_MODULES]:
        for module in modules:
            assert (REPO / "purer" / module).is_file(), module
    assert checkpoint.CODE_MODULES == pipeline.fingerprint_modules()
    assert "purer.meta.engine" in checkpoint.CODE_MODULES and "purer.meta.calibration" not in checkpoint.CODE_MODULES
    assert "meta/calibration.py" not in pipeline.STEP_MODULES["meta_train"]
