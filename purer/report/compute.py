"""Compute time per run and stage, read from the run folders: what a study cost, stage by stage.

For every meta-training run of the grid that has a ``summary.json``, and every meta-test
``metrics.json`` of the grid (:func:`purer.grid.grid_tests`), one row per (run, shot, seed, stage)
with its seconds:

- ``meta-training``: the sum of the run's own per-iteration times in ``curve.jsonl``. A run branched
  from a trunk (:mod:`purer.meta.branch`) carries the trunk's log up to the warm-up; those lines are
  the trunk's compute and are not counted again. Iterations recomputed after a resume are not in the
  log (it is truncated to the checkpoint), so a sitting's lost work is not counted either.
- ``validation``: the summary's ``seconds_validation``. A branched run's figure includes the
  trunk's validations up to the warm-up; its own share is estimated by its share of the validations
  in ``val.jsonl`` (every validation scores the same episodes), and the row says so (``estimated``).
- ``meta-test <variant>``: the ``metrics.json``'s ``seconds_all_checkpoints``: the test episodes of
  every checkpoint the job scored (a best-on-test protocol scores them all). A ``metrics.json``
  written before that field existed gives its ``seconds_total`` (the selected checkpoint alone),
  and the row says so (``estimated``).

Teacher pre-training is not included (the pool manifest does not record its time).
Pure Python and pandas: no torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from purer import paths
from purer.config import ExperimentConfig
from purer.grid import grid_runs
from purer.io import write_text
from purer.report.aggregate import read_json, read_jsonl
from purer.variants import grid_variants

COLUMNS = ["run", "n_shot", "seed", "stage", "seconds", "estimated"]
TRAINING, VALIDATION, TEST = "meta-training", "validation", "meta-test"


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    """The JSON object in ``path``; None if there is no such file (a malformed one is a DataError)."""
    if not path.is_file():
        return None
    value = read_json(path, what)
    return value if isinstance(value, dict) else None


def _lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a finished run's log (none if it is missing; a bad line is a DataError)."""
    return read_jsonl(path).to_dict("records") if path.is_file() else []


def training_rows(run: Path, summary: dict[str, Any]) -> list[tuple[str, float, bool]]:
    """(stage, seconds, estimated) of one finished run's meta-training and validation."""
    branched = summary.get("branched_from")
    start = int(branched["iteration"]) if isinstance(branched, dict) and "iteration" in branched else 0
    own = [float(r["seconds"]) for r in _lines(run / "curve.jsonl")
           if int(r.get("iteration", 0)) > start and isinstance(r.get("seconds"), (int, float))
           and math.isfinite(r["seconds"])]
    validation = float(summary.get("seconds_validation") or 0.0)
    if start:
        iterations = [int(r["iteration"]) for r in _lines(run / "val.jsonl") if "iteration" in r]
        validation *= sum(i > start for i in iterations) / len(iterations) if iterations else 0.0
    return [(TRAINING, sum(own), False), (VALIDATION, validation, bool(start))]


def compute_rows(config: ExperimentConfig) -> pd.DataFrame:
    """One row per (run, n_shot, seed, stage) that has a time on disk (:data:`COLUMNS`)."""
    rows = []
    for name, n_shot, seed in grid_runs(config):
        run = paths.run_dir(config, name, n_shot, seed)
        summary = _read_json(run / "summary.json", "run summary")
        if summary is not None and "seconds" in summary:
            rows += [(name, n_shot, seed, stage, s, est) for stage, s, est in training_rows(run, summary)]
        for dataset in config.test_datasets:
            for variant in grid_variants(config, name):
                metrics = _read_json(paths.test_dir(run, dataset, variant) / "metrics.json", "meta-test metrics") or {}
                seconds = metrics.get("seconds_all_checkpoints", metrics.get("seconds_total"))
                if isinstance(seconds, (int, float)):
                    stage = f"{TEST} {variant}" if len(config.test_datasets) == 1 else f"{TEST} {dataset}/{variant}"
                    rows.append((name, n_shot, seed, stage, float(seconds), "seconds_all_checkpoints" not in metrics))
    return pd.DataFrame(rows, columns=COLUMNS)


def compute_markdown(rows: pd.DataFrame) -> str:
    """Time (h:mm:ss) per run (summed over seeds, one line per run and shot) and stage, with totals."""
    if rows.empty:
        return "No run has a recorded time yet."
    stages = list(dict.fromkeys(rows["stage"]))  # first-seen order: training, validation, the tests
    table = rows.pivot_table(index=["run", "n_shot"], columns="stage", values="seconds", aggfunc="sum", sort=False)
    seeds = rows.groupby(["run", "n_shot"], sort=False)["seed"].nunique()
    lines = ["| run | shot | seeds | " + " | ".join(stages) + " | total |", "|---|---|---|" + "---|" * (len(stages) + 1)]
    for (run, n_shot), values in table.iterrows():
        cells = [format_hms(values.get(stage)) for stage in stages]
        lines.append(f"| {run} | {n_shot} | {seeds[(run, n_shot)]} | " + " | ".join(cells) + f" | {format_hms(values.sum())} |")
    totals = [format_hms(rows.loc[rows["stage"] == stage, "seconds"].sum()) for stage in stages]
    lines.append("| **total** | | | " + " | ".join(totals) + f" | **{format_hms(rows['seconds'].sum())}** |")
    lines.append("")
    lines.append("Time of one process (h:mm:ss; each job ran one thread), summed over seeds.")
    if rows["estimated"].any():
        lines.append("Some times are estimates (purer/report/compute.py): a branched run's validation is its share of "
                     "the validations; a meta-test recorded before `seconds_all_checkpoints` counts its selected "
                     "checkpoint alone.")
    return "\n".join(lines)


def format_hms(seconds: float | None) -> str:
    """``h:mm:ss`` (hours unbounded), ``-`` for nothing recorded."""
    if seconds is None or pd.isna(seconds):
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def write_compute(rows: pd.DataFrame, folder: Path) -> list[Path]:
    """``compute_time.csv`` (the rows) and ``compute_time.md`` (the table) in ``folder``."""
    csv_path, md_path = folder / "compute_time.csv", folder / "compute_time.md"
    write_text(csv_path, rows.to_csv(index=False))
    write_text(md_path, compute_markdown(rows) + "\n")
    return [csv_path, md_path]
