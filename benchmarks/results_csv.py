"""The one CSV writer of the benchmark scripts: a header row, then one row per measurement, atomic."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from purer.io import write_text


def write_csv(path: Path, rows: list[dict], fields: list[str]) -> None:
    """Write ``rows`` (dicts keyed by ``fields``) to ``path`` at once (a killed run leaves no half file)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text(path, buffer.getvalue())
