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

from purer.data.cache import load_split
from purer.errors import ConfigError, DataError, PurerError
from purer.io import atomic_path, read_yaml
from purer.report.aggregate import (
    Run,
    collect_runs,
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
CURVE_METRICS = {"train_accuracy": "train accuracy (%)", "loss_outer": "outer loss"}
VAL_METRIC = "val accuracy (%)"
SMOOTHING_FRACTION = 0.05  # trailing moving-average window, as a fraction of the curve's length
_GRID_NAME = re.compile(r"grid_iter(\d+)\.png")  # a run's first-domain grids (others end in _<domain>)
GRID_PADDING = 2  # black pixels above and left of every cell of a class grid (purer/inversion/dataset.py)
GRID_CLASSES, GRID_IMAGES, GRID_ITERATIONS = 4, 4, 3  # rows, images per row and iterations shown
GRID_INCHES_PER_IMAGE = 0.42


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
    """Horizontal bars of mean accuracy with labelled error bars; rows = datasets, columns = settings.

    Every panel shares one accuracy axis (0 to 100 %), so shots compare at a glance; a dashed line
    marks chance (``100 / n_way``); the x label says what the error bars are (Student t interval
    across seeds, or the 95% CI over test episodes for one seed); ICFIL bars carry the caveat.

    Args:
        table: the ``main`` table (its labels and order are reused).
    """
    cells = table.cells.assign(label=[icfil_caveat(" / ".join(labels)) for labels in table.cells["labels"]])
    order = list(dict.fromkeys(cells["label"]))
    colours = dict(zip(order, sns.color_palette(PALETTE, len(order)), strict=True))
    datasets = table.datasets
    with _style():
        fig, axes = _figure(len(datasets), len(table.settings), (3.6, 0.35 * len(order) + 1.2))
        for i, dataset in enumerate(datasets):
            for j, setting in enumerate(table.settings):
                panel = cells[(cells["dataset"] == dataset) & (cells["setting"] == setting)]
                _accuracy_panel(axes[i, j], panel, order, colours)
                axes[i, j].set_title(f"{dataset}, {setting}" if len(datasets) > 1 else setting)
                axes[i, j].set_xlim(0, 100)
                if j > 0:
                    axes[i, j].set_ylabel("")
                    axes[i, j].tick_params(labelleft=False)
        fig.suptitle(f"Test accuracy; error bars: {error_bar_label(table.cells)}")
    return fig


def icfil_caveat(label: str) -> str:
    """``"PURER + ICFIL"`` -> ``"PURER + ICFIL (reconstruction)"``: ICFIL has no official code."""
    return label.replace("ICFIL", "ICFIL (reconstruction)") if "ICFIL" in label and "reconstruction" not in label else label


def error_bar_label(cells: pd.DataFrame) -> str:
    """What the ``ci95`` of these cells is: a t interval across seeds or the episodes' 95% CI."""
    kinds = set(cells["ci_kind"]) if "ci_kind" in cells else {"episodes"}
    seeds = sorted({int(n) for n in cells["n_seeds"]}) if "n_seeds" in cells else [1]
    if kinds == {"seeds"}:
        return f"95% t-interval across {'/'.join(map(str, seeds))} seeds"
    if kinds == {"episodes"}:
        return "95% CI over test episodes (1 seed)"
    return "95% t-interval across seeds (several seeds) or over test episodes (1 seed)"


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
    if "n_way" in panel:
        for n_way in sorted({int(n) for n in panel["n_way"]}):
            ax.axvline(100.0 / n_way, color="grey", ls="--", lw=0.9, zorder=0)
            ax.text(100.0 / n_way, 0.01, f" chance 1/{n_way}", transform=ax.get_xaxis_transform(),
                    fontsize=6, color="grey", va="bottom", ha="left")
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
    """Long frames of (method, setting, seed, metric, iteration, value[, ci95]) and of switch events."""
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
            ci95 = val["ci95"].astype(float).to_numpy() if "ci95" in val.columns else np.full(len(val), np.nan)
            lines.append(
                pd.DataFrame(
                    {
                        **ident,
                        "metric": VAL_METRIC,
                        "iteration": val["iteration"],
                        "value": val["accuracy"].astype(float).to_numpy(),
                        "ci95": ci95,
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
    """Meta-training of every method overlaid per setting: smoothed train accuracy and outer loss,
    and the validation accuracy with its 95% band over the validation episodes, vs meta-iteration.

    One column per setting, one row per quantity; within a row every panel shares the y axis, so
    methods and shots compare at a glance; hue = method, one line per seed. Accuracy panels carry
    a dashed chance line (``100 / n_way``); ticks along the bottom mark curriculum switches
    (docs/method.md §2.6), coloured by method. Random and Average are not trained: they appear
    only in the validation row. Returns None when no run has a curve.
    """
    frame, events = _curve_frames(runs)
    if frame.empty:
        return None
    methods = sorted(set(frame["method"]), key=method_rank)
    metrics = [m for m in (*CURVE_METRICS.values(), VAL_METRIC) if m in set(frame["metric"])]
    settings = sorted(set(frame["setting"]), key=_setting_key)
    colours = dict(zip(methods, sns.color_palette(PALETTE, len(methods)), strict=True))
    with _style():
        fig, axes = _figure(len(metrics), len(settings), (3.4, 2.3))
        for i, metric in enumerate(metrics):
            for j, setting in enumerate(settings):
                ax = axes[i, j]
                data = frame[(frame["setting"] == setting) & (frame["metric"] == metric)]
                _curve_panel(ax, data, events[events["setting"] == setting] if not events.empty else events,
                             colours, legend=(i == len(metrics) - 1 and j == len(settings) - 1))
                if "accuracy" in metric:
                    ax.axhline(100.0 / _setting_key(setting)[0], color="grey", ls="--", lw=0.9, zorder=0)
                ax.set_title(f"{setting}: {metric}")
                ax.set_ylabel(metric if j == 0 else "")
            _share_y(axes[i])
        fig.suptitle("Meta-training: one line per seed; band: 95% CI over the validation episodes;\n"
                     "dashed: chance (1/n_way); ticks: curriculum switches")
    return fig


def _share_y(row: np.ndarray) -> None:
    """One y range for every panel of a row (the union of their ranges)."""
    shown = [ax for ax in row if ax.axison]
    if not shown:
        return
    low = min(ax.get_ylim()[0] for ax in shown)
    high = max(ax.get_ylim()[1] for ax in shown)
    for ax in shown:
        ax.set_ylim(low, high)


def _curve_panel(ax: Axes, data: pd.DataFrame, events: pd.DataFrame, colours: dict, legend: bool) -> None:
    if data.empty:
        ax.axis("off")
        return
    for (method, seed), group in data.groupby(["method", "seed"], sort=False):
        label = variant_label(method, False) if seed == data.loc[data["method"] == method, "seed"].min() else None
        ax.plot(group["iteration"], group["value"], color=colours[method], lw=1, label=label,
                marker="o" if "ci95" in group and group["ci95"].notna().any() else None, ms=2)
        if "ci95" in group and group["ci95"].notna().any():
            ax.fill_between(group["iteration"], group["value"] - group["ci95"], group["value"] + group["ci95"],
                            color=colours[method], alpha=0.15, lw=0)
    if legend:
        ax.legend(fontsize=6, loc="best")
    if not events.empty:
        for method, group in events.groupby("method", sort=True):
            ax.vlines(
                group["iteration"],
                0.0,
                0.06,
                transform=ax.get_xaxis_transform(),
                colors=[colours.get(method, "black")],
                lw=0.8,
            )
    ax.set_xlabel("iteration")


# --------------------------------------------------------------------------------------------
# Synthesized image grids
# --------------------------------------------------------------------------------------------


def grids_figure(runs: list[Run], data_dir: str | Path = "data") -> Figure | None:
    """Synthesized images of each trained method (lowest seed, first setting) at several
    iterations: a few labelled classes (rows) x a few images, beside real training images of the
    same classes where the dataset cache ``<data_dir>/<dataset>/<size>px/train.pt`` exists.

    Classes and their names come from the pool manifest (the grid's rows are the first domain's
    classes in sorted global id order, purer/inversion/dataset.py). Returns None if no run has a grid.
    """
    chosen: dict[str, tuple[Run, list[tuple[int, Path]]]] = {}
    for run in runs:  # sorted by method, setting, seed: keep the first (lowest seed, first setting)
        grids = _grid_files(run)
        if grids:
            chosen.setdefault(run.method, (run, _spread(grids, GRID_ITERATIONS)))
    if not chosen:
        return None
    methods = sorted(chosen, key=method_rank)
    first_run = chosen[methods[0]][0]
    classes = _grid_classes(first_run.path.parent.parent.parent / "pool" / "manifest.yaml")
    crops = {m: [(it, _crop_grid(_read_image(path))) for it, path in chosen[m][1]] for m in methods}
    like, n_rows, side = crops[methods[0]][0][1]
    real = _real_mosaic(classes[:n_rows], like, side, data_dir) if classes and side else None
    columns = (1 if real is not None else 0) + max(len(crops[m]) for m in methods)
    cell = side or like.shape[0]
    panel = (GRID_INCHES_PER_IMAGE * like.shape[1] / cell, GRID_INCHES_PER_IMAGE * like.shape[0] / cell + 0.35)
    with _style():
        fig, axes = _figure(len(methods), columns, panel)
        for i, method in enumerate(methods):
            run = chosen[method][0]
            panels = ([("real (train split)", (real, n_rows, side))] if real is not None else []) + [
                (f"iteration {it}", crop) for it, crop in crops[method]
            ]
            for j in range(columns):
                ax = axes[i, j]
                if j >= len(panels):
                    ax.axis("off")
                    continue
                title, (image, rows, cell_side) = panels[j]
                ax.imshow(image, interpolation="nearest")
                ax.set_title(title, fontsize=7)
                ax.set_xticks([])
                if j == 0 and classes and cell_side:
                    ax.set_yticks([GRID_PADDING + cell_side * (r + 0.5) for r in range(rows)],
                                  [_short(name) for name in classes[:rows]], fontsize=6)
                else:
                    ax.set_yticks([])
                ax.grid(False)
            axes[i, 0].set_ylabel(f"{variant_label(method, False)}\n{run.setting}, seed {run.seed}", fontsize=7)
        fig.suptitle("Synthesized images over meta-training (rows: classes)")
    return fig


def _spread(grids: list[tuple[int, Path]], count: int) -> list[tuple[int, Path]]:
    """``count`` of the grids, first and last included, evenly spread over the saved iterations."""
    if len(grids) <= count:
        return grids
    picks = sorted({round(k * (len(grids) - 1) / (count - 1)) for k in range(count)})
    return [grids[k] for k in picks]


def _cell_side(image: np.ndarray) -> int | None:
    """The cell side of a class grid (purer/inversion/dataset.py ``class_grid``: every cell has
    ``GRID_PADDING`` black pixels above and left of it), or None if ``image`` is not such a grid."""
    height, width = image.shape[:2]
    dark = image.max(axis=2) == 0
    for side in range(GRID_PADDING + 2, min(height, width)):
        if (height - GRID_PADDING) % side or (width - GRID_PADDING) % side:
            continue
        lines = [k * side + d for k in range((height - GRID_PADDING) // side + 1) for d in range(GRID_PADDING)]
        cols = [k * side + d for k in range((width - GRID_PADDING) // side + 1) for d in range(GRID_PADDING)]
        if dark[lines].all() and dark[:, cols].all():
            return side
    return None


def _crop_grid(image: np.ndarray) -> tuple[np.ndarray, int, int | None]:
    """The first ``GRID_CLASSES`` rows x ``GRID_IMAGES`` columns of a class grid, its row count and
    cell side (an image that is not a class grid is returned whole: one row, side None)."""
    side = _cell_side(image)
    if side is None:
        return image, 1, None
    rows = min(GRID_CLASSES, (image.shape[0] - GRID_PADDING) // side)
    cols = min(GRID_IMAGES, (image.shape[1] - GRID_PADDING) // side)
    return np.ascontiguousarray(image[: rows * side + GRID_PADDING, : cols * side + GRID_PADDING]), rows, side


def _grid_classes(manifest: Path) -> list[tuple[str, str, int]]:
    """(dataset, class name, local class id) of the first domain's classes in grid row order;
    empty when the manifest is absent or does not name its classes."""
    try:
        data = read_yaml(manifest, "pool manifest") if manifest.is_file() else None
    except PurerError:
        return []
    if not isinstance(data, dict) or not data.get("teachers") or not data.get("datasets"):
        return []
    teachers, datasets = data["teachers"], data["datasets"]
    domain = lambda t: (t.get("image_size"), t.get("channels")) if "image_size" in t else t.get("dataset")  # noqa: E731
    first = domain(teachers[0])
    ids = sorted({int(c) for t in teachers if domain(t) == first for c in t.get("classes", [])})
    out = []
    for global_id in ids:
        for entry in datasets:
            offset, names = int(entry.get("offset", 0)), entry.get("class_names") or []
            if offset <= global_id < offset + len(names):
                out.append((str(entry["name"]), str(names[global_id - offset]), global_id - offset))
                break
        else:
            return []
    return out


def _short(entry: tuple[str, str, int]) -> str:
    """A class's row label: its name, shortened (``U+0046_LATIN-CAPITAL-LETTER-F`` -> ``U+0046 LATIN ...``)."""
    name = entry[1].replace("_", " ").replace("-", " ")
    return name if len(name) <= 30 else name[:29] + "…"


def _real_mosaic(
    classes: list[tuple[str, str, int]], like: np.ndarray, side: int, data_dir: str | Path
) -> np.ndarray | None:
    """Real training images of ``classes`` laid out like the grid crop ``like`` (cells of ``side``
    pixels); None without the dataset cache."""
    size = side - GRID_PADDING
    cols = (like.shape[1] - GRID_PADDING) // side
    path = Path(data_dir) / classes[0][0] / f"{size}px" / "train.pt"
    if not path.is_file() or any(c[0] != classes[0][0] for c in classes):
        return None
    try:
        split = load_split(path)
    except PurerError:
        return None
    mosaic = np.zeros((len(classes) * side + GRID_PADDING, cols * side + GRID_PADDING, 3), dtype=np.uint8)
    for r, (_, _, label) in enumerate(classes):
        images = split.images[split.labels == label][:cols]
        for c, image in enumerate(images):
            pixels = image.numpy().transpose(1, 2, 0)
            pixels = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels[:, :, :3]
            y, x = r * side + GRID_PADDING, c * side + GRID_PADDING
            mosaic[y : y + size, x : x + size] = pixels
    return mosaic


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
    # panels follow the grids' aspect, at most 2.4 in tall: a tall grid (one row per class) would
    # otherwise make a figure of several MB, most of it incompressible synthesized noise
    # (grids.png shows a few classes at a readable size)
    height = min(2.4, 1.6 * first.shape[0] / first.shape[1]) + 0.4
    with _style():
        fig, axes = _figure(len(keys), columns, (1.6, height))
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
