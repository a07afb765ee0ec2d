"""DVC's view of one experiment: a few metrics and plot data, written after the report.

``python -m purer.report.dvc_export --config FILE`` (the command of each ``dvc.yaml`` stage, after
Snakemake) reads the experiment's results and writes, under ``results/<experiment>/``:

- ``metrics.json``: the headline, four numbers per experiment so that ``dvc metrics show`` and
  ``dvc exp show`` stay readable on an 80-column terminal: per setting ``[<dataset>.]<setting>``
  (``1s``, ``5s`` for 5-way; ``<n_way>w<n_shot>s`` otherwise), ``purer`` (PURER's test accuracy,
  percent) and ``purer-ei`` (the paired PURER − EI difference on the same episodes, percentage
  points; the report's ``differences`` table has its interval). One file per experiment, so
  ``dvc exp show`` names the columns without the file's path. Every variant's accuracy and
  interval is in ``plots/accuracy.csv`` and the report;
- ``plots/accuracy.csv``: one row per (variant, setting) with the interval's bounds and the chance
  level (``1/n_way``);
- ``plots/train_curves.csv``: smoothed training accuracy per iteration, one series per run;
- ``plots/val_curves.csv``: validation accuracy per iteration with its 95% interval over the
  validation episodes, one series per run.

The plot templates (``.dvc/plots/*.json``) draw one line or bar per series. The plots folder is
replaced whole, so a variant or setting that disappeared leaves no stale file.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import pandas as pd

from purer import paths
from purer.arms import run_names
from purer.config import load_config
from purer.io import atomic_dir, write_json
from purer.report import aggregate
from purer.report.figures import smooth
from purer.variants import ICFIL, PLAIN

logger = logging.getLogger(__name__)

ICFIL_CAVEAT = "ICFIL-reconstruction"  # ICFIL is a reconstruction of the paper's description


def variant_name(method: str, test_variant: str) -> str:
    """File stem / series name of a method variant: ``purer``, ``purer+ICFIL-reconstruction``."""
    return method if test_variant == PLAIN else f"{method}+{ICFIL_CAVEAT}"


def setting_key(row: pd.Series, several_datasets: bool) -> str:
    """``5w1s`` (``glyphs.5w1s`` when the experiment tests on several datasets)."""
    setting = f"{int(row['n_way'])}w{int(row['n_shot'])}s"
    return f"{row['dataset']}.{setting}" if several_datasets else setting


def main_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Plain and ICFIL rows of the summary, the first of each (method, variant, dataset, setting)."""
    rows = summary[summary["test_variant"].isin((PLAIN, ICFIL))]
    keys = ["method", "test_variant", "dataset", "n_way", "n_shot"]
    if rows.duplicated(keys).any():
        logger.warning("several results per cell (different protocols?): DVC metrics keep the first of each")
    return rows.drop_duplicates(keys)


HEADLINE_METHOD = "purer"
BASELINE_METHOD = "ei"  # the headline difference: PURER − EI, paired on the same episodes


def short_setting(row: pd.Series, several_datasets: bool) -> str:
    """``1s`` for 5-way 1-shot (``10w1s`` for other ways); ``glyphs.1s`` when there are several datasets."""
    n_way, n_shot = int(row["n_way"]), int(row["n_shot"])
    setting = f"{n_shot}s" if n_way == 5 else f"{n_way}w{n_shot}s"
    return f"{row['dataset']}.{setting}" if several_datasets else setting


def metrics_files(summary: pd.DataFrame, differences: pd.DataFrame | None = None) -> dict[str, dict[str, float]]:
    """``{setting: {"purer": accuracy %, "purer-ei": paired difference (points)}}`` of the plain results.

    A setting without a PURER result is left out; ``purer-ei`` is left out where EI was not tested
    on the same episodes (no paired difference).
    """
    rows = main_rows(summary)
    rows = rows[(rows["test_variant"] == PLAIN) & (rows["method"] == HEADLINE_METHOD)]
    several = main_rows(summary)["dataset"].nunique() > 1
    out: dict[str, dict[str, float]] = {}
    for _, row in rows.iterrows():
        out[short_setting(row, several)] = {HEADLINE_METHOD: round(float(row["accuracy"]), 2)}
    if differences is not None and not differences.empty:
        pairs = differences[
            (differences["a_method"] == HEADLINE_METHOD) & (differences["a_variant"] == PLAIN)
            & (differences["b_method"] == BASELINE_METHOD) & (differences["b_variant"] == PLAIN)
        ]
        for _, row in pairs.iterrows():
            key = short_setting(row, several)
            if key in out:
                out[key][f"{HEADLINE_METHOD}-{BASELINE_METHOD}"] = round(float(row["difference"]), 2)
    return out


