"""Small per-run text records for git (``report.records``): the numbers, auditable without the DVC cache.

For every run of the grid, ``<results_dir>/<experiment>/records/<run>/<n_way>w<n_shot>s/seed<k>/``:

- ``run.json``: the run's ``summary.json`` header (method, arm, iterations, selected iteration and
  its validation score, timings, switch count, reversed strength, branching), with the
  fingerprint replaced by its digests (``code``: the meta-training code; ``config``: SHA-256 of
  the whole fingerprint, settings, pool and code);
- ``val.csv``: the validation curve (``iteration,accuracy,ci95``);
- ``switches.csv``: the meta-iterations that took a reversed step (``iteration``);
- ``tests.json``: per ``<dataset>/<variant>``, the meta-test ``metrics.json`` without its
  per-episode arrays (``accuracies``, ``candidates``).

And once per experiment, ``<results_dir>/<experiment>/records/pool.csv``: every teacher of the pool
manifest with its classes, validation accuracy, kept epoch and the digest of its checkpoint (the
first 16 hex digits of its SHA-256, as in the resume fingerprint), so a retrained pool can be
checked against the one the runs used.

Each file is a few KB (the validation curve grows by one line per validation).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from purer import paths
from purer.config import ExperimentConfig
from purer.errors import DataError
from purer.grid import grid_runs
from purer.io import atomic_dir, file_digest, read_yaml, write_json, write_text
from purer.report.aggregate import read_json, read_jsonl
from purer.variants import grid_variants

PER_EPISODE = ("accuracies", "candidates")  # arrays a test record leaves out
POOL_FIELDS = ("index", "architecture", "dataset", "classes", "val_accuracy", "kept_epoch", "epochs", "sha256")


def records_dir(config: ExperimentConfig) -> Path:
    return paths.experiment_dir(config) / "records"


def run_record(summary: dict[str, Any]) -> dict[str, Any]:
    """``run.json``: the summary without its fingerprint and switch list, with their digests."""
    fingerprint = summary.get("fingerprint") or {}
    header = {k: v for k, v in summary.items() if k not in ("fingerprint", "switch_iterations")}
    header["digests"] = {
        "code": fingerprint.get("code"),
        "config": hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16],
    }
    return header


def test_record(metrics: dict[str, Any]) -> dict[str, Any]:
    """A ``metrics.json`` without its per-episode arrays (:data:`PER_EPISODE`)."""
    return {k: v for k, v in metrics.items() if k not in PER_EPISODE}


def run_files(config: ExperimentConfig, name: str, n_shot: int, seed: int) -> dict[str, str]:
    """The record files of one run, by name, as text.

    Raises:
        DataError: the run's ``summary.json`` is missing (naming it).
    """
    run = paths.run_dir(config, name, n_shot, seed)
    if not (run / "summary.json").is_file():
        raise DataError(f"{run / 'summary.json'} is missing: meta-train the run before writing its records")
    summary = read_json(run / "summary.json", "run summary")
    val = read_jsonl(run / "val.jsonl") if (run / "val.jsonl").is_file() else None
    val_csv = "iteration,accuracy,ci95\n"
    if val is not None and not val.empty:
        val_csv += "".join(f"{int(r.iteration)},{r.accuracy!r},{r.ci95!r}\n" for r in val.itertuples())
    switches = "iteration\n" + "".join(f"{int(i)}\n" for i in summary.get("switch_iterations") or [])
    tests = {}
    for dataset in config.test_datasets:
        for variant in grid_variants(config, name):
            path = paths.test_dir(run, dataset, variant) / "metrics.json"
            if path.is_file():
                tests[f"{dataset}/{variant}"] = test_record(read_json(path, "metrics file"))
    return {"run.json": _json(run_record(summary)), "val.csv": val_csv, "switches.csv": switches, "tests.json": _json(tests)}


def pool_csv(config: ExperimentConfig) -> str | None:
    """``pool.csv`` (:data:`POOL_FIELDS`, classes space-separated), or None when the pool has no manifest yet.

    Raises:
        CheckpointError: a bad manifest (``purer.models.manifest.load_config_manifest``).
    """
    path = paths.manifest_path(config)
    if not path.is_file():
        return None
    from purer.models.manifest import load_config_manifest  # torch-heavy imports, only when there is a pool

    manifest = load_config_manifest(config)
    raw = {t.get("index"): t for t in (read_yaml(path, "pool manifest") or {}).get("teachers", [])}
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=POOL_FIELDS, lineterminator="\n")
    writer.writeheader()
    for teacher in manifest.teachers:
        training = raw.get(teacher.index, {})
        writer.writerow({
            "index": teacher.index, "architecture": teacher.architecture, "dataset": teacher.dataset,
            "classes": " ".join(str(c) for c in teacher.classes), "val_accuracy": teacher.val_accuracy,
            "kept_epoch": training.get("kept_epoch"), "epochs": training.get("epochs"),
            "sha256": file_digest(teacher.checkpoint),
        })
    return buffer.getvalue()


def _json(value: Any) -> str:
    return json.dumps(value, indent=1) + "\n"


def write_records(config: ExperimentConfig, runs: Iterable[tuple[str, int, int]] | None = None) -> list[Path]:
    """Replace ``records/`` with the records of every run of the grid and ``pool.csv``; returns the files written."""
    out = records_dir(config)
    n_way = config.meta_train.n_way
    built = {(name, k, s): run_files(config, name, k, s) for name, k, s in (runs or grid_runs(config))}
    pool = pool_csv(config)
    written = []
    with atomic_dir(out) as tmp:
        for (name, n_shot, seed), files in built.items():
            folder = Path(name) / f"{n_way}w{n_shot}s" / f"seed{seed}"
            for file, text in files.items():
                write_text(tmp / folder / file, text)
                written.append(out / folder / file)
        if pool is not None:
            write_text(tmp / "pool.csv", pool)
            written.append(out / "pool.csv")
        write_json(tmp / "README.json", {"about": "per-run records written by `purer report` (purer/report/records.py)"})
    return written
