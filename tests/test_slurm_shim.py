"""The SLURM profile end to end against a fake SLURM (tests/slurm_shim): real sbatch command lines."""

from __future__ import annotations

import os

import pytest
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

SHIM = REPO / "tests" / "slurm_shim"



@pytest.mark.slow
def test_profile_submits_cpu_jobs_without_gpus(tmp_path):
    """prepare + one teacher of a CPU config through the slurm executor, with no site settings given:
    no GPU is requested, the plugin guesses the account (sacctmgr) and takes the default partition (sinfo)."""
    config_file = write_yaml(tmp_path / "micro.yaml", micro_config())
    workdir, state = tmp_path / "wd", tmp_path / "slurm"
    teacher = paths.teacher_path(load_config(config_file), 0)
    env = tool_env(FAKE_SLURM_STATE=str(state))
    env["PATH"] = f"{SHIM}{os.pathsep}{env['PATH']}"
    result = snakemake(
        "--profile", str(REPO / "profiles" / "slurm"), "--cores", "all",
        "--configfile", str(config_file), "--directory", str(workdir),
        "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5",
        str(teacher), env=env, timeout=600,
    )
    assert result.returncode == 0, output_of(result)[-5000:]
    assert (workdir / teacher).is_file()

    calls = {flag(argv, "--comment"): argv for argv in sbatch_calls(state)}
    assert len(calls) == 2, list(calls)
    (prepare,) = [argv for comment, argv in calls.items() if comment.startswith("rule_prepare_glyphs")]
    (train,) = [argv for comment, argv in calls.items() if comment.startswith("rule_pool_train")]
    assert not any(arg.startswith("--gpus") for arg in train + prepare)
    # threads (set-threads: 4, capped by --cores) as --cpus-per-task; no --cpus-per-gpu without a GPU
    assert any(arg.startswith("--cpus-per-task=") for arg in train)
    assert not any(arg.startswith("--cpus-per-gpu") for arg in train)
    assert flag(train, "-p") == "cpu" and flag(train, "-A") == "my_account"
    assert flag(prepare, "-p") == "cpu" and "--cpus-per-task=1" in prepare
