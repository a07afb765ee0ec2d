"""Gather the pipeline's outputs (metrics, curves, grids, pool manifests) into data frames.

One row per ``metrics.json`` (a meta-test of one run, one test variant: plain, ICFIL or one of
ICFIL's controls, purer/variants.py), then a summary per method variant, dataset and setting over
seeds (docs/method.md §4):

- one seed: that seed's accuracy and its per-episode 95% CI (``ci_kind = "episodes"``);
- several seeds: the mean of the per-seed accuracies and the Student t interval
  ``t_{0.975, n-1} * s / sqrt(n)`` across them, ``s`` the sample standard deviation (ddof 1) of
  the ``n`` seed means (``ci_kind = "seeds"``); the per-seed values are kept (``seed_accuracies``).

Paired differences (:func:`paired_differences`): every method sees the same fixed test episodes,
so two results of the same run setting and seed are compared episode by episode (the episodes'
digests must agree). Per seed, the mean per-episode difference and its t interval; over several
seeds, the t interval of the per-seed mean differences. Compared: PURER − EI (per test variant),
every non-plain variant − plain (per method), and ICFIL − each control (per method).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from purer.errors import DataError, PurerError
from purer.io import read_yaml, write_json
from purer.manual import is_manual
from purer.pipeline import REPORT_ORDER
from purer.statistics import paired_difference, t_interval
from purer.variants import ICFIL, NOISE, PLAIN, SUPPORT, VARIANT_PATTERN

logger = logging.getLogger(__name__)

VARIANT_NAMES = {"purer": "PURER", "ei": "EI (no curriculum)", "random": "Random", "average": "Average"}
METHOD_ORDER = REPORT_ORDER  # baselines first, the method last (paper style)
ICFIL_NOTE = "ICFIL is a reconstruction of the paper's description (no official code)"
VARIANT_SUFFIXES = {
    PLAIN: "",
    ICFIL: " + ICFIL",
    NOISE: " + ICFIL on noise",
    SUPPORT: " + support-only fine-tuning",
}
MAIN_VARIANTS = (PLAIN, ICFIL)  # the rows of the main table; the controls go to the ICFIL ablation
SELECTION_NOTES = {
    "val": "checkpoint selected on the validation split",
    "best-on-test": "best-on-test, authors' protocol",
    "last": "last checkpoint (no selection)",
}
# Columns that describe the experimental context of a row; the tables name them when they vary.
CONTEXT = ("experiment", "scenario", "learner", "teacher_weighting", "n_teachers", "selection", "episodes")
KEYS = CONTEXT + ("pool", "method", "variant", "test_variant", "icfil", "dataset", "n_way", "n_shot")
PAIR_KEYS = CONTEXT + ("pool", "dataset", "n_way", "n_shot")  # what two paired results share
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


def arm_label(name: str, base: str | None = None) -> str:
    """Display name of a run name: a method's (``"PURER"``), or an arm's with its base method
    (``"purer-parity [PURER]"``)."""
    if base is None or base == name:
        return VARIANT_NAMES.get(name, name)
    return f"{name} [{VARIANT_NAMES.get(base, base)}]"


def variant_label(method: str, icfil: bool | str, base: str | None = None) -> str:
    """Display name of a method variant, e.g. ``("purer", True) -> "PURER + ICFIL"``,
    ``("purer", "plain-steps16") -> "PURER, 16 inner steps"``; an arm's name carries its base method."""
    name = arm_label(method, base)
    test_variant = icfil if isinstance(icfil, str) else (ICFIL if icfil else PLAIN)
    if test_variant in VARIANT_SUFFIXES:
        return name + VARIANT_SUFFIXES[test_variant]
    if match := re.match(r"^plain-steps(\d+)$", test_variant):
        return f"{name}, {match.group(1)} inner steps"
    return f"{name} ({test_variant})"


def setting_label(n_way: int, n_shot: int) -> str:
    """Column title of a few-shot setting, e.g. ``"5-way 1-shot"``."""
    return f"{n_way}-way {n_shot}-shot"


