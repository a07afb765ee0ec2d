"""dvc.yaml is a thin wrapper around the Snakemake DAG: keep its paths and params honest."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from workflow_support import REPO, output_of, snakemake, tool_env

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
STAGES = DVC_YAML["stages"]


def _paths(entries: list) -> list[str]:
    """Paths of an outs/metrics/plots list (plain strings or one-key mappings)."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


def _options(entries: list) -> dict[str, dict]:
    return {next(iter(e)): next(iter(e.values())) or {} for e in entries if isinstance(e, dict)}


@pytest.fixture(scope="module")
def snakemake_outputs() -> set[str]:
    """Every file the default DAG produces, from ``snakemake --summary`` (first column)."""
    result = snakemake("--summary", "--forceall", "--ignore-incomplete", "--cores", "1")
    assert result.returncode == 0, output_of(result)
    lines = [line.split("\t")[0] for line in result.stdout.splitlines()]
    files = {line for line in lines if line and line != "output_file"}
    assert files
    return files


@pytest.mark.parametrize("section", ["outs", "metrics", "plots"])
def test_every_dvc_path_is_produced_by_snakemake(snakemake_outputs, section):
    for stage in STAGES.values():
        for path in _paths(stage.get(section, [])):
            prefix = path.rstrip("/") + "/"
            assert path in snakemake_outputs or any(f.startswith(prefix) for f in snakemake_outputs), (
                f"dvc.yaml {section}: {path} is not produced by the Snakefile"
            )


def test_stages_run_snakemake_on_coarse_deps():
    for stage in STAGES.values():
        assert stage["cmd"].split()[0] == "snakemake"
        assert {"Snakefile", "workflow", "purer"} <= set(stage["deps"])


def test_params_are_existing_sections_of_the_default_config():
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    for stage in STAGES.values():
        (params,) = stage["params"]
        assert list(params) == ["config/config.yaml"]
        keys = params["config/config.yaml"]
        assert set(keys) == set(raw), "every top-level section of config/config.yaml is a DVC param"


def test_heavy_outputs_persist_and_reports_go_to_git():
    for stage in STAGES.values():
        assert all(opts.get("persist") is True for opts in _options(stage["outs"]).values())
        for section in ("metrics", "plots"):
            assert all(opts.get("cache") is False for opts in _options(stage[section]).values())


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
    assert result.stdout.split()[0] == "pipeline"
