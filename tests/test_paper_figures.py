"""Report figures for a paper: labelled error bars, chance lines, the ICFIL caveat, and grids of
labelled classes at several iterations beside real images (purer/report/figures.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

from purer.data.cache import SplitData, save_split
from purer.report.aggregate import collect_runs
from purer.report.figures import (
    GRID_PADDING,
    _cell_side,
    _crop_grid,
    _grid_classes,
    _spread,
    error_bar_label,
    grids_figure,
    icfil_caveat,
)


def class_grid(n_classes: int, per_class: int, size: int, value: int = 200) -> np.ndarray:
    """A grid laid out as DynamicDataset.class_grid: black padding above/left of each cell and at the end."""
    side = size + GRID_PADDING
    grid = np.zeros((n_classes * side + GRID_PADDING, per_class * side + GRID_PADDING, 3), dtype=np.uint8)
    for r in range(n_classes):
        for c in range(per_class):
            y, x = r * side + GRID_PADDING, c * side + GRID_PADDING
            grid[y : y + size, x : x + size] = value
    return grid


def test_the_cell_side_of_a_class_grid_is_found_and_the_grid_cropped():
    grid = class_grid(n_classes=6, per_class=8, size=16)
    assert _cell_side(grid) == 18
    crop, rows, side = _crop_grid(grid)
    assert (rows, side) == (4, 18) and crop.shape == (4 * 18 + 2, 4 * 18 + 2, 3)
    photo = np.full((40, 40, 3), 120, dtype=np.uint8)  # not a class grid: shown whole
    assert _crop_grid(photo)[1:] == (1, None)


def test_three_grids_spread_over_the_saved_iterations():
    grids = [(i, Path(f"g{i}")) for i in (1, 25, 50, 75, 100)]
    assert [i for i, _ in _spread(grids, 3)] == [1, 50, 100]
    assert _spread(grids[:2], 3) == grids[:2]


def test_error_bars_say_what_they_are_and_icfil_carries_its_caveat():
    seeds = pd.DataFrame({"ci_kind": ["seeds", "seeds"], "n_seeds": [3, 3]})
    assert error_bar_label(seeds) == "95% t-interval across 3 seeds"
    one = pd.DataFrame({"ci_kind": ["episodes"], "n_seeds": [1]})
    assert error_bar_label(one) == "95% CI over test episodes (1 seed)"
    assert icfil_caveat("PURER + ICFIL") == "PURER + ICFIL (reconstruction)"
    assert icfil_caveat("PURER") == "PURER"


def _manifest(pool: Path) -> None:
    pool.mkdir(parents=True)
    manifest = {
        "datasets": [{"name": "toy", "offset": 0, "n_classes": 6, "class_names": [f"class-{k}" for k in range(6)]}],
        "teachers": [
            {"index": 0, "dataset": "toy", "classes": [3, 1], "image_size": 8, "channels": 1},
            {"index": 1, "dataset": "toy", "classes": [0, 2], "image_size": 8, "channels": 1},
        ],
    }
    (pool / "manifest.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")


def test_grid_rows_are_the_pool_classes_in_sorted_order(tmp_path):
    _manifest(tmp_path / "pool")
    classes = _grid_classes(tmp_path / "pool" / "manifest.yaml")
    assert [name for _, name, _ in classes] == ["class-0", "class-1", "class-2", "class-3"]
    assert _grid_classes(tmp_path / "missing.yaml") == []


def test_grids_figure_shows_real_images_and_several_iterations(tmp_path):
    root = tmp_path / "results" / "x" / "toy"
    _manifest(root / "pool")
    run = root / "purer" / "5w1s" / "seed0"
    (run / "grids").mkdir(parents=True)
    for iteration in (1, 5, 10, 20):
        Image.fromarray(class_grid(4, 4, 8, value=10 * iteration)).save(run / "grids" / f"grid_iter{iteration:05d}.png")
    labels = torch.arange(6).repeat_interleave(3)
    split = SplitData(torch.full((18, 1, 8, 8), 255, dtype=torch.uint8), labels,
                      tuple(f"class-{k}" for k in range(6)), (0.5,), (0.5,))
    save_split(tmp_path / "data" / "toy" / "8px" / "train.pt", split)

    fig = grids_figure(collect_runs(tmp_path / "results" / "x"), data_dir=tmp_path / "data")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["real (train split)", "iteration 1", "iteration 10", "iteration 20"]
    real = fig.axes[0]
    assert [t.get_text() for t in real.get_yticklabels()] == ["class 0", "class 1", "class 2", "class 3"]
    assert real.get_images()[0].get_array().max() == 255  # the real images, not the grid
    without_cache = grids_figure(collect_runs(tmp_path / "results" / "x"), data_dir=tmp_path / "none")
    assert [ax.get_title() for ax in without_cache.axes] == ["iteration 1", "iteration 10", "iteration 20"]
