"""Gather the pipeline's outputs (metrics, curves, grids, pool manifests) into data frames.

One row per ``metrics.json`` (a meta-test of one run), then a summary per method variant, dataset
and setting over seeds (algorithm.md §4):

- one seed: that seed's accuracy and its per-episode 95% CI (``ci_kind = "episodes"``);
- several seeds: the mean of the per-seed accuracies and ``1.96 * sigma / sqrt(n)`` across them,
  with ``sigma`` the *population* standard deviation (divisor ``n``) of the ``n`` seed means
  (``ci_kind = "seeds"``), matching the per-episode CI convention of the evaluation.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from purer.errors import DataError, PurerError
from purer.io import read_yaml, write_json

logger = logging.getLogger(__name__)

VARIANT_NAMES = {"purer": "PURER", "ei": "EI (no curriculum)", "random": "Random", "average": "Average"}
METHOD_ORDER = ("random", "average", "ei", "purer")  # baselines first, the method last (paper style)
ICFIL_NOTE = "ICFIL is a reconstruction of the paper's description (no official code)"
SELECTION_NOTES = {
    "val": "checkpoint selected on the validation split",
    "best-on-test": "best-on-test, authors' protocol",
    "last": "last checkpoint (no selection)",
}
# Columns that describe the experimental context of a row; the tables name them when they vary.
CONTEXT = ("experiment", "scenario", "learner", "teacher_weighting", "n_teachers", "selection", "episodes")
KEYS = CONTEXT + ("pool", "method", "variant", "icfil", "dataset", "n_way", "n_shot")
REQUIRED = ("method", "dataset", "n_way", "n_shot", "seed", "accuracy", "ci95")
_SETTING = re.compile(r"^(\d+)w(\d+)s$")
_SEED = re.compile(r"^seed(-?\d+)$")


@dataclass(frozen=True)
class Run:
    """One meta-training run directory: ``<pool>/<method>/<n_way>w<n_shot>s/seed<k>/``."""

    path: Path
    pool: str
    method: str
    n_way: int
    n_shot: int
    seed: int

    @property
    def setting(self) -> str:
        return setting_label(self.n_way, self.n_shot)


def variant_label(method: str, icfil: bool) -> str:
    """Display name of a method variant, e.g. ``("purer", True) -> "PURER + ICFIL"``."""
    name = VARIANT_NAMES.get(method, method)
    return f"{name} + ICFIL" if icfil else name


def setting_label(n_way: int, n_shot: int) -> str:
    """Column title of a few-shot setting, e.g. ``"5-way 1-shot"``."""
    return f"{n_way}-way {n_shot}-shot"


def method_rank(method: str) -> tuple[int, str]:
    """Sort key putting the known methods in :data:`METHOD_ORDER`, others after them by name."""
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def collect_metrics(root: str | Path) -> pd.DataFrame:
    """One row per ``**/test/<dataset>/{plain,icfil}/metrics.json`` under ``root``.

    Fields inside ``metrics.json`` win; the run's path
    (``[<experiment>/]<pool>/<method>/<n_way>w<n_shot>s/seed<k>/test/<dataset>/<plain|icfil>/``)
    fills in what the file lacks.

    Returns:
        A frame with columns ``KEYS + ("seed", "accuracy", "ci95", "path")``, accuracies in percent,
        sorted by method order, dataset, setting and seed.

    Raises:
        DataError: no metrics under ``root`` (naming the folder), or a malformed file (naming it).
    """
    root = Path(root)
    files = sorted(p for p in root.glob("**/test/*/*/metrics.json") if p.parent.name in ("plain", "icfil"))
    if not files:
        raise DataError(
            f"no metrics found under {root}: expected <pool>/<method>/<n_way>w<n_shot>s/seed<k>/"
            "test/<dataset>/{plain,icfil}/metrics.json (run `purer meta-test` first)"
        )
    frame = pd.DataFrame([_metrics_row(path, root) for path in files])
    frame["n_teachers"] = frame["n_teachers"].astype("Int64")
    frame["episodes"] = frame["episodes"].astype("Int64")
    frame["_rank"] = frame["method"].map(method_rank)
    frame = frame.sort_values(["_rank", "icfil", "dataset", "n_way", "n_shot", "seed", "path"], kind="stable")
    logger.info("collected %d metrics files under %s", len(frame), root)
    return frame.drop(columns="_rank").reset_index(drop=True)


def _metrics_row(path: Path, root: Path) -> dict[str, Any]:
    """One row from a ``metrics.json`` and its path (see :func:`collect_metrics`)."""
    metrics = read_json(path, "metrics file")
    if not isinstance(metrics, dict):
        raise DataError(f"metrics file {path}: expected a JSON object, got {type(metrics).__name__}")
    from_path = _path_fields(path.relative_to(root).parts, root)
    row = {key: metrics.get(key, from_path.get(key)) for key in REQUIRED}
    missing = [key for key in REQUIRED if row[key] is None]
    if missing:
        raise DataError(f"metrics file {path}: missing {missing} (neither in the file nor in its path)")
    icfil = bool(metrics.get("icfil", from_path["icfil"]))
    row.update(
        experiment=from_path["experiment"],
        pool=from_path.get("pool") or "",
        scenario=metrics.get("scenario") or from_path.get("pool") or "",
        learner=_learner(metrics),
        teacher_weighting=metrics.get("teacher_weighting"),
        n_teachers=metrics.get("n_teachers"),
        selection=metrics.get("selection") or "val",
        episodes=metrics.get("episodes"),
        icfil=icfil,
        variant=variant_label(str(row["method"]), icfil),
        path=str(path),
    )
    return _typed(row, path)


def _path_fields(parts: tuple[str, ...], root: Path) -> dict[str, Any]:
    """Fields encoded in a metrics path relative to the searched root (missing ones are absent)."""
    fields: dict[str, Any] = {"icfil": parts[-2] == "icfil", "dataset": parts[-3]}
    if len(parts) >= 5 and (match := _SEED.match(parts[-5])):
        fields["seed"] = int(match.group(1))
    if len(parts) >= 6 and (match := _SETTING.match(parts[-6])):
        fields["n_way"], fields["n_shot"] = int(match.group(1)), int(match.group(2))
    if len(parts) >= 7:
        fields["method"] = parts[-7]
    if len(parts) >= 8:
        fields["pool"] = parts[-8]
    fields["experiment"] = parts[-9] if len(parts) >= 9 else root.resolve().name
    return fields


def _learner(metrics: dict[str, Any]) -> str | None:
    """The meta-learner algorithm if the metrics record it (``learner`` as a name or a mapping)."""
    learner = metrics.get("learner", metrics.get("learner_algorithm"))
    if isinstance(learner, dict):
        learner = learner.get("algorithm")
    return None if learner is None else str(learner)


def _typed(row: dict[str, Any], path: Path) -> dict[str, Any]:
    """Cast the numeric fields of a metrics row, with one clear error naming the file."""
    try:
        for key in ("n_way", "n_shot", "seed"):
            row[key] = int(row[key])
        for key in ("accuracy", "ci95"):
            row[key] = float(row[key])
        for key in ("n_teachers", "episodes"):
            row[key] = None if row[key] is None else int(row[key])
    except (TypeError, ValueError):
        raise DataError(f"metrics file {path}: {key} must be a number, got {row[key]!r}") from None
    row["method"], row["dataset"] = str(row["method"]), str(row["dataset"])
    return row


# --------------------------------------------------------------------------------------------
# Summary over seeds
# --------------------------------------------------------------------------------------------


def summarise(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per method variant, dataset, setting and context (see the module docstring).

    Args:
        metrics: the frame of :func:`collect_metrics`.

    Returns:
        One row per group: the ``KEYS`` columns, ``setting``, ``accuracy`` (mean, percent), ``ci95``,
        ``n_seeds``, ``ci_kind`` (``"episodes"`` or ``"seeds"``) and ``seeds`` (comma-separated).

    Raises:
        DataError: the same seed appears twice in one group (naming both files).
    """
    keys = list(KEYS)
    rows = []
    for _, group in metrics.groupby(keys, dropna=False, sort=False):
        _check_unique_seeds(group)
        row = {key: group.iloc[0][key] for key in keys}
        row.update(_seed_stats(group["accuracy"].to_numpy(), group["ci95"].to_numpy()))
        row["seeds"] = ",".join(str(s) for s in sorted(group["seed"]))
        row["setting"] = setting_label(int(row["n_way"]), int(row["n_shot"]))
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary["n_teachers"] = summary["n_teachers"].astype("Int64")
    summary["episodes"] = summary["episodes"].astype("Int64")
    return summary


