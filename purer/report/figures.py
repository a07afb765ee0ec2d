"""Seaborn figures of the report: accuracy per method, meta-training curves, synthesized-image
grids and the teacher pool.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot, no global
state), at fixed sizes and dpi, and saved without timestamps in their metadata, so the same
inputs give byte-identical files. Each figure function returns ``None`` when the data it needs is
absent, and the report skips it.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from purer.errors import ConfigError, DataError
from purer.io import atomic_path
from purer.report.aggregate import (
    Run,
    collect_runs,
    latest_grid,
    method_rank,
    read_curve,
    read_manifests,
    read_val,
    variant_label,
)
from purer.report.tables import Table

logger = logging.getLogger(__name__)

DPI = 150
PALETTE = "colorblind"
# Metadata keys that would carry a version string or a timestamp; None drops them.
SAVE_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}
RC = {"svg.hashsalt": "purer", "font.size": 8.0, "axes.titlesize": 9.0, "axes.labelsize": 8.0}
CURVE_METRICS = {"train_accuracy": "train accuracy", "loss_outer": "outer loss"}
SMOOTHING_FRACTION = 0.05  # trailing moving-average window, as a fraction of the curve's length
_GRID_NAME = re.compile(r"grid_iter(\d+)\.png")  # a run's first-domain grids (others end in _<domain>)


@contextlib.contextmanager
def _style() -> Iterator[None]:
    """The fixed seaborn style and rc settings every figure is built and saved under."""
    with matplotlib.rc_context(RC), sns.axes_style("whitegrid"):
        yield


def _setting_key(setting: str) -> list[int]:
    """Sort key of a setting label: ``"5-way 1-shot" -> [5, 1]``."""
    return [int(token.split("-")[0]) for token in setting.split()]


def _figure(nrows: int, ncols: int, panel: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure with an ``[nrows, ncols]`` grid of axes of ``panel`` (width, height) inches each."""
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


# --------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------


def accuracy_figure(table: Table) -> Figure:
    """Horizontal bars of mean accuracy with ``±ci95`` error bars; rows = datasets, columns = settings.

    Args:
        table: the ``main`` table (its labels and order are reused).
    """
    cells = table.cells.assign(label=[" / ".join(labels) for labels in table.cells["labels"]])
    order = list(dict.fromkeys(cells["label"]))
    colours = dict(zip(order, sns.color_palette(PALETTE, len(order)), strict=True))
    datasets = table.datasets
    with _style():
        fig, axes = _figure(len(datasets), len(table.settings), (3.6, 0.35 * len(order) + 1.0))
        for i, dataset in enumerate(datasets):
            for j, setting in enumerate(table.settings):
                panel = cells[(cells["dataset"] == dataset) & (cells["setting"] == setting)]
                _accuracy_panel(axes[i, j], panel, order, colours)
                axes[i, j].set_title(f"{dataset}, {setting}" if len(datasets) > 1 else setting)
                if j > 0:
                    axes[i, j].set_ylabel("")
    return fig


