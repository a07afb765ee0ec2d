"""The Quick start computes: in a fresh clone, the main command's dry run lists every job of the DAG.

The committed report (tables, figures, summary.json) must not make the pipeline look finished: the
report's record of its inputs (``report/inputs.json``) is not committed, so Snakemake has to rebuild
the report and, with it, everything it depends on.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from workflow_support import REPO, output_of, tool_env


def tracked_files() -> list[str]:
    try:
        result = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, timeout=60)
    except OSError:
        pytest.skip("git is not available")
    if result.returncode != 0:
        pytest.skip("not a git checkout")
    return [name for name in result.stdout.split("\0") if name]


def fresh_clone(dest: Path) -> Path:
    """The tracked files of the checkout (with their working-tree contents) as a clone holds them:
    all with one modification time, so no input looks newer than the committed outputs."""
    stamp = time.time() - 60
    for name in tracked_files():
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest / name)
            os.utime(dest / name, (stamp, stamp))
    return dest


def job_counts(clone: Path, *args: str) -> dict[str, int]:
    command = [sys.executable, "-m", "snakemake", "-n", "--cores", "all", *args]
    result = subprocess.run(command, cwd=clone, env=tool_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, output_of(result)
    text = output_of(result)
    table = text.split("Job stats:", 1)[1] if "Job stats:" in text else ""
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def test_fresh_clone_runs_every_job(tmp_path):
    clone = fresh_clone(tmp_path / "clone")
    assert (clone / "results" / "default" / "report" / "summary.json").is_file(), "the report is committed"
    assert not (clone / "results" / "default" / "report" / "inputs.json").exists(), "its record is not"
    wanted = job_counts(clone)
    every = job_counts(clone, "--forceall")
    assert wanted == every
    assert wanted["pool_train"] >= 1 and wanted["meta_train"] >= 1 and wanted["report"] == 1
