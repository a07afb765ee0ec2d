"""Manual runs (purer/manual.py): ``--set`` writes under ``<experiment>/manual/<key>/``, ``--seed``
defaults to the grid's first seed, a run folder of another fingerprint is refused (``--restart``
discards it), and the pipeline's reruns after a change still work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from workflow_support import micro_config, output_of, snakemake, write_yaml

from purer import paths
from purer.cli.main import main
from purer.config import load_config
from purer.manual import manual_config, overrides_key
from purer.report import aggregate

CONFIG = {
    "experiment": "m",
    "datasets": {"glyphs": {"image_size": 16, "train_classes": 10, "val_classes": 5, "test_classes": 5,
                            "images_per_class": 10}},
    "pool": {"n_way": 5, "conv4_width": 8, "epochs": 1, "milestones": [], "checkpoint_interval": 1},
    "meta_train": {"meta_model_width": 8, "n_query": 2, "meta_batch_size": 2, "iterations": 2, "val_interval": 2,
                   "val_episodes": 2, "checkpoint_interval": 2, "grid_snapshots": 0,
                   "curriculum": {"warmup": 1, "patience": 1}},
    "meta_test": {"n_query": 2, "episodes": 2},
    "grid": {"methods": ["purer"], "shots": [1], "seeds": [3], "icfil": [False], "icfil_controls": []},
    "report": {"formats": ["md"], "figure_formats": ["png"]},
}
RUN = ["--method", "purer", "--n-shot", "1"]


def _tree(folder: Path) -> dict[str, float]:
    """Every file under ``folder`` with its modification time (what a step must not touch)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A trained and tested pipeline run (seed 3, the grid's), in a temporary folder."""
    root = tmp_path_factory.mktemp("manual")
    config = write_yaml(root / "config.yaml", CONFIG | {"data_dir": str(root / "data"), "results_dir": str(root / "results")})
    c = ["-c", str(config)]
    assert main(["prepare", *c]) == 0
    for i in range(2):
        assert main(["pool", "train", *c, "--teacher", str(i)]) == 0
    assert main(["pool", "manifest", *c]) == 0
    assert main(["meta-train", *c, *RUN]) == 0  # no --seed: the grid's first, 3
    assert main(["meta-test", *c, *RUN, "--dataset", "glyphs"]) == 0
    assert main(["report", *c]) == 0
    return root, config


@pytest.fixture
def copy(pipeline, tmp_path):
    """A private copy of the pipeline's folder (tests that write)."""
    root, _ = pipeline
    shutil.copytree(root, tmp_path / "p")
    config = write_yaml(tmp_path / "p" / "config.yaml",
                        CONFIG | {"data_dir": str(tmp_path / "p" / "data"), "results_dir": str(tmp_path / "p" / "results")})
    return tmp_path / "p", config


def test_seed_defaults_to_the_grids_first(pipeline):
    root, config_file = pipeline
    config = load_config(config_file)
    assert config.seed == 2022 and config.grid.seeds == (3,)
    run = paths.run_dir(config, "purer", 1, 3)
    assert json.loads((run / "summary.json").read_text())["seed"] == 3
    assert (paths.test_dir(run, "glyphs", False) / "metrics.json").is_file()
    assert not paths.run_dir(config, "purer", 1, 2022).exists()


def test_set_writes_a_manual_run_and_leaves_the_pipelines_alone(copy, capsys):
    root, config_file = copy
    config = load_config(config_file)
    results = paths.experiment_dir(config)
    before = _tree(results)
    overrides = ["meta_train.outer_lr=0.002", "meta_train.iterations=4"]
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["meta-train", "-c", str(config_file), *RUN, *sets]) == 0
    key = overrides_key(overrides)
    folder = results / "manual" / key
    run = paths.run_dir(manual_config(config, overrides), "purer", 1, 3)
    assert run == folder / "glyphs" / "purer" / "5w1s" / "seed3"
    assert json.loads((run / "summary.json").read_text())["iterations"] == 4
    assert yaml.safe_load((folder / "overrides.yaml").read_text()) == {"config": str(config_file), "overrides": overrides}
    assert f"a manual run, written under {run}" in capsys.readouterr().err
    # it used the pipeline's pool, and wrote nothing outside its folder
    resolved = yaml.safe_load((run / "config.resolved.yaml").read_text())
    assert resolved["pool_manifest"] == str(paths.manifest_path(config))
    after = {k: v for k, v in _tree(results).items() if not k.startswith("manual/")}
    assert after == before
    # the same overrides meet the same folder: meta-test tests that run, report reports it
    assert main(["meta-test", "-c", str(config_file), *RUN, "--dataset", "glyphs", *sets]) == 0
    metrics = json.loads((paths.test_dir(run, "glyphs", False) / "metrics.json").read_text())
    assert metrics["checkpoint"] == "meta_model.pt"
    assert main(["report", "-c", str(config_file), *sets]) == 0
    assert (folder / "report" / "tables" / "main.md").is_file()
    assert {k: v for k, v in _tree(results).items() if not k.startswith("manual/")} == before


