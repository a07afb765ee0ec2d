"""A tiny replication-style grid (arms, a strength sweep, branching) through Snakemake."""

from __future__ import annotations

import copy
import json

import pytest
from test_workflow import dry_run_jobs
from workflow_support import micro_config, output_of, snakemake, write_yaml

from purer import paths
from purer.config import load_config

ARMS = {
    "ei": {"method": "ei"},
    "ei-triangular": {"method": "ei", "set": {"inversion.teacher_weighting": "triangular"}},
    "purer-parity": {"method": "purer", "branch_from": "ei-triangular",
                     "set": {"inversion.teacher_weighting": "triangular", "curriculum.adv_scale": 10.0}},
    "purer-s1": {"method": "purer", "branch_from": "ei",
                 "set": {"curriculum.adv_scale": None, "curriculum.adv_strength": 1.0}},
    "purer-s3": {"method": "purer", "branch_from": "ei",
                 "set": {"curriculum.adv_scale": None, "curriculum.adv_strength": 3.0}},
}


def smoke_config(
    seeds: tuple[int, ...] = (0, 1), icfil_methods: tuple[str, ...] = ("random", "average", "ei", "purer")
) -> dict:
    """The micro glyphs pipeline with the replication's arms: random, average, EI (equal and
    triangular weights), PURER at parity and a two-value strength sweep, ICFIL (and its noise
    control) for ``icfil_methods`` (default: every method, as the study)."""
    config = micro_config()
    config["experiment"] = "replication_smoke"
    config["meta_train"]["curriculum"] = {"warmup": 2, "patience": 1}
    config["grid"] = {"methods": ["random", "average"], "shots": [1], "seeds": list(seeds), "icfil": [False, True],
                      "icfil_methods": list(icfil_methods), "icfil_controls": ["noise"],
                      "arms": copy.deepcopy(ARMS), "sweeps": {"purer-equal": ["purer-s1", "purer-s3"]},
                      "pairs": [["purer-parity", "ei-triangular"], ["purer-equal", "ei"]]}
    config["report"] |= {"records": True, "decision": {"pair": ["purer-parity", "ei-triangular"], "n_shot": 1,
                                                       "first_seeds": 2, "max_seeds": 2}}
    return config


@pytest.fixture
def smoke(tmp_path):
    return write_yaml(tmp_path / "replication_smoke.yaml", smoke_config())


def test_the_dag_runs_every_arm_and_each_branch_after_its_trunk(smoke, tmp_path):
    result = snakemake("-n", "--forceall", "--cores", "1", "--configfile", str(smoke), "--directory", str(tmp_path))
    assert result.returncode == 0, output_of(result)
    jobs = dry_run_jobs(output_of(result))
    train = [job for job in jobs if job["rule"] == "meta_train"]
    assert len(train) == 7 * 2  # 2 baselines + 5 arms, 2 seeds
    tests = [job for job in jobs if job["rule"].startswith("meta_test")]
    assert len(tests) == 7 * 2 * 3  # plain, ICFIL and the noise control for every run
    for job in train:
        method = job["wildcards"].split("method=")[1].split(",")[0]
        trunk = ARMS.get(method, {}).get("branch_from")
        if trunk is not None:
            seed = job["wildcards"].split("seed=")[1].split(",")[0]
            assert f"/{trunk}/5w1s/seed{seed}/summary.json" in job["input"]
        else:
            assert "summary.json" not in job["input"]


def test_a_branch_that_may_not_branch_stops_the_dag(tmp_path):
    config = smoke_config()
    config["grid"]["arms"]["purer-s1"]["set"]["outer_lr"] = 0.01
    path = write_yaml(tmp_path / "bad.yaml", config)
    result = snakemake("-n", "--cores", "1", "--configfile", str(path), "--directory", str(tmp_path))
    assert result.returncode != 0
    assert "grid.arms.purer-s1.branch_from: ei: the two runs differ before the warm-up in meta_train.outer_lr" in output_of(result)


@pytest.mark.slow
def test_the_smoke_grid_runs_end_to_end(tmp_path):
    # one seed, ICFIL for PURER only (the DAG test above has it for every method): 7 trainings, 13 tests
    smoke = write_yaml(tmp_path / "replication_smoke.yaml", smoke_config(seeds=(0,), icfil_methods=("purer",)))
    result = snakemake("--cores", "2", "--configfile", str(smoke), "--directory", str(tmp_path), timeout=1200)
    assert result.returncode == 0, output_of(result)[-4000:]
    config = load_config(smoke)
    config = config.__class__(**{**config.__dict__, "results_dir": str(tmp_path / config.results_dir)})
    summary = json.loads((paths.report_dir(config) / "summary.json").read_text())
    assert {"glyphs/5w1s/purer-parity - ei-triangular", "glyphs/5w1s/purer-equal - ei"} <= set(summary)
    assert sum(v["selected"] for k, v in summary.items() if k.startswith("sweep/")) == 1
    branch = json.loads((paths.run_dir(config, "purer-s1", 1, 0) / "summary.json").read_text())
    assert branch["branched_from"]["iteration"] == 2
    assert (paths.experiment_dir(config) / "records" / "purer-s1" / "5w1s" / "seed0" / "run.json").is_file()
    decision = json.loads((paths.report_dir(config) / "tables" / "decision.json").read_text())
    assert decision["outcome"] == "pending" and decision["n_seeds"] == 1  # one seed of the two the rule needs
    compute_time = (paths.report_dir(config) / "compute_time.md").read_text()
    assert "| purer-s1 | 1 | 1 |" in compute_time and "meta-test icfil-noise" in compute_time
