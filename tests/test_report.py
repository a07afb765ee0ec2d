"""Tests of `purer report`: aggregation maths, tables, figures and the CLI on a fake results tree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from purer.cli import main as cli_main
from purer.errors import DataError
from purer.report import aggregate, tables

POOL = "glyphs"
# (method, n_shot) -> accuracy of seed 0 and seed 1 (percent)
ACCURACY = {
    ("purer", 1): (50.0, 54.0),
    ("purer", 5): (70.0, 72.0),
    ("ei", 1): (48.0, 49.0),
    ("ei", 5): (73.0, 75.0),
    ("random", 1): (20.0, 22.0),
    ("random", 5): (30.0, 31.0),
}
ICFIL_ACCURACY, ICFIL_CI = 55.0, 0.9  # purer, 1-shot, seed 0 only


def _run_dir(root: Path, method: str, n_shot: int, seed: int) -> Path:
    return root / POOL / method / f"5w{n_shot}s" / f"seed{seed}"


def _write_metrics(
    run: Path, method: str, n_shot: int, seed: int, accuracy: float, ci95: float, icfil: bool = False, **extra
) -> None:
    folder = run / "test" / POOL / ("icfil" if icfil else "plain")
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {
        "method": method,
        "dataset": POOL,
        "n_way": 5,
        "n_shot": n_shot,
        "n_query": 15,
        "seed": seed,
        "icfil": icfil,
        "selection": "val",
        "episodes": 600,
        "accuracy": accuracy,
        "ci95": ci95,
        "accuracies": [accuracy],
    } | extra
    if method == "random":  # exercise the path fallback: the file lacks these fields
        for key in ("method", "n_way", "n_shot", "seed", "icfil"):
            metrics.pop(key)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def _write_curves(run: Path, switch_at: int | None) -> None:
    lines = [
        {
            "iteration": it,
            "seconds": 0.1,
            "loss_outer": 2.0 - 0.05 * it,
            "train_accuracy": 20.0 + 2 * it,
            "switch": it == switch_at,
            "loss_inv_total": 1.0,
            "loss_ce": 1.0,
            "loss_tv": 0.0,
            "loss_bn": 0.0,
            "loss_l2": 0.0,
            "loss_adv": 0.0,
        }
        for it in range(1, 21)
    ]
    (run / "curve.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    val = [{"iteration": 10, "accuracy": 40.0, "ci95": 1.0}, {"iteration": 20, "accuracy": 45.0, "ci95": 1.0}]
    (run / "val.jsonl").write_text("".join(json.dumps(line) + "\n" for line in val))


def _write_grids(run: Path) -> None:
    (run / "grids").mkdir(parents=True)
    for iteration, value in ((10, 40), (20, 200)):
        pixels = np.full((24, 24, 3), value, dtype=np.uint8)
        Image.fromarray(pixels).save(run / "grids" / f"grid_iter{iteration:05d}.png")


def _write_manifest(root: Path) -> None:
    folder = root / POOL / "pool"
    folder.mkdir(parents=True)
    teachers = [
        {
            "index": i,
            "architecture": "conv4",
            "checkpoint": f"teacher_{i:02d}.pt",
            "dataset": POOL,
            "classes": [5 * i + k for k in range(5)],
            "num_outputs": 5,
            "val_accuracy": 0.8 + 0.05 * i,
        }
        for i in range(4)
    ]
    (folder / "manifest.yaml").write_text(yaml.safe_dump({"format": "purer-pool/1", "teachers": teachers}))


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A fake experiment folder: 3 methods x 2 shots x 2 seeds (+ one ICFIL result), curves, grids."""
    root = tmp_path / "results" / "exp"
    for (method, n_shot), accuracies in ACCURACY.items():
        for seed, accuracy in enumerate(accuracies):
            run = _run_dir(root, method, n_shot, seed)
            _write_metrics(run, method, n_shot, seed, accuracy, ci95=1.0 + 0.1 * seed)
            if method in ("purer", "ei"):
                _write_curves(run, switch_at=10 if method == "purer" else None)
    _write_metrics(_run_dir(root, "purer", 1, 0), "purer", 1, 0, ICFIL_ACCURACY, ICFIL_CI, icfil=True)
    _write_grids(_run_dir(root, "purer", 1, 0))
    _write_manifest(root)
    return root


def _row(frame: pd.DataFrame, variant: str, n_shot: int) -> pd.Series:
    match = frame[(frame["variant"] == variant) & (frame["n_shot"] == n_shot)]
    assert len(match) == 1
    return match.iloc[0]


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