def _seed_stats(accuracy: np.ndarray, ci95: np.ndarray) -> dict[str, Any]:
    """Mean and 95% CI of per-seed accuracies ``[n]`` (percent); one seed keeps its episode CI."""
    n = len(accuracy)
    if n == 1:
        return {"accuracy": float(accuracy[0]), "ci95": float(ci95[0]), "n_seeds": 1, "ci_kind": "episodes"}
    sigma = float(np.std(accuracy, ddof=0))  # population sigma, as for the per-episode CI
    return {
        "accuracy": float(np.mean(accuracy)),
        "ci95": 1.96 * sigma / math.sqrt(n),
        "n_seeds": n,
        "ci_kind": "seeds",
    }


def _check_unique_seeds(group: pd.DataFrame) -> None:
    duplicated = group[group["seed"].duplicated(keep=False)]
    if not duplicated.empty:
        files = ", ".join(duplicated["path"])
        raise DataError(f"seed {duplicated['seed'].iloc[0]} appears twice for the same setting: {files}")


def varying_context(frame: pd.DataFrame, exclude: tuple[str, ...] = ()) -> list[str]:
    """The :data:`CONTEXT` columns (minus ``exclude``) with more than one value in ``frame``."""
    return [c for c in CONTEXT if c not in exclude and frame[c].nunique(dropna=False) > 1]