def _accuracy_panel(ax: Axes, panel: pd.DataFrame, order: list[str], colours: dict) -> None:
    if panel.empty:
        ax.axis("off")
        return
    sns.barplot(
        data=panel,
        x="mean",
        y="label",
        hue="label",
        order=order,
        hue_order=order,
        palette=colours,
        errorbar=None,
        legend=False,
        orient="h",
        ax=ax,
    )
    positions = [order.index(label) for label in panel["label"]]
    ax.errorbar(panel["mean"], positions, xerr=panel["ci95"], fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_xlabel("accuracy (%)")
    ax.set_ylabel("")


# --------------------------------------------------------------------------------------------
# Meta-training curves
# --------------------------------------------------------------------------------------------


def smooth(values: pd.Series) -> pd.Series:
    """Trailing moving average over ``max(1, SMOOTHING_FRACTION * len)`` points."""
    window = max(1, int(SMOOTHING_FRACTION * len(values)))
    return values.astype(float).rolling(window, min_periods=1).mean()


def _curve_frames(runs: list[Run]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long frames of (method, setting, seed, metric, iteration, value) and of switch events."""
    lines, switches = [], []
    for run in runs:
        curve, val = read_curve(run), read_val(run)
        ident = {"method": run.method, "setting": run.setting, "seed": run.seed}
        for column, metric in CURVE_METRICS.items():
            if not curve.empty and column in curve.columns:
                values = smooth(curve[column])
                lines.append(
                    pd.DataFrame(
                        {
                            **ident,
                            "metric": metric,
                            "iteration": curve["iteration"],
                            "value": values.to_numpy(),
                        }
                    )
                )
        if not val.empty:
            lines.append(
                pd.DataFrame(
                    {
                        **ident,
                        "metric": "val accuracy",
                        "iteration": val["iteration"],
                        "value": val["accuracy"].astype(float).to_numpy(),
                    }
                )
            )
        if not curve.empty and "switch" in curve.columns:
            fired = curve.loc[curve["switch"].eq(True), "iteration"]
            switches.append(pd.DataFrame({**ident, "iteration": fired.to_numpy()}))
    frame = pd.concat(lines, ignore_index=True) if lines else pd.DataFrame()
    events = pd.concat(switches, ignore_index=True) if switches else pd.DataFrame()
    return frame, events


def curves_figure(runs: list[Run]) -> Figure | None:
    """Smoothed train accuracy and outer loss, plus validation accuracy, vs meta-iteration.

    One column per method (PURER, EI, ...), one row per quantity, one line per run (hue =
    setting); curriculum switch events (docs/method.md §2.6) are ticks along the bottom of each panel.
    Returns None when no run has a curve.
    """
    frame, events = _curve_frames(runs)
    if frame.empty:
        return None
    trained = set(frame.loc[frame["metric"] != "val accuracy", "method"])  # random/average have no curve
    methods = sorted(trained or set(frame["method"]), key=method_rank)
    frame = frame[frame["method"].isin(methods)]
    metrics = [m for m in (*CURVE_METRICS.values(), "val accuracy") if m in set(frame["metric"])]
    settings = sorted(set(frame["setting"]), key=_setting_key)
    colours = dict(zip(settings, sns.color_palette(PALETTE, len(settings)), strict=True))
    with _style():
        fig, axes = _figure(len(metrics), len(methods), (3.4, 2.3))
        for j, method in enumerate(methods):
            for i, metric in enumerate(metrics):
                ax = axes[i, j]
                data = frame[(frame["method"] == method) & (frame["metric"] == metric)]
                _curve_panel(ax, data, events, method, colours, legend=(i == 0 and j == 0))
                ax.set_title(f"{variant_label(method, False)}: {metric}")
                ax.set_ylabel(metric)
        fig.suptitle("Meta-training (ticks: curriculum switches)")
    return fig


def _curve_panel(
    ax: Axes, data: pd.DataFrame, events: pd.DataFrame, method: str, colours: dict, legend: bool
) -> None:
    if data.empty:
        ax.axis("off")
        return
    sns.lineplot(
        data=data,
        x="iteration",
        y="value",
        hue="setting",
        hue_order=list(colours),
        palette=colours,
        units="seed",
        estimator=None,
        lw=1,
        legend=legend,
        ax=ax,
    )
    if not events.empty:
        mine = events[events["method"] == method]
        for setting, group in mine.groupby("setting", sort=True):
            ax.vlines(
                group["iteration"],
                0.0,
                0.06,
                transform=ax.get_xaxis_transform(),
                colors=[colours.get(setting, "black")],
                lw=0.8,
            )


# --------------------------------------------------------------------------------------------
# Synthesized image grids
# --------------------------------------------------------------------------------------------


def grids_figure(runs: list[Run]) -> Figure | None:
    """The latest synthesized-image grid of each (method, setting), lowest seed; None if no grid."""
    chosen: dict[tuple[str, str], tuple[Run, Path, int | None]] = {}
    for run in runs:  # sorted by method, setting, seed: keep the first (lowest seed)
        found = latest_grid(run)
        if found is not None:
            chosen.setdefault((run.method, run.setting), (run, *found))
    if not chosen:
        return None
    methods = sorted({m for m, _ in chosen}, key=method_rank)
    settings = sorted({s for _, s in chosen}, key=_setting_key)
    with _style():
        fig, axes = _figure(len(methods), len(settings), (3.0, 3.2))
        for i, method in enumerate(methods):
            for j, setting in enumerate(settings):
                ax = axes[i, j]
                ax.axis("off")
                if (method, setting) in chosen:
                    run, path, iteration = chosen[(method, setting)]
                    ax.imshow(_read_image(path), interpolation="nearest")
                    at = f", iteration {iteration}" if iteration is not None else ""
                    ax.set_title(f"{variant_label(method, False)}, {setting}\nseed {run.seed}{at}")
    return fig


def _read_image(path: Path) -> np.ndarray:
    """An RGB uint8 array ``[H, W, 3]`` from an image file, with a clear error if unreadable."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError as exc:
        raise DataError(f"image grid {path} is not a readable image ({exc})") from None


def _grid_files(run: Run) -> list[tuple[int, Path]]:
    """(iteration, path) of a run's first-domain grids ``grid_iter<k>.png``, by iteration."""
    found = []
    for path in (run.path / "grids").glob("grid_iter*.png"):
        match = _GRID_NAME.fullmatch(path.name)
        if match is not None:
            found.append((int(match.group(1)), path))
    return sorted(found)


def grids_over_time_figure(runs: list[Run]) -> Figure | None:
    """Every saved grid of each (method, setting), lowest seed, left to right by iteration.

    One row per (method, setting); the warm-up grid (just before the first reversed step) sits
    among them. Returns None unless some run has at least two grids.
    """
    chosen: dict[tuple[str, str], tuple[Run, list[tuple[int, Path]]]] = {}
    for run in runs:  # sorted by method, setting, seed: keep the first (lowest seed)
        grids = _grid_files(run)
        if grids:
            chosen.setdefault((run.method, run.setting), (run, grids))
    if not chosen or max(len(grids) for _, grids in chosen.values()) < 2:
        return None
    keys = sorted(chosen, key=lambda k: (method_rank(k[0]), _setting_key(k[1])))
    columns = max(len(grids) for _, grids in chosen.values())
    images = {key: [_read_image(path) for _, path in grids] for key, (_, grids) in chosen.items()}
    first = images[keys[0]][0]
    height = min(8.0, 2.0 * first.shape[0] / first.shape[1]) + 0.4  # panels follow the grids' aspect
    with _style():
        fig, axes = _figure(len(keys), columns, (2.0, height))
        for i, key in enumerate(keys):
            run, grids = chosen[key]
            for j in range(columns):
                ax = axes[i, j]
                ax.axis("off")
                if j < len(grids):
                    iteration, _ = grids[j]
                    ax.imshow(images[key][j], interpolation="nearest")
                    ax.set_title(f"{variant_label(key[0], False)}, {key[1]}\nseed {run.seed}, it {iteration}",
                                 fontsize=6)
        fig.suptitle("Dynamic dataset over meta-training\n(one row per class)")
    return fig


# --------------------------------------------------------------------------------------------
# Teachers' own cross-entropy on their images
# --------------------------------------------------------------------------------------------


def _teacher_ce_frame(runs: list[Run]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long frame (method, setting, seed, statistic, iteration, value) of the teachers' CE, and the
    switch events; runs whose curve lacks ``teacher_ce_max`` (older runs) are left out."""
    lines, switches = [], []
    for run in runs:
        curve = read_curve(run)
        if curve.empty or "teacher_ce_max" not in curve.columns:
            continue
        ident = {"method": run.method, "setting": run.setting, "seed": run.seed}
        for column, statistic in (("loss_ce", "mean over teachers"), ("teacher_ce_max", "max over teachers")):
            lines.append(pd.DataFrame({**ident, "statistic": statistic, "iteration": curve["iteration"],
                                       "value": curve[column].astype(float).to_numpy()}))
        if "switch" in curve.columns:
            fired = curve.loc[curve["switch"].eq(True), "iteration"]
            switches.append(pd.DataFrame({**ident, "iteration": fired.to_numpy()}))
    frame = pd.concat(lines, ignore_index=True) if lines else pd.DataFrame()
    events = pd.concat(switches, ignore_index=True) if switches else pd.DataFrame()
    return frame, events


def teacher_ce_figure(runs: list[Run]) -> Figure | None:
    """The teachers' own cross-entropy on their images (the inversion CE before each data step).

    Rows: mean and maximum over the teachers; columns: settings; hue: method, one line per seed
    (unsmoothed, log scale). Ticks along the bottom mark reversed steps (coloured by method): a
    curriculum that pushes images off their class shows as CE jumps after the ticks. Returns None
    when no curve has the per-teacher CE.
    """
    frame, events = _teacher_ce_frame(runs)
    if frame.empty:
        return None
    methods = sorted(set(frame["method"]), key=method_rank)
    settings = sorted(set(frame["setting"]), key=_setting_key)
    statistics = ["mean over teachers", "max over teachers"]
    colours = dict(zip(methods, sns.color_palette(PALETTE, len(methods)), strict=True))
    with _style():
        fig, axes = _figure(len(statistics), len(settings), (3.4, 2.3))
        for j, setting in enumerate(settings):
            for i, statistic in enumerate(statistics):
                ax = axes[i, j]
                data = frame[(frame["setting"] == setting) & (frame["statistic"] == statistic)]
                data = data.assign(method=[variant_label(m, False) for m in data["method"]])
                sns.lineplot(data=data, x="iteration", y="value", hue="method",
                             hue_order=[variant_label(m, False) for m in methods],
                             palette=[colours[m] for m in methods], units="seed", estimator=None, lw=1,
                             legend=(i == 0 and j == 0), ax=ax)
                ax.set_yscale("log")
                ax.set(title=f"{setting}: teacher CE, {statistic}", ylabel="cross-entropy")
                if not events.empty:
                    mine = events[events["setting"] == setting]
                    for method, group in mine.groupby("method", sort=True):
                        ax.vlines(group["iteration"], 0.0, 0.06, transform=ax.get_xaxis_transform(),
                                  colors=[colours.get(method, "black")], lw=0.8)
        fig.suptitle("Teachers' CE on their images\n(ticks: reversed steps)")
    return fig


# --------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------


def teachers_figure(summary: pd.DataFrame, root: str | Path) -> Figure | None:
    """Accuracy vs number of teachers when results for several pool sizes exist; otherwise the
    validation accuracy of each teacher of the pool manifest(s); None if neither is available."""
    sized = summary[summary["n_teachers"].notna()]
    if sized["n_teachers"].nunique() > 1:
        return _pool_size_figure(sized)
    manifests = read_manifests(root)
    return None if manifests.empty else _manifest_figure(manifests)


def _pool_size_figure(summary: pd.DataFrame) -> Figure:
    settings = sorted(set(summary["setting"]), key=_setting_key)
    variants = list(dict.fromkeys(summary["variant"]))
    colours = dict(zip(variants, sns.color_palette(PALETTE, len(variants)), strict=True))
    with _style():
        fig, axes = _figure(1, len(settings), (3.4, 2.6))
        for j, setting in enumerate(settings):
            ax = axes[0, j]
            for variant in variants:
                data = summary[(summary["setting"] == setting) & (summary["variant"] == variant)]
                data = data.sort_values("n_teachers")
                if not data.empty:
                    ax.errorbar(
                        data["n_teachers"].astype(int),
                        data["accuracy"],
                        yerr=data["ci95"],
                        marker="o",
                        capsize=3,
                        lw=1,
                        color=colours[variant],
                        label=variant,
                    )
            ax.set(title=setting, xlabel="number of teachers", ylabel="accuracy (%)")
        axes[0, 0].legend(fontsize=7)
    return fig


def _manifest_figure(manifests: pd.DataFrame) -> Figure:
    """Per pool, the validation accuracy of each teacher with its kept epoch written on the bar
    (``e12/40``) and, when the manifests record it, a second row with the validation loss of the
    kept epoch, so a saturated pool (every teacher at 100%) still shows how the teachers differ."""
    pools = list(dict.fromkeys(manifests["pool"]))
    architectures = sorted(set(manifests["architecture"]))
    colours = dict(zip(architectures, sns.color_palette(PALETTE, len(architectures)), strict=True))
    with_loss = bool(manifests["val_loss"].notna().any()) if "val_loss" in manifests else False
    with _style():
        fig, axes = _figure(2 if with_loss else 1, len(pools), (max(3.0, 0.3 * len(manifests) + 1.0), 2.6))
        for j, pool in enumerate(pools):
            data = manifests[manifests["pool"] == pool].sort_values("index")
            data = data.assign(teacher=[f"#{i}" for i in data["index"]])
            title = f"teachers of pool {pool}" + (f" ({architectures[0]})" if len(architectures) == 1 else "")
            ax = axes[0, j]
            _teacher_bars(ax, data, "val_accuracy", architectures, colours)
            ax.set(title=title, xlabel="teacher", ylabel="validation accuracy (%)", ylim=(0, 112))
            _label_kept_epochs(ax, data)
            if len(architectures) > 1:
                sns.move_legend(ax, "upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
            if with_loss:
                ax = axes[1, j]
                _teacher_bars(ax, data, "val_loss", architectures, colours, legend=False)
                ax.set(xlabel="teacher", ylabel="validation loss (kept epoch)")
                positive = data["val_loss"][data["val_loss"] > 0]
                if len(positive) and positive.max() > 20 * positive.min():
                    ax.set_yscale("log")
    return fig


def _teacher_bars(
    ax: Axes, data: pd.DataFrame, column: str, architectures: list[str], colours: dict, legend: bool = True
) -> None:
    sns.barplot(
        data=data,
        x="teacher",
        y=column,
        hue="architecture",
        hue_order=architectures,
        palette=colours,
        dodge=False,
        errorbar=None,
        legend=legend and len(architectures) > 1,
        ax=ax,
    )


def _label_kept_epochs(ax: Axes, data: pd.DataFrame) -> None:
    """``e<kept>/<epochs>`` above each bar whose manifest entry records the kept epoch."""
    if "kept_epoch" not in data:
        return
    for x, (kept, epochs, accuracy) in enumerate(zip(data["kept_epoch"], data["epochs"], data["val_accuracy"], strict=True)):
        if pd.notna(kept):
            label = f"e{int(kept)}" + (f"/{int(epochs)}" if pd.notna(epochs) else "")
            ax.text(x, accuracy + 1.5, label, ha="center", va="bottom", fontsize=6)


# --------------------------------------------------------------------------------------------
# Building and saving
# --------------------------------------------------------------------------------------------


def build_figures(summary: pd.DataFrame, main: Table, root: str | Path) -> dict[str, Figure]:
    """Every figure the data supports, by file stem: ``accuracy``, ``curves``, ``grids``,
    ``grids_over_time``, ``teacher_ce``, ``teachers``.

    Reads every input before anything is written, so a malformed file stops the report early.
    """
    runs = collect_runs(root)
    candidates = {
        "accuracy": accuracy_figure(main),
        "curves": curves_figure(runs),
        "grids": grids_figure(runs),
        "grids_over_time": grids_over_time_figure(runs),
        "teacher_ce": teacher_ce_figure(runs),
        "teachers": teachers_figure(summary, root),
    }
    for name, fig in candidates.items():
        if fig is None:
            logger.info("skipping figure %s: no data for it under %s", name, root)
    return {name: fig for name, fig in candidates.items() if fig is not None}


def check_formats(formats: tuple[str, ...]) -> None:
    """Raise ConfigError for a figure format that cannot be saved deterministically."""
    unknown = [f for f in formats if f not in SAVE_METADATA]
    if unknown:
        raise ConfigError(
            f"report.figure_formats: unsupported format {unknown[0]!r} (valid: {sorted(SAVE_METADATA)})"
        )


def save_figures(figures: dict[str, Figure], out_dir: str | Path, formats: tuple[str, ...]) -> list[Path]:
    """Atomically save each figure as ``<out_dir>/<name>.<format>``; returns the paths written."""
    check_formats(formats)
    written = []
    for name, fig in figures.items():
        for fmt in formats:
            path = Path(out_dir) / f"{name}.{fmt}"
            with _style(), atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=DPI, metadata=SAVE_METADATA[fmt])
            written.append(path)
    return written