def test_collect_metrics_reads_files_and_falls_back_to_the_path(results: Path) -> None:
    metrics = aggregate.collect_metrics(results)
    assert len(metrics) == 13
    assert set(metrics["variant"]) == {"PURER", "PURER + ICFIL", "EI (no curriculum)", "Random"}
    random = metrics[metrics["variant"] == "Random"].sort_values(["n_shot", "seed"])
    # random's files hold no method/shot/seed: they come from <method>/5w<k>s/seed<s>/.../plain
    assert list(zip(random["n_shot"], random["seed"], strict=True)) == [(1, 0), (1, 1), (5, 0), (5, 1)]
    assert not random["icfil"].any() and (random["n_way"] == 5).all()
    assert set(metrics["experiment"]) == {"exp"} and set(metrics["pool"]) == {POOL}
    assert metrics["learner"].isna().all()
    # baselines first, then the method (paper order)
    assert list(dict.fromkeys(metrics["method"])) == ["random", "ei", "purer"]


def test_summary_across_seeds_matches_hand_computation(results: Path) -> None:
    summary = aggregate.summarise(aggregate.collect_metrics(results))
    purer = _row(summary, "PURER", 1)
    # seeds 50 and 54: mean 52, sample s = 2*sqrt(2), CI = t_{0.975,1} * s / sqrt(2) = 12.706 * 2
    assert purer["accuracy"] == pytest.approx(52.0)
    assert purer["ci95"] == pytest.approx(12.706 * 2.0)
    assert (purer["n_seeds"], purer["ci_kind"], purer["seeds"]) == (2, "seeds", "0,1")
    assert purer["seed_accuracies"] == "0:50.0000;1:54.0000"
    ei = _row(summary, "EI (no curriculum)", 5)
    assert ei["accuracy"] == pytest.approx(74.0)
    assert ei["ci95"] == pytest.approx(12.706 * 1.0)


def test_summary_of_one_seed_keeps_its_episode_ci(results: Path) -> None:
    summary = aggregate.summarise(aggregate.collect_metrics(results))
    icfil = _row(summary, "PURER + ICFIL", 1)
    assert (icfil["accuracy"], icfil["ci95"], icfil["n_seeds"]) == (ICFIL_ACCURACY, ICFIL_CI, 1)
    assert icfil["ci_kind"] == "episodes"
    assert len(summary) == 7  # 3 methods x 2 shots + ICFIL


def test_summary_json_keys_and_values(results: Path, tmp_path: Path) -> None:
    summary = aggregate.summarise(aggregate.collect_metrics(results))
    path = aggregate.write_summary(tmp_path / "summary.json", summary)
    data = json.loads(path.read_text())
    assert data["glyphs/5w1s/purer"]["accuracy"] == 52.0
    assert data["glyphs/5w1s/purer"]["ci95"] == round(12.706 * 2, 4)
    assert data["glyphs/5w1s/purer+icfil"] == {"accuracy": 55.0, "ci95": 0.9, "n_seeds": 1}
    assert len(data) == 7


def test_no_metrics_is_a_data_error_naming_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path)):
        aggregate.collect_metrics(tmp_path)


def test_malformed_metrics_name_the_file(results: Path) -> None:
    bad = _run_dir(results, "ei", 1, 0) / "test" / POOL / "plain" / "metrics.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="ei/5w1s/seed0/test/glyphs/plain/metrics.json"):
        aggregate.collect_metrics(results)
    bad.write_text(json.dumps({"method": "ei", "dataset": POOL, "accuracy": 50.0}))
    with pytest.raises(DataError, match=r"missing \['ci95'\]"):
        aggregate.collect_metrics(results)


def test_smoothing_is_a_trailing_moving_average() -> None:
    from purer.report.figures import smooth

    values = pd.Series(np.arange(40, dtype=float))  # window = 0.05 * 40 = 2
    expected = [0.0] + [i - 0.5 for i in range(1, 40)]
    assert smooth(values).tolist() == pytest.approx(expected)


def test_latest_grid_and_runs(results: Path) -> None:
    runs = aggregate.collect_runs(results)
    assert {(r.method, r.n_shot, r.seed) for r in runs} == {
        (m, k, s) for m in ("purer", "ei") for k in (1, 5) for s in (0, 1)
    }
    run = next(r for r in runs if (r.method, r.n_shot, r.seed) == ("purer", 1, 0))
    path, iteration = aggregate.latest_grid(run)
    assert (path.name, iteration) == ("grid_iter00020.png", 20)
    curve = aggregate.read_curve(run)
    assert curve.loc[curve["switch"], "iteration"].tolist() == [10]


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _tables(results: Path) -> dict[str, tables.Table]:
    summary = aggregate.summarise(aggregate.collect_metrics(results))
    return {t.name: t for t in tables.build_tables(summary)}