def context_value(column: str, value: Any) -> str:
    """A short display form of one context value, e.g. ``("n_teachers", 8) -> "8 teachers"``."""
    if value is None or pd.isna(value):
        return f"no {column.replace('_', ' ')}"
    if column in ("n_teachers", "episodes"):
        return f"{int(value)} {column.removeprefix('n_')}"
    if column == "teacher_weighting":
        return f"{value} weighting"
    return str(value)


def summary_metrics(summary: pd.DataFrame) -> dict[str, dict[str, float | int]]:
    """The flat mapping written to ``summary.json`` for DVC.

    Keys are ``[<context>/...]<dataset>/<n_way>w<n_shot>s/<method>[+icfil]``, with a context
    component only for the context columns that vary (e.g. two selection protocols).
    """
    varying = varying_context(summary)
    out: dict[str, dict[str, float | int]] = {}
    for _, row in summary.iterrows():
        parts = [context_value(c, row[c]) for c in varying]
        method = row["method"] + ("+icfil" if row["icfil"] else "")
        parts += [row["dataset"], f"{row['n_way']}w{row['n_shot']}s", method]
        key = "/".join(parts)
        if key in out:
            raise DataError(f"two summary rows share the key {key!r} (results under different pools?)")
        out[key] = {
            "accuracy": round(float(row["accuracy"]), 4),
            "ci95": round(float(row["ci95"]), 4),
            "n_seeds": int(row["n_seeds"]),
        }
    return out


def write_summary(path: str | Path, summary: pd.DataFrame) -> Path:
    """Atomically write :func:`summary_metrics` as JSON to ``path``."""
    write_json(path, summary_metrics(summary))
    return Path(path)


# --------------------------------------------------------------------------------------------
# Runs, curves, grids, manifests
# --------------------------------------------------------------------------------------------


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file with one clear error for a malformed file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{what} {path} is not readable JSON ({exc})") from None


def read_jsonl(path: Path) -> pd.DataFrame:
    """One row per JSON line of ``path`` (blank lines skipped); empty frame for an empty file."""
    records = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
    return pd.DataFrame.from_records(records)