def method_rank(method: str) -> tuple[int, str]:
    """Sort key putting the known methods in :data:`METHOD_ORDER`, others after them by name."""
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def collect_metrics(
    root: str | Path, files: Sequence[Path] | None = None, bases: dict[str, str] | None = None
) -> pd.DataFrame:
    """One row per ``**/test/<dataset>/{plain,icfil}/metrics.json`` under ``root``, or per file of
    ``files`` (the configured grid's, :func:`purer.grid.grid_tests`) that exists.

    ``bases``: the base method of each run name (:func:`purer.arms.base_method`; a name not in it is
    its own base), in the ``base_method`` column and the labels. When some run is an arm (a name
    with another base), ``teacher_weighting`` is left out of the context: arms carry their
    settings in their names, and runs of different weightings are then paired.

    Fields inside ``metrics.json`` win; the run's path
    (``[<experiment>/]<pool>/<method>/<n_way>w<n_shot>s/seed<k>/test/<dataset>/<plain|icfil>/``)
    fills in what the file lacks.

    Returns:
        A frame with columns ``KEYS + ("seed", "accuracy", "ci95", "path")``, plus
        ``accuracies`` (per-episode list or None), ``episodes_digest`` and the labelled
        ``best_on_test_accuracy`` / ``best_on_test_ci95`` (NaN when absent); accuracies in percent,
        sorted by method order, dataset, setting and seed.

    Raises:
        DataError: no metrics under ``root`` (naming the folder), or a malformed file (naming it).
    """
    root = Path(root)
    if files is None:
        files = sorted(
            p for p in root.glob("**/test/*/*/metrics.json")
            if VARIANT_PATTERN.match(p.parent.name) and not is_manual(p, root)
        )
    else:
        files = sorted(Path(p) for p in files if Path(p).is_file())
    if not files:
        raise DataError(
            f"no metrics found under {root}: expected <pool>/<method>/<n_way>w<n_shot>s/seed<k>/"
            "test/<dataset>/<plain|icfil|control>/metrics.json (run `purer meta-test` first)"
        )
    frame = pd.DataFrame([_metrics_row(path, root) for path in files])
    bases = bases or {}
    frame["base_method"] = [bases.get(m, m) for m in frame["method"]]
    frame["variant"] = [variant_label(m, v, b) for m, v, b in
                        zip(frame["method"], frame["test_variant"], frame["base_method"], strict=True)]
    if any(name != base for name, base in bases.items()):
        frame["teacher_weighting"] = None
    frame["n_teachers"] = frame["n_teachers"].astype("Int64")
    frame["episodes"] = frame["episodes"].astype("Int64")
    frame["_rank"] = frame["method"].map(method_rank)
    frame["_variant"] = frame["test_variant"].map(_variant_rank)
    frame = frame.sort_values(["_rank", "_variant", "dataset", "n_way", "n_shot", "seed", "path"], kind="stable")
    logger.info("collected %d metrics files under %s", len(frame), root)
    return frame.drop(columns=["_rank", "_variant"]).reset_index(drop=True)


def _variant_rank(name: str) -> tuple[int, int, str]:
    """Display order: plain, the matched-step controls (by steps), support-only, noise, ICFIL."""
    if match := re.match(r"^plain-steps(\d+)$", name):
        return (1, int(match.group(1)), name)
    order = {PLAIN: 0, SUPPORT: 2, NOISE: 3, ICFIL: 4}
    return (order.get(name, 5), 0, name)


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
    test_variant = str(metrics.get("test_variant") or from_path["test_variant"])
    best = metrics.get("best_on_test") if isinstance(metrics.get("best_on_test"), dict) else {}
    accuracies = metrics.get("accuracies")
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
        test_variant=test_variant,
        variant=variant_label(str(row["method"]), test_variant),
        accuracies=[float(a) for a in accuracies] if isinstance(accuracies, list) else None,
        episodes_digest=metrics.get("episodes_digest"),
        best_on_test_accuracy=float(best.get("accuracy", math.nan)),
        best_on_test_ci95=float(best.get("ci95", math.nan)),
        path=str(path),
    )
    return _typed(row, path)


