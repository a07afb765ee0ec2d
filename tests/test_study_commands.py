"""The study pages' Snakemake commands build their DAG as written (brace expansion and all).

A target written after ``--configfile`` is read as a second config file, so a command that reads
well can fail at once; each ``snakemake`` line of a ``bash`` block in a results page is run here as
a dry run, in the order its words are given.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from workflow_support import REPO, output_of, snakemake

PAGES = ("results/replication/README.md",)


def snakemake_commands(page: str) -> list[str]:
    """The ``snakemake ...`` commands of the page's bash blocks (continuation lines joined, comments cut)."""
    text = (REPO / page).read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split("#", 1)[0].strip()
            if command.startswith("snakemake "):
                commands.append(command)
    return commands


def words(command: str) -> list[str]:
    """The command's arguments after bash expansion (``{a,b}`` braces), without ``snakemake``."""
    script = 'printf "%s\\0" ' + command.removeprefix("snakemake ")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True)
    return [word for word in result.stdout.split("\0") if word]


@pytest.mark.parametrize("page", PAGES)
def test_study_commands_build_their_dag(page):
    commands = snakemake_commands(page)
    assert any("results/" in c for c in commands), f"{page}: expected a command with explicit targets"
    for command in commands:
        result = snakemake("-n", "--ignore-incomplete", *words(command))
        assert result.returncode == 0, f"{page}: `{command}` failed:\n{output_of(result)[-3000:]}"
        assert "Job stats:" in output_of(result) or "Nothing to be done" in output_of(result), command


def test_a_target_after_configfile_is_caught():
    result = snakemake("-n", "--ignore-incomplete", *words(
        "snakemake --cores 1 --configfile config/experiments/replication.yaml "
        "results/replication/mini-imagenet/ei/5w5s/seed0/meta_model.pt"))
    assert result.returncode != 0