def collect_runs(root: str | Path) -> list[Run]:
    """Meta-training run directories under ``root`` (those holding ``curve.jsonl`` or ``grids/``)."""
    root = Path(root)
    candidates = {p.parent for p in root.glob("**/curve.jsonl")} | {p.parent for p in root.glob("**/grids")}
    runs = []
    for path in sorted(candidates):
        seed, setting = _SEED.match(path.name), _SETTING.match(path.parent.name)
        if seed is None or setting is None:
            logger.debug("skipping %s: not a <method>/<n_way>w<n_shot>s/seed<k> run folder", path)
            continue
        pool = path.parent.parent.parent.name
        runs.append(
            Run(
                path,
                pool,
                path.parent.parent.name,
                int(setting.group(1)),
                int(setting.group(2)),
                int(seed.group(1)),
            )
        )
    return sorted(runs, key=lambda r: (method_rank(r.method), r.n_way, r.n_shot, r.seed, str(r.path)))


def read_curve(run: Run) -> pd.DataFrame:
    """``curve.jsonl`` of a run (empty frame if absent), sorted by iteration."""
    path = run.path / "curve.jsonl"
    frame = read_jsonl(path) if path.is_file() else pd.DataFrame()
    _require_columns(frame, path, ("iteration",))
    return frame.sort_values("iteration", kind="stable") if not frame.empty else frame


def read_val(run: Run) -> pd.DataFrame:
    """``val.jsonl`` of a run (empty frame if absent), sorted by iteration."""
    path = run.path / "val.jsonl"
    frame = read_jsonl(path) if path.is_file() else pd.DataFrame()
    _require_columns(frame, path, ("iteration", "accuracy"))
    return frame.sort_values("iteration", kind="stable") if not frame.empty else frame


def _require_columns(frame: pd.DataFrame, path: Path, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if not frame.empty and c not in frame.columns]
    if missing:
        raise DataError(f"{path}: records lack {missing}")


def latest_grid(run: Run) -> tuple[Path, int | None] | None:
    """The latest ``grids/*.png`` of a run and its iteration (from ``grid_iter<k>.png``), or None."""
    grids = list((run.path / "grids").glob("*.png"))
    if not grids:
        return None

    def iteration(path: Path) -> int | None:
        match = re.search(r"iter(\d+)", path.stem)
        return int(match.group(1)) if match else None

    best = max(grids, key=lambda p: (iteration(p) if iteration(p) is not None else -1, p.name))
    return best, iteration(best)


def _optional_number(value: object) -> float:
    """A manifest number as a float; NaN when absent or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return float("nan")
    return float(value)


def read_manifests(root: str | Path) -> pd.DataFrame:
    """Teachers of every ``**/pool/manifest.yaml`` under ``root``: pool, index, architecture,
    val_accuracy (percent), and, where the manifest records them (pools trained since the kept
    epoch is recorded), val_loss, kept_epoch and epochs (NaN otherwise). Empty frame if there is
    no manifest."""
    rows = []
    for path in sorted(Path(root).glob("**/pool/manifest.yaml")):
        try:
            manifest = read_yaml(path, "pool manifest")
        except PurerError as exc:
            raise DataError(str(exc)) from None
        teachers = manifest.get("teachers") if isinstance(manifest, dict) else None
        if not isinstance(teachers, list):
            raise DataError(f"pool manifest {path}: expected a `teachers` list")
        for position, teacher in enumerate(teachers):
            if not isinstance(teacher, dict) or teacher.get("val_accuracy") is None:
                raise DataError(f"pool manifest {path}: teachers[{position}] lacks val_accuracy")
            rows.append(
                {
                    "pool": path.parent.parent.name,
                    "index": int(teacher.get("index", position)),
                    "architecture": str(teacher.get("architecture", "?")),
                    "val_accuracy": 100.0 * float(teacher["val_accuracy"]),
                }
                | {key: _optional_number(teacher.get(key)) for key in ("val_loss", "kept_epoch", "epochs")}
            )
    return pd.DataFrame(rows)
