"""The one CSV writer of the benchmark scripts (a header row, then one row per measurement, atomic),
and the CPU flags every benchmark table names."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from purer.io import write_text
from purer.runtime import cpu_flags

SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")  # what decides bf16 and kernel speed


def speed_flags() -> str:
    """The CPU's flags among :data:`SPEED_FLAGS`, space-separated (``none of ...`` when it has none)."""
    flags = [flag for flag in SPEED_FLAGS if flag in cpu_flags()]
    return " ".join(flags) or "none of " + " ".join(SPEED_FLAGS)


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    """Write ``rows`` (dicts keyed by ``fields``) to ``path`` at once (a killed run leaves no half file)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text(path, buffer.getvalue())