def test_markdown_bolds_the_best_cell_of_each_column(results: Path) -> None:
    text = tables.render_markdown(_tables(results)["main"])
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    # the lone ICFIL row is not compared with the plain rows: no bold
    assert rows["PURER + ICFIL"].endswith("| 55.00 ± 0.90 | — |")
    assert rows["EI (no curriculum)"].endswith("| 48.50 ± 6.35 | **74.00 ± 12.71** |")
    assert rows["PURER"].endswith("| **52.00 ± 25.41** | 71.00 ± 12.71 |")
    assert text.count("**") == 4  # exactly two bold cells
    assert list(rows)[2:] == ["Random", "EI (no curriculum)", "PURER", "PURER + ICFIL"]


def test_latex_bolds_the_best_cell_and_uses_booktabs(results: Path) -> None:
    text = tables.render_latex(_tables(results)["main"])
    assert "\\toprule" in text and "\\midrule" in text and "\\bottomrule" in text
    assert "PURER + ICFIL & 55.00 $\\pm$ 0.90 & -- \\\\" in text
    assert "EI (no curriculum) & 48.50 $\\pm$ 6.35 & \\textbf{74.00 $\\pm$ 12.71} \\\\" in text
    assert text.count("\\textbf") == 2
    assert "\\begin{tabular}{lcc}" in text


def test_csv_is_long_and_numeric(results: Path) -> None:
    from io import StringIO

    frame = pd.read_csv(StringIO(tables.render_csv(_tables(results)["main"])))
    assert pd.api.types.is_float_dtype(frame["mean"]) and pd.api.types.is_float_dtype(frame["ci95"])
    assert pd.api.types.is_integer_dtype(frame["n_seeds"])
    purer = frame[(frame["label"] == "PURER") & (frame["n_shot"] == 1)].iloc[0]
    assert purer["mean"] == 52.0 and purer["ci95"] == pytest.approx(25.412, abs=1e-6)
    assert purer["seed_values"] == "0:50.0000;1:54.0000"
    assert frame["best"].sum() == 2 and len(frame) == 7


def test_notes_carry_icfil_selection_episodes_and_seeds(results: Path) -> None:
    built = _tables(results)
    assert set(built) == {"main", "ablation_curriculum", "ablation_icfil"}  # one learner, weighting, pool
    main = tables.render_markdown(built["main"])
    assert aggregate.ICFIL_NOTE in main
    assert "checkpoint selected on the validation split" in main
    assert "Test episodes per run: 600." in main
    assert "Seeds per cell: 1–2" in main
    assert aggregate.ICFIL_NOTE in tables.render_latex(built["ablation_icfil"])
    curriculum = tables.render_markdown(built["ablation_curriculum"])
    assert aggregate.ICFIL_NOTE not in curriculum and "Mean over 2 seeds per cell" in curriculum
    assert "Random" not in curriculum


def test_varying_context_gets_its_own_table_and_labels(results: Path) -> None:
    # two more PURER 1-shot results that record their learner (the original ones do not)
    for learner, accuracies in (("anil", (60.0, 62.0)), ("maml", (40.0, 44.0))):
        for seed, accuracy in enumerate(accuracies):
            run = results / POOL / f"purer-{learner}" / "5w1s" / f"seed{seed}"
            _write_metrics(run, "purer", 1, seed, accuracy, 1.0, learner={"algorithm": learner})
    built = _tables(results)
    text = tables.render_markdown(built["learners"])
    assert "| Learner | Method | 5-way 1-shot |" in text
    assert "| anil | PURER | **61.00 ± 12.71** |" in text
    assert "| maml | PURER | 42.00 ± 25.41 |" in text
    main = tables.render_markdown(built["main"])
    assert "| PURER (anil) |" in main and "| PURER (no learner) |" in main