def accuracy_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``plots/accuracy.csv``: variant, setting, accuracy, ci_low, ci_high, chance, interval."""
    rows = main_rows(summary)
    several = rows["dataset"].nunique() > 1
    frame = pd.DataFrame(
        {
            "variant": [variant_name(m, v) for m, v in zip(rows["method"], rows["test_variant"], strict=True)],
            "setting": [setting_key(row, several) for _, row in rows.iterrows()],
            "accuracy": rows["accuracy"].round(2).to_numpy(),
            "ci_low": (rows["accuracy"] - rows["ci95"]).round(2).to_numpy(),
            "ci_high": (rows["accuracy"] + rows["ci95"]).round(2).to_numpy(),
            "chance": (100.0 / rows["n_way"].astype(float)).round(2).to_numpy(),
            "interval": [_interval(kind, n) for kind, n in zip(rows["ci_kind"], rows["n_seeds"], strict=True)],
        }
    )
    return frame.sort_values(["setting", "variant"], kind="stable")


def _interval(ci_kind: str, n_seeds: int) -> str:
    if ci_kind == "seeds":
        return f"95% t-interval across {int(n_seeds)} seeds"
    return "95% CI over test episodes (1 seed)"


def curve_frames(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) long frames: iteration, series (``purer 5w1s seed0``), value columns."""
    train, val = [], []
    for run in aggregate.collect_runs(root):
        series = f"{run.method} {run.n_way}w{run.n_shot}s seed{run.seed}"
        curve, validation = aggregate.read_curve(run), aggregate.read_val(run)
        if not curve.empty and "train_accuracy" in curve.columns:
            train.append(pd.DataFrame({"iteration": curve["iteration"].to_numpy(), "series": series,
                                       "train_accuracy": smooth(curve["train_accuracy"]).round(2).to_numpy()}))
        if not validation.empty:
            accuracy = validation["accuracy"].astype(float)
            ci95 = validation["ci95"].astype(float) if "ci95" in validation else accuracy * math.nan
            val.append(pd.DataFrame({"iteration": validation["iteration"].to_numpy(), "series": series,
                                     "val_accuracy": accuracy.round(2).to_numpy(),
                                     "ci_low": (accuracy - ci95).round(2).to_numpy(),
                                     "ci_high": (accuracy + ci95).round(2).to_numpy()}))
    empty_train = pd.DataFrame(columns=["iteration", "series", "train_accuracy"])
    empty_val = pd.DataFrame(columns=["iteration", "series", "val_accuracy", "ci_low", "ci_high"])
    return (pd.concat(train, ignore_index=True) if train else empty_train,
            pd.concat(val, ignore_index=True) if val else empty_val)


def export(config_path: str | Path) -> list[Path]:
    """Write the experiment's DVC metrics and plot data; returns the paths written."""
    config = load_config(config_path)
    root = paths.experiment_dir(config)
    metrics = aggregate.collect_metrics(root, bases={name: arm.method for name, arm in run_names(config).items()})
    summary = aggregate.summarise(metrics)
    files = metrics_files(summary, aggregate.paired_differences(metrics))
    accuracy = accuracy_frame(summary)
    train, val = curve_frames(root)
    written = []
    write_json(root / "metrics.json", files)
    written.append(root / "metrics.json")
    with atomic_dir(root / "plots") as tmp:
        for name, frame in (("accuracy", accuracy), ("train_curves", train), ("val_curves", val)):
            frame.to_csv(tmp / f"{name}.csv", index=False)
            written.append(root / "plots" / f"{name}.csv")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m purer.report.dvc_export", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, metavar="FILE", help="the experiment's config file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for path in export(args.config):
        logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
