"""Report figures of the per-run diagnostics: the teachers' own CE over time and the grids over time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from purer.report.aggregate import collect_runs, method_rank, variant_label
from purer.report.figures import grids_over_time_figure, save_figures, teacher_ce_figure

POOL = "glyphs"


def _run_dir(root: Path, method: str, n_shot: int, seed: int) -> Path:
    path = root / POOL / method / f"5w{n_shot}s" / f"seed{seed}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _curve(run: Path, switches: set[int], with_teacher_ce: bool = True) -> None:
    lines = []
    for it in range(1, 13):
        ce = [2.0 / it, 1.0 / it + (0.5 if it in switches else 0.0)]
        line = {"iteration": it, "seconds": 0.1, "loss_outer": 1.0, "train_accuracy": 30.0, "switch": it in switches,
                "loss_ce": sum(ce) / 2}
        if with_teacher_ce:
            line |= {"teacher_ce": ce, "teacher_ce_max": max(ce)}
        lines.append(line)
    (run / "curve.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def _grids(run: Path, iterations: tuple[int, ...]) -> None:
    (run / "grids").mkdir(exist_ok=True)
    for iteration in iterations:
        Image.fromarray(np.full((20, 30, 3), 10 * iteration, dtype=np.uint8)).save(
            run / "grids" / f"grid_iter{iteration:05d}.png")
    # a second domain's grid is not part of the first domain's row
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(run / "grids" / "grid_iter00012_16px-3ch.png")


def _tree(root: Path) -> Path:
    for method, switches in (("purer", {4, 9}), ("ei", set())):
        for seed in (0, 1):
            run = _run_dir(root, method, 5, seed)
            _curve(run, switches)
            _grids(run, (3, 6, 12))
    return root


def _titles(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_title()]


def test_teacher_ce_figure_has_mean_and_max_rows_and_switch_ticks(tmp_path):
    runs = collect_runs(_tree(tmp_path / "exp"))
    fig = teacher_ce_figure(runs)
    assert fig is not None
    assert _titles(fig) == ["5-way 5-shot: teacher CE, mean over teachers", "5-way 5-shot: teacher CE, max over teachers"]
    mean_panel = fig.axes[0]
    assert mean_panel.get_yscale() == "log"
    assert len([line for line in mean_panel.lines if len(line.get_xdata())]) == 4  # two methods x two seeds
    ticks = [c for c in mean_panel.collections if c.get_segments()]
    assert sum(len(c.get_segments()) for c in ticks) == 4  # purer's reversed steps, both seeds


def test_teacher_ce_figure_is_skipped_for_runs_without_per_teacher_ce(tmp_path):
    root = tmp_path / "exp"
    _curve(_run_dir(root, "purer", 5, 0), {4}, with_teacher_ce=False)
    assert teacher_ce_figure(collect_runs(root)) is None


def test_grids_over_time_shows_each_method_lowest_seed_by_iteration(tmp_path):
    fig = grids_over_time_figure(collect_runs(_tree(tmp_path / "exp")))
    assert fig is not None
    titles = _titles(fig)
    methods = [variant_label(m, False) for m in sorted(("purer", "ei"), key=method_rank)]
    assert titles == [f"{method}, 5-way 5-shot\nseed 0, it {it}" for method in methods for it in (3, 6, 12)]


def test_grids_over_time_needs_two_grids(tmp_path):
    root = tmp_path / "exp"
    _grids(_run_dir(root, "purer", 5, 0), (12,))
    assert grids_over_time_figure(collect_runs(root)) is None


def test_diagnostic_figures_are_saved_deterministically(tmp_path):
    root = _tree(tmp_path / "exp")
    written = []
    for out in ("a", "b"):
        runs = collect_runs(root)
        figures = {"teacher_ce": teacher_ce_figure(runs), "grids_over_time": grids_over_time_figure(runs)}
        written.append(save_figures(figures, tmp_path / out, ("png",)))
    assert [p.name for p in written[0]] == ["teacher_ce.png", "grids_over_time.png"]
    for a, b in zip(*written, strict=True):
        assert a.read_bytes() == b.read_bytes()