def _path_fields(parts: tuple[str, ...], root: Path) -> dict[str, Any]:
    """Fields encoded in a metrics path relative to the searched root (missing ones are absent)."""
    fields: dict[str, Any] = {"icfil": parts[-2] in (ICFIL, NOISE), "test_variant": parts[-2], "dataset": parts[-3]}
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
        ``n_seeds``, ``ci_kind`` (``"episodes"`` or ``"seeds"``), ``seeds`` (comma-separated),
        ``seed_accuracies`` (``"seed:accuracy"`` pairs, ``;``-separated) and the labelled
        best-on-test mean over seeds ``best_on_test`` (NaN where no run recorded it).

    Raises:
        DataError: the same seed appears twice in one group (naming both files).
    """
    keys = list(KEYS)
    rows = []
    for _, group in metrics.groupby(keys, dropna=False, sort=False):
        _check_unique_seeds(group)
        row = {key: group.iloc[0][key] for key in keys}
        row["base_method"] = group.iloc[0].get("base_method", row["method"])
        row.update(_seed_stats(group["accuracy"].to_numpy(), group["ci95"].to_numpy()))
        row["seeds"] = ",".join(str(s) for s in sorted(group["seed"]))
        ordered = group.sort_values("seed")
        row["seed_accuracies"] = ";".join(f"{s}:{a:.4f}" for s, a in zip(ordered["seed"], ordered["accuracy"], strict=True))
        best = group["best_on_test_accuracy"].astype(float)
        row["best_on_test"] = float(best.mean()) if best.notna().all() else math.nan
        row["setting"] = setting_label(int(row["n_way"]), int(row["n_shot"]))
        rows.append(row)
    summary = pd.DataFrame(rows)
    summary["n_teachers"] = summary["n_teachers"].astype("Int64")
    summary["episodes"] = summary["episodes"].astype("Int64")
    return summary


def _seed_stats(accuracy: np.ndarray, ci95: np.ndarray) -> dict[str, Any]:
    """Mean and 95% CI of per-seed accuracies ``[n]`` (percent); one seed keeps its episode CI,
    several get the Student t interval (ddof 1) across seeds."""
    n = len(accuracy)
    if n == 1:
        return {"accuracy": float(accuracy[0]), "ci95": float(ci95[0]), "n_seeds": 1, "ci_kind": "episodes"}
    mean, half_width = t_interval(np.asarray(accuracy, dtype=float).tolist())
    return {"accuracy": mean, "ci95": half_width, "n_seeds": n, "ci_kind": "seeds"}


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
        parts += [row["dataset"], f"{row['n_way']}w{row['n_shot']}s", result_key(row["method"], row["test_variant"])]
        key = "/".join(parts)
        if key in out:
            raise DataError(f"two summary rows share the key {key!r} (results under different pools?)")
        out[key] = {
            "accuracy": round(float(row["accuracy"]), 4),
            "ci95": round(float(row["ci95"]), 4),
            "n_seeds": int(row["n_seeds"]),
        }
        base = row.get("base_method", row["method"])
        if isinstance(base, str) and base != row["method"]:
            out[key]["base_method"] = base  # an arm (or a sweep): the method it runs
        if not pd.isna(row.get("best_on_test", math.nan)):
            out[key]["best_on_test"] = round(float(row["best_on_test"]), 4)
    return out


def result_key(method: str, test_variant: str) -> str:
    """Short key of a method variant: ``purer``, ``purer+icfil``, ``purer+plain-steps16``."""
    return method if test_variant == PLAIN else f"{method}+{test_variant}"


def difference_metrics(differences: pd.DataFrame, varying: list[str]) -> dict[str, dict[str, Any]]:
    """``summary.json`` entries of the paired differences, keyed like the accuracies with
    ``<a> - <b>`` as the last component (e.g. ``glyphs/5w1s/purer - ei``)."""
    out: dict[str, dict[str, Any]] = {}
    for _, row in differences.iterrows():
        parts = [context_value(c, row[c]) for c in varying]
        pair = f"{result_key(row['a_method'], row['a_variant'])} - {result_key(row['b_method'], row['b_variant'])}"
        key = "/".join([*parts, row["dataset"], f"{row['n_way']}w{row['n_shot']}s", pair])
        ci95 = float(row["ci95"])
        out[key] = {
            "difference": round(float(row["difference"]), 4),
            "ci95": None if math.isnan(ci95) else round(ci95, 4),
            "n_seeds": int(row["n_seeds"]),
            "episodes": int(row["n_episodes"]),
        }
    return out


def icfil_verdicts(differences: pd.DataFrame) -> pd.DataFrame:
    """Whether ICFIL helps, per method and cell: only where it beats plain and *every* control
    present with a paired 95% interval above zero (``helps``); ``controls`` counts them.

    Returns:
        One row per (``PAIR_KEYS``, method): ``helps`` (bool), ``controls`` (int), ``beaten`` (int).
    """
    rows = []
    icfil = differences[(differences["a_variant"] == ICFIL) & (differences["a_method"] == differences["b_method"])]
    for key, group in icfil.groupby([*PAIR_KEYS, "a_method"], dropna=False, sort=False):
        lower = group["difference"] - group["ci95"].fillna(math.inf)
        row = dict(zip([*PAIR_KEYS, "method"], key, strict=True))
        beaten = int((lower > 0).sum())
        row.update(controls=len(group), beaten=beaten, helps=bool(beaten == len(group) and len(group) > 1))
        rows.append(row)
    return pd.DataFrame(rows)


def write_summary(
    path: str | Path, summary: pd.DataFrame, differences: pd.DataFrame | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Atomically write :func:`summary_metrics` (and the paired differences and ICFIL verdicts,
    when given) as JSON to ``path``."""
    data: dict[str, Any] = summary_metrics(summary)
    if differences is not None and not differences.empty:
        varying = varying_context(summary)
        data |= difference_metrics(differences, varying)
        for _, row in icfil_verdicts(differences).iterrows():
            parts = [context_value(c, row[c]) for c in varying]
            key = "/".join([*parts, row["dataset"], f"{row['n_way']}w{row['n_shot']}s", f"{row['method']}+icfil verdict"])
            data[key] = {"helps": bool(row["helps"]), "controls_beaten": int(row["beaten"]), "compared": int(row["controls"])}
    data |= extra or {}  # e.g. the sweeps' validation scores (purer.report.sweeps.selection_metrics)
    write_json(path, data)
    return Path(path)


