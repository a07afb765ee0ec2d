"""purer.hostmem: freed host memory is kept and reused (no page fault per reused page)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import torch
from purer.hostmem import retain_freed_memory
accepted = retain_freed_memory() if sys.argv[1] == "retain" else None
sizes = [3_000_000, 10_000_000, 12_000_000]  # floats: 12, 40 and 48 MB blocks, freed every round
def round_trip():
    blocks = [torch.empty(size).fill_(1.0) for size in sizes]
    del blocks
for _ in range(10):  # the heap settles (grows to its working size)
    round_trip()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    round_trip()
print(accepted, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_retained_blocks_are_reused_without_page_faults():
    """Once the heap has settled, rounds of allocating and freeing 100 MB touch no fresh page after
    retain_freed_memory; with glibc's defaults, blocks above 32 MB are mapped (and faulted) anew
    every round (~22,000 pages)."""
    counts = {}
    for mode in ("retain", "default"):
        done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
        accepted, faults = done.stdout.split()
        counts[mode] = int(faults)
        assert accepted == ("True" if mode == "retain" else "None")
    assert counts["retain"] < 1000 < 100_000 < counts["default"], counts


def test_the_command_line_applies_it(monkeypatch):
    from purer.cli import main as cli_main

    calls = []
    monkeypatch.setattr(cli_main, "retain_freed_memory", lambda: calls.append(True))
    with pytest.raises(SystemExit):
        cli_main.main(["--help"])
    assert calls == []  # --help exits while parsing, before any work
    assert cli_main.main(["report", "--config", "/nonexistent.yaml"]) == 2
    assert calls == [True]
