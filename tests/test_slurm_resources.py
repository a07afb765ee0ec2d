"""What the SLURM profile asks for: GPUs only on a CUDA config and only for the jobs that compute;
account and partition from the command line or an untracked site profile, never from a tracked file."""

from __future__ import annotations

import os

import pytest
from test_workflow import dry_run_jobs, resources
from workflow_support import (
    REPO,
    flag,
    micro_config,
    output_of,
    sbatch_calls,
    snakemake,
    tool_env,
    write_yaml,
)

from purer import paths
from purer.config import load_config

PROFILE = str(REPO / "profiles" / "slurm")
SHIM = REPO / "tests" / "slurm_shim"
COMPUTE_RULES = {"pool_train", "meta_test", "meta_test_icfil", "meta_test_control"}


def _dry_run(tmp_path, device: str, *extra: str) -> list[dict[str, str]]:
    config_file = write_yaml(tmp_path / f"{device}.yaml", micro_config(device=device))
    result = snakemake("-n", "--forceall", "--cores", "all", "--profile", PROFILE, "--configfile", str(config_file),
                       "--directory", str(tmp_path / "wd"), *extra)
    assert result.returncode == 0, output_of(result)
    return [job for job in dry_run_jobs(output_of(result)) if job["rule"] != "all"]


def test_a_cuda_config_gets_gpus_for_the_jobs_that_compute_only(tmp_path):
    jobs = _dry_run(tmp_path, "cuda")
    seen = set()
    for job in jobs:
        res, rule = resources(job), job["rule"]
        seen.add(rule)
        if rule in COMPUTE_RULES or (rule == "meta_train" and "method=purer" in job["wildcards"]):
            assert res["gpu"] == "1" and res["cpus_per_gpu"] in ("4", "8"), job
        else:  # prepare, manifest, report; random only validates
            assert res.get("gpu", "0") == "0", job
        if rule == "meta_train":
            assert res["runtime"] == ("1440" if "method=purer" in job["wildcards"] else "60"), job
    assert {"pool_train", "meta_train", "meta_test", "meta_test_icfil", "report"} <= seen


def test_a_cpu_config_gets_no_gpu(tmp_path):
    jobs = _dry_run(tmp_path, "cpu")
    assert {job["rule"] for job in jobs} >= {"pool_train", "meta_train", "meta_test"}
    assert all(resources(job).get("gpu", "0") == "0" for job in jobs)


def test_account_and_partition_from_the_command_line(tmp_path):
    jobs = _dry_run(tmp_path, "cuda", "--default-resources", "slurm_account=lab42", "slurm_partition=short")
    for job in jobs:
        res = resources(job)
        assert res["slurm_account"] == "lab42" and res["slurm_partition"] == "short", job
        assert "runtime" in res and "mem_mb" in res, job  # the rules' own needs survive


def test_account_and_partition_from_an_untracked_site_profile(tmp_path):
    site = tmp_path / "site"
    write_yaml(site / "config.yaml", {"default-resources": {"slurm_account": "lab42", "slurm_partition": "short"}})
    jobs = _dry_run(tmp_path, "cpu", "--profile", str(site))
    assert jobs and all(resources(job)["slurm_account"] == "lab42" for job in jobs)
    assert all(resources(job)["slurm_partition"] == "short" for job in jobs)


def test_the_tracked_profile_holds_no_site_settings():
    text = (REPO / "profiles" / "slurm" / "config.yaml").read_text(encoding="utf-8")
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    assert "slurm_account" not in body and "slurm_partition" not in body and "gpu" not in body
    assert "/profiles/site/" in (REPO / ".gitignore").read_text(encoding="utf-8")



@pytest.mark.slow
def test_sbatch_of_a_cuda_teacher_asks_for_a_gpu(tmp_path):
    """Real sbatch lines (fake SLURM): the teacher job of a CUDA config gets --gpus=1, prepare none;
    with the example partition file the plugin sends each to the partition that fits (gpu / cpu)
    and guesses the account (the fake sacctmgr knows one).

    There is no CUDA here, so the teacher job itself fails: only its submission is checked.
    """
    config_file = write_yaml(tmp_path / "cuda.yaml", micro_config(device="cuda"))
    workdir, state = tmp_path / "wd", tmp_path / "slurm"
    teacher = paths.teacher_path(load_config(config_file), 0)
    env = tool_env(FAKE_SLURM_STATE=str(state))
    env["PATH"] = f"{SHIM}{os.pathsep}{env['PATH']}"
    result = snakemake(
        "--profile", PROFILE, "--cores", "all", "--configfile", str(config_file), "--directory", str(workdir),
        "--slurm-partition-config", str(REPO / "profiles" / "site.example" / "partitions.yaml"), "--retries", "0",
        "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "1",
        str(teacher), env=env, timeout=600,
    )
    calls = {flag(argv, "--comment"): argv for argv in sbatch_calls(state)}
    (prepare,) = [argv for comment, argv in calls.items() if comment.startswith("rule_prepare_glyphs")]
    trains = [argv for comment, argv in calls.items() if comment.startswith("rule_pool_train")]
    assert len(trains) == 1, output_of(result)[-3000:]
    (train,) = trains
    assert "--gpus=1" in train and "--cpus-per-gpu=4" in train
    assert flag(train, "-p") == "gpu" and flag(train, "-A") == "my_account"
    assert not any(arg.startswith("--gpus") for arg in prepare) and "--cpus-per-task=1" in prepare
    assert flag(prepare, "-p") == "cpu" and flag(prepare, "-A") == "my_account"