# --------------------------------------------------------------------------------------------
# Paired differences on the shared test episodes
# --------------------------------------------------------------------------------------------


DEFAULT_PAIRS = (("purer", "ei"),)  # the method pairs compared when ``grid.pairs`` is empty


def comparisons(
    metrics: pd.DataFrame, pairs: Sequence[Sequence[str]] = ()
) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """The (method, variant) pairs ``(a, b)`` whose difference ``a − b`` the report shows: the run
    pairs ``pairs`` (``grid.pairs``; default PURER − EI) in every test variant both have, then every
    non-plain variant − plain and ICFIL − each control, per method."""
    present = set(zip(metrics["method"], metrics["test_variant"], strict=True))
    pairs_list = []
    for first, second in pairs or DEFAULT_PAIRS:
        for variant in sorted({v for _, v in present}, key=_variant_rank):
            if (first, variant) in present and (second, variant) in present:
                pairs_list.append(((first, variant), (second, variant)))
    pairs = pairs_list
    for method in sorted({m for m, _ in present}, key=method_rank):
        variants = sorted((v for m, v in present if m == method), key=_variant_rank)
        pairs += [((method, v), (method, PLAIN)) for v in variants if v != PLAIN and (method, PLAIN) in present]
        if (method, ICFIL) in present:
            pairs += [((method, ICFIL), (method, v)) for v in variants if v not in (PLAIN, ICFIL)]
    return pairs