def test_best_on_test_selection_is_labelled(results: Path) -> None:
    run = results / POOL / "purer" / "5w5s" / "seed0"
    folder = run / "test-best" / POOL / "plain"  # not a test/ folder: must be ignored
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{}")
    other = results.parent / "exp2" / POOL / "purer" / "5w5s" / "seed0"
    _write_metrics(other, "purer", 5, 0, 80.0, 1.0, selection="best-on-test")
    summary = aggregate.summarise(aggregate.collect_metrics(results.parent))
    main = tables.render_markdown(tables.build_tables(summary)[0])
    assert "best-on-test, authors' protocol" in main
    assert "PURER (exp2, best-on-test)" in main


def test_several_datasets_are_grouped_with_best_per_dataset(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    for dataset, accuracies in (("glyphs", (40.0, 50.0)), ("cifar-fs", (70.0, 60.0))):
        for method, accuracy in zip(("ei", "purer"), accuracies, strict=True):
            folder = root / POOL / method / "5w1s" / "seed0" / "test" / dataset / "plain"
            folder.mkdir(parents=True)
            record = {
                "method": method,
                "dataset": dataset,
                "n_way": 5,
                "n_shot": 1,
                "seed": 0,
                "accuracy": accuracy,
                "ci95": 1.0,
            }
            (folder / "metrics.json").write_text(json.dumps(record))
    main = tables.build_tables(aggregate.summarise(aggregate.collect_metrics(root)))[0]
    text = tables.render_markdown(main)
    assert "| Dataset | Method | 5-way 1-shot |" in text
    assert "| cifar-fs | EI (no curriculum) | **70.00 ± 1.00** |" in text
    assert "| glyphs | PURER | **50.00 ± 1.00** |" in text
    latex = tables.render_latex(main)
    assert "\\multicolumn{2}{l}{\\textit{cifar-fs}} \\\\" in latex
    assert latex.count("\\textbf") == 2


def test_accuracy_vs_number_of_teachers(results: Path) -> None:
    from purer.report.figures import teachers_figure

    for n_teachers, accuracy in ((2, 30.0), (8, 60.0)):
        run = results.parent / f"exp-{n_teachers}" / POOL / "purer" / "5w1s" / "seed0"
        _write_metrics(run, "purer", 1, 0, accuracy, 1.0, n_teachers=n_teachers)
    summary = aggregate.summarise(aggregate.collect_metrics(results.parent))
    fig = teachers_figure(summary, results.parent)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "number of teachers"
    (container,) = [c for c in ax.containers if c.get_label() == "PURER"]
    line = container.lines[0]
    assert line.get_xdata().tolist() == [2, 8] and line.get_ydata().tolist() == [30.0, 60.0]


def test_unknown_table_format_is_a_config_error() -> None:
    from purer.errors import ConfigError

    with pytest.raises(ConfigError, match="report.formats"):
        tables.check_formats(("md", "docx"))


# --------------------------------------------------------------------------------------------
# CLI: tables, figures, determinism, errors
# --------------------------------------------------------------------------------------------


@pytest.fixture
def report_cli(monkeypatch: pytest.MonkeyPatch):
    """`purer` main with only the report step registered (the other steps are not needed here)."""
    monkeypatch.setattr(cli_main, "COMMANDS", {"report": cli_main.COMMANDS["report"]})
    return cli_main.main


def test_cli_writes_a_deterministic_report(results: Path, tmp_path: Path, report_cli) -> None:
    outputs = []
    for name in ("out1", "out2"):
        out = tmp_path / name
        assert report_cli(["report", "--root", str(results), "--out", str(out)]) == 0
        outputs.append(out)
    first, second = outputs
    expected = {
        f"tables/{t}.{f}"
        for t in ("main", "ablation_curriculum", "ablation_icfil")
        for f in ("md", "tex", "csv")
    }
    expected |= {
        f"figures/{f}.{x}" for f in ("accuracy", "curves", "grids", "teachers") for x in ("png", "pdf")
    }
    files = {str(p.relative_to(first)) for p in first.rglob("*") if p.is_file()}
    assert expected | {"summary.json"} <= files
    assert not [f for f in files if f.endswith(".tmp")]
    for name in sorted(expected | {"summary.json"}):
        data = (first / name).read_bytes()
        assert len(data) > 100, name
        assert data == (second / name).read_bytes(), f"{name} differs between two runs"
        if name.endswith(".png"):
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and b"Software" not in data
        if name.endswith(".pdf"):
            assert data.startswith(b"%PDF") and b"CreationDate" not in data


def test_cli_without_metrics_exits_2_naming_the_folder(tmp_path: Path, report_cli, capsys) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    assert report_cli(["report", "--root", str(empty), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "no metrics found under" in err and str(empty) in err
    assert not (tmp_path / "out").exists()
