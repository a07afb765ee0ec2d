"""dvc.yaml is a thin wrapper around the Snakemake DAG: keep its paths and params honest."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_support import REPO, output_of, snakemake, tool_env

from purer import paths
from purer.config import load_config

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
STAGES = DVC_YAML["stages"]
EXPERIMENTS = DVC_YAML["vars"][0]["experiments"]
STAGE = STAGES["run"]["do"]
CONFIGS = [REPO / "config" / "config.yaml", *sorted((REPO / "config" / "experiments").glob("*.yaml"))]


def _paths(entries: list) -> list[str]:
    """Paths of an outs/metrics/plots list (plain strings or one-key mappings)."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def _options(entries: list) -> dict[str, dict]:
    return {next(iter(e)): next(iter(e.values())) or {} for e in entries if isinstance(e, dict)}


def _resolve(text: str, key: str) -> str:
    """A ``foreach`` template path for experiment ``key``."""
    item = EXPERIMENTS[key]
    return text.replace("${key}", key).replace("${item.config}", item["config"]).replace("${item.pool}", item["pool"])


def test_every_config_is_a_dvc_experiment():
    by_config = {item["config"]: key for key, item in EXPERIMENTS.items()}
    assert sorted(by_config) == sorted(str(c.relative_to(REPO)) for c in CONFIGS)
    for config_file in CONFIGS:
        config = load_config(config_file)
        key = by_config[str(config_file.relative_to(REPO))]
        assert key == config.experiment, "stage key = the config's experiment name"
        assert paths.pool_dir(config).parent == Path("results") / key / EXPERIMENTS[key]["pool"]
        assert paths.report_dir(config) == Path("results") / key / "report"


@pytest.fixture(scope="module")
def snakemake_outputs() -> set[str]:
    """Every file the default DAG produces, from ``snakemake --summary`` (first column)."""
    result = snakemake("--summary", "--forceall", "--ignore-incomplete", "--cores", "1")
    assert result.returncode == 0, output_of(result)
    lines = [line.split("\t")[0] for line in result.stdout.splitlines()]
    files = {line for line in lines if line and line != "output_file"}
    assert files
    return files


def test_every_dvc_out_is_produced_by_snakemake(snakemake_outputs):
    for path in _paths(STAGE["outs"]):
        prefix = _resolve(path, "default").rstrip("/") + "/"
        assert any(f.startswith(prefix) for f in snakemake_outputs), (
            f"dvc.yaml outs: {path} is not produced by the Snakefile"
        )


def test_metrics_and_plots_are_what_dvc_export_writes():
    written = {"results/${key}/metrics.json"} | {f"results/${{key}}/plots/{n}.csv" for n in ("accuracy", "train_curves", "val_curves")}
    assert set(_paths(STAGE["metrics"])) | set(_paths(STAGE["plots"])) == written
    for options in _options(STAGE["plots"]).values():
        assert (REPO / options["template"]).is_file() and options["x"] and options["y"]
        assert not options["template"].endswith(".pdf")


def test_stages_run_snakemake_then_the_export_every_time():
    """Snakemake decides what reruns; DVC runs it every time (no deps or params columns in `dvc exp show`)."""
    command = STAGE["cmd"].split()
    assert command[:4] == ["snakemake", "--cores", "all", "--configfile"]
    assert "purer.report.dvc_export" in command
    assert STAGE["always_changed"] is True and "deps" not in STAGE and "params" not in STAGE


def test_heavy_outputs_persist_and_reports_go_to_git():
    outs = _options(STAGE["outs"])
    cached = {path: opts for path, opts in outs.items() if opts.get("cache", True)}
    assert cached and all(opts.get("persist") is True for opts in cached.values())
    for section in ("metrics", "plots"):
        assert all(opts.get("cache") is False for opts in _options(STAGE[section]).values())


def test_dvc_is_initialised_without_analytics():
    config = configparser.ConfigParser()
    config.read(REPO / ".dvc" / "config")
    assert config["core"]["analytics"] == "false" and config["core"]["check_update"] == "false"
    ignored = (REPO / ".dvcignore").read_text(encoding="utf-8").split()
    assert {"__pycache__/", "*.egg-info/", ".snakemake/"} <= set(ignored)


def test_dvc_reads_the_pipeline():
    dvc = Path(sys.executable).parent / "dvc"
    result = subprocess.run([str(dvc), "stage", "list"], cwd=REPO, env=tool_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    stages = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert stages == [f"run@{key}" for key in EXPERIMENTS]