def test_a_manual_test_of_the_pipelines_run_is_written_apart(copy):
    root, config_file = copy
    config = load_config(config_file)
    pipeline_metrics = paths.test_dir(paths.run_dir(config, "purer", 1, 3), "glyphs", False) / "metrics.json"
    before = pipeline_metrics.read_bytes()
    assert main(["meta-test", "-c", str(config_file), *RUN, "--dataset", "glyphs", "--set", "meta_test.inner_steps=5"]) == 0
    own = paths.run_dir(manual_config(config, ["meta_test.inner_steps=5"]), "purer", 1, 3)
    metrics = json.loads((paths.test_dir(own, "glyphs", False) / "metrics.json").read_text())
    assert metrics["inner_steps"] == 5 and not (own / "meta_model.pt").exists()  # the pipeline's model, tested
    assert pipeline_metrics.read_bytes() == before


def test_the_pipelines_report_never_reads_manual_runs(copy):
    root, config_file = copy
    config = load_config(config_file)
    assert main(["meta-test", "-c", str(config_file), *RUN, "--dataset", "glyphs", "--set", "meta_test.inner_steps=5"]) == 0
    everything = aggregate.collect_metrics(paths.experiment_dir(config))
    assert len(everything) == 1 and "manual" not in everything["path"].iloc[0]
    assert all("manual" not in str(run.path) for run in aggregate.collect_runs(paths.experiment_dir(config)))
    manual_root = paths.experiment_dir(config) / "manual" / overrides_key(["meta_test.inner_steps=5"])
    assert len(aggregate.collect_metrics(manual_root)) == 1  # asked for by its folder: read


def test_a_run_of_another_configuration_is_refused_not_wiped(copy, capsys):
    root, config_file = copy
    config = load_config(config_file)
    run = paths.run_dir(config, "purer", 1, 3)
    before = _tree(run)
    edited = write_yaml(config_file, yaml.safe_load(config_file.read_text()) | {
        "meta_train": CONFIG["meta_train"] | {"outer_lr": 0.01}})
    assert main(["meta-train", "-c", str(edited), *RUN]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"purer meta-train: error: {run} holds meta_model.pt and summary.json of a run with another configuration, "
        "pool or code (its fingerprint differs); it is kept. Pass --restart to discard it and start over, or write "
        "elsewhere with --out DIR (or --set, which writes a manual run under <experiment>/manual/)"
    )
    assert {k: v for k, v in _tree(run).items() if k != ".purer.lock"} == {
        k: v for k, v in before.items() if k != ".purer.lock"}
    assert main(["meta-train", "-c", str(edited), *RUN, "--restart"]) == 0
    assert json.loads((run / "summary.json").read_text())["resumed_from"] is None


def test_the_pipeline_still_reruns_a_changed_run(tmp_path):
    """Snakemake deletes a job's outputs before it reruns it: meta-train then starts over by itself."""
    raw = micro_config(grid={"methods": ["purer"], "shots": [1], "seeds": [0], "icfil": [False], "icfil_controls": []})
    config_file = write_yaml(tmp_path / "micro.yaml", raw)
    args = ("--cores", "1", "--configfile", str(config_file), "--directory", str(tmp_path / "wd"))
    first = snakemake(*args)
    assert first.returncode == 0, output_of(first)[-3000:]
    raw["meta_train"]["outer_lr"] = 0.002
    write_yaml(config_file, raw)
    again = snakemake(*args)
    assert again.returncode == 0, output_of(again)[-3000:]
    out = output_of(again)
    assert "rule meta_train" in out and "pool_train" not in out
    run = tmp_path / "wd" / paths.run_dir(load_config(config_file), "purer", 1, 0)
    resolved = yaml.safe_load((run / "config.resolved.yaml").read_text())
    assert resolved["meta_train"]["outer_lr"] == 0.002