def paired_differences(metrics: pd.DataFrame, pairs: Sequence[Sequence[str]] = ()) -> pd.DataFrame:
    """Paired per-episode differences for :func:`comparisons` (see the module docstring).

    Results without per-episode accuracies are skipped. Two results are paired when they share
    ``PAIR_KEYS`` and the seed.

    Returns:
        One row per comparison and cell: ``PAIR_KEYS``, ``setting``, ``a_method``, ``a_variant``,
        ``b_method``, ``b_variant``, ``label`` (e.g. ``"PURER − EI"``), ``difference`` (percentage
        points), ``ci95``, ``n_seeds``, ``ci_kind``, ``n_episodes``, ``seed_differences``.

    Raises:
        DataError: two paired results were scored on different episodes (naming both files).
    """
    usable = metrics[metrics["accuracies"].notna()]
    labels = dict(zip(zip(metrics["method"], metrics["test_variant"], strict=True), metrics["variant"], strict=True))
    rows = []
    for a, b in comparisons(usable, pairs):
        left = usable[(usable["method"] == a[0]) & (usable["test_variant"] == a[1])]
        right = usable[(usable["method"] == b[0]) & (usable["test_variant"] == b[1])]
        merged = left.merge(right, on=[*PAIR_KEYS, "seed"], suffixes=("_a", "_b"), how="inner")
        for key, group in merged.groupby(list(PAIR_KEYS), dropna=False, sort=False):
            per_seed = [_paired_seed(r) for _, r in group.sort_values("seed").iterrows()]
            row = dict(zip(PAIR_KEYS, key, strict=True))
            row.update(
                setting=setting_label(int(row["n_way"]), int(row["n_shot"])),
                a_method=a[0], a_variant=a[1], b_method=b[0], b_variant=b[1],
                label=f"{labels.get(a, variant_label(*a))} − {labels.get(b, variant_label(*b))}",
                n_episodes=len(group.iloc[0]["accuracies_a"]),
                seed_differences=";".join(f"{s}:{d:.4f}" for s, (d, _) in zip(sorted(group["seed"]), per_seed, strict=True)),
            )
            if len(per_seed) == 1:
                row.update(difference=per_seed[0][0], ci95=per_seed[0][1], n_seeds=1, ci_kind="episodes")
            else:
                mean, half_width = t_interval([d for d, _ in per_seed])
                row.update(difference=mean, ci95=half_width, n_seeds=len(per_seed), ci_kind="seeds")
            rows.append(row)
    columns = [*PAIR_KEYS, "setting", "a_method", "a_variant", "b_method", "b_variant", "label", "difference",
               "ci95", "n_seeds", "ci_kind", "n_episodes", "seed_differences"]
    return pd.DataFrame(rows, columns=columns)


def _paired_seed(row: pd.Series) -> tuple[float, float]:
    """(mean difference, t half-width) of one seed's paired results, after checking the pairing."""
    a, b = row["accuracies_a"], row["accuracies_b"]
    digests = (row["episodes_digest_a"], row["episodes_digest_b"])
    known = all(isinstance(d, str) for d in digests)
    if len(a) != len(b) or (known and digests[0] != digests[1]):
        raise DataError(
            f"cannot pair {row['path_a']} with {row['path_b']}: they were scored on different test episodes "
            f"({len(a)} vs {len(b)} episodes, digests {digests[0]} vs {digests[1]}); re-run `purer meta-test`"
        )
    return paired_difference(a, b)


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
    candidates = {p for p in candidates if not is_manual(p, root)}
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
    for path in sorted(p for p in Path(root).glob("**/pool/manifest.yaml") if not is_manual(p, Path(root))):
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
