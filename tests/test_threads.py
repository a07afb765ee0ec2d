"""A job's torch threads follow its Snakemake ``threads`` (``$OMP_NUM_THREADS``) or ``$PURER_THREADS``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from purer.errors import ConfigError
from purer.runtime import configure_process, job_threads

REPO = Path(__file__).resolve().parent.parent


def test_purer_threads_wins_over_omp_num_threads():
    assert job_threads({"PURER_THREADS": "3", "OMP_NUM_THREADS": "1"}) == 3
    assert job_threads({"OMP_NUM_THREADS": " 2 "}) == 2
    assert job_threads({"PURER_THREADS": "", "OMP_NUM_THREADS": "1"}) == 1
    assert job_threads({}) is None


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_thread_count_is_one_clear_error(value):
    with pytest.raises(ConfigError) as caught:
        job_threads({"PURER_THREADS": value})
    assert str(caught.value) == (
        f"environment variable PURER_THREADS: expected a whole number of threads, at least 1, got {value!r}"
    )


def test_configure_process_sets_torch_and_compile_threads(monkeypatch, tmp_path):
    before = torch.get_num_threads()
    monkeypatch.setenv("PURER_THREADS", "1")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    try:
        threads, _ = configure_process()
        import torch._inductor.config as inductor_config

        assert threads == torch.get_num_threads() == 1
        assert inductor_config.compile_threads == 1 and os.environ["TORCHINDUCTOR_COMPILE_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


def test_a_step_runs_with_the_job_threads(tmp_path):
    """What Snakemake does for a rule with ``threads: 1``: OMP_NUM_THREADS=1 in the job's environment."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "c"))
    env.pop("PURER_THREADS", None)
    code = ("import argparse, logging, torch; from purer.cli.common import load; "
            "load(argparse.Namespace(config=None, overrides=[])); print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def _rule_threads() -> dict[str, int]:
    threads = {}
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = path.read_text(encoding="utf-8")
        for block in re.split(r"\n(?=[ \t]*rule )", text)[1:]:
            name = re.match(r"[ \t]*rule (\w+):", block)
            found = re.search(r"\n\s+threads: (\d+)", block)
            if name and found:
                threads[name.group(1)] = int(found.group(1))
    return threads


def test_every_compute_rule_declares_one_thread_and_the_slurm_profile_sets_each():
    """On ``--cores 2`` two 1-thread jobs share the cores (benchmarks/README.md, "Threads"); the SLURM
    profile raises the threads of the compute jobs, each of which then runs that many torch threads."""
    threads = _rule_threads()
    assert {"pool_train", "meta_train", "meta_test", "meta_test_icfil", "meta_test_control"} <= set(threads)
    assert set(threads.values()) == {1}
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text(encoding="utf-8"))
    assert set(profile["set-threads"]) <= set(threads)
    assert all(isinstance(n, int) and n >= 1 for n in profile["set-threads"].values())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PURER_THREADS": "0"},
         "environment variable PURER_THREADS: expected a whole number of threads, at least 1, got '0'"),
        ({"OMP_NUM_THREADS": "all"},
         "environment variable OMP_NUM_THREADS: expected a whole number of threads, at least 1, got 'all'"),
    ],
)
def test_the_command_line_reports_a_bad_thread_count_in_one_line(tmp_path, env, message):
    """docs/errors.md, "Threads and the compile cache"."""
    base = {k: v for k, v in os.environ.items() if k not in ("PURER_THREADS", "OMP_NUM_THREADS")}
    config = tmp_path / "c.yaml"
    config.write_text(f"results_dir: {tmp_path / 'results'}\ndata_dir: {tmp_path / 'data'}\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "purer", "prepare", "--config", str(config), "--dataset", "glyphs"],
        env=base | env | {"PYTHONPATH": str(REPO), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"purer prepare: error: {message}"
    assert not (tmp_path / "data").exists()
