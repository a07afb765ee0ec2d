"""Statistics of the report: Student t quantiles and intervals, paired per-episode differences,
the pairing check, the ICFIL verdict, bold within comparable groups and summary.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from purer.errors import DataError
from purer.report import aggregate, tables
from purer.statistics import paired_difference, t_interval, t_quantile_975

POOL = "glyphs"


# --------------------------------------------------------------------------------------------
# t quantiles and intervals
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("df", "expected"),
    [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042), (40, 2.021), (60, 2.000), (99, 1.984), (120, 1.980)],
)
def test_t_quantile_matches_the_tables(df, expected):
    assert t_quantile_975(df) == pytest.approx(expected, abs=1e-3)


def test_t_quantile_tends_to_the_normal_one_and_rejects_df_0():
    assert t_quantile_975(100000) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError, match="at least 1"):
        t_quantile_975(0)


def test_t_interval_by_hand():
    # 1, 2, 6: mean 3, s^2 = (4 + 1 + 9) / 2 = 7, half-width = 4.303 * sqrt(7) / sqrt(3)
    mean, half_width = t_interval([1.0, 2.0, 6.0])
    assert mean == pytest.approx(3.0)
    assert half_width == pytest.approx(4.303 * math.sqrt(7.0 / 3.0))
    with pytest.raises(ValueError, match="at least two"):
        t_interval([1.0])


def test_paired_difference_removes_the_episode_difficulty():
    # b = a - 2 + small noise: the per-method spread is large, the paired one small
    a = [10.0, 90.0, 50.0, 30.0]
    b = [8.0, 88.5, 48.0, 27.5]
    mean, half_width = paired_difference(a, b)
    differences = [2.0, 1.5, 2.0, 2.5]
    expected_mean, expected_width = t_interval(differences)
    assert (mean, half_width) == pytest.approx((expected_mean, expected_width))
    assert mean == pytest.approx(2.0) and half_width < t_interval(a)[1] / 10
    with pytest.raises(ValueError, match="4 episodes against 3"):
        paired_difference(a, b[:3])


# --------------------------------------------------------------------------------------------
# A fake results tree with per-episode accuracies
# --------------------------------------------------------------------------------------------


def _write(root: Path, method: str, variant: str, seed: int, accuracies: list[float], digest: str = "d1", **extra):
    folder = root / POOL / method / "5w1s" / f"seed{seed}" / "test" / POOL / variant
    folder.mkdir(parents=True, exist_ok=True)
    metrics = {
        "method": method, "dataset": POOL, "n_way": 5, "n_shot": 1, "seed": seed,
        "icfil": variant in ("icfil", "icfil-noise"), "test_variant": variant, "selection": "val",
        "episodes": len(accuracies), "accuracy": sum(accuracies) / len(accuracies), "ci95": 1.0,
        "accuracies": accuracies, "episodes_digest": digest,
    } | extra
    (folder / "metrics.json").write_text(json.dumps(metrics))


EPISODES = {  # per-episode accuracies of seed 0 (seed 1: the same plus 1 point for every purer variant)
    ("purer", "plain"): [40.0, 60.0, 20.0, 80.0],
    ("ei", "plain"): [38.0, 57.0, 19.0, 78.0],
    ("purer", "icfil"): [50.0, 70.0, 30.0, 92.0],
    ("purer", "plain-steps16"): [45.0, 62.0, 25.0, 84.0],
    ("purer", "icfil-noise"): [41.0, 61.0, 21.0, 80.0],
    ("purer", "finetune-support"): [44.0, 63.0, 24.0, 83.0],
}


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "exp"
    for (method, variant), accuracies in EPISODES.items():
        _write(root, method, variant, 0, accuracies)
        shift = 1.0 if method == "purer" else 0.0
        _write(root, method, variant, 1, [a + shift for a in accuracies])
    return root


def _difference(differences, a, b):
    match = differences[
        (differences["a_method"] == a[0]) & (differences["a_variant"] == a[1])
        & (differences["b_method"] == b[0]) & (differences["b_variant"] == b[1])
    ]
    assert len(match) == 1, (a, b)
    return match.iloc[0]


def test_paired_differences_across_seeds_by_hand(tree):
    differences = aggregate.paired_differences(aggregate.collect_metrics(tree))
    # PURER - EI: seed 0 differences 2, 3, 1, 2 (mean 2); seed 1: +1 each (mean 3)
    row = _difference(differences, ("purer", "plain"), ("ei", "plain"))
    assert row["label"] == "PURER − EI (no curriculum)"
    assert row["difference"] == pytest.approx(2.5)
    assert row["ci95"] == pytest.approx(12.706 * math.sqrt(0.5) / math.sqrt(2))  # s of (2, 3) = sqrt(0.5)
    assert (row["n_seeds"], row["ci_kind"], row["n_episodes"]) == (2, "seeds", 4)
    assert row["seed_differences"] == "0:2.0000;1:3.0000"
    # ICFIL - plain: 10, 10, 10, 12 in both seeds (mean 10.5): no spread across seeds
    icfil = _difference(differences, ("purer", "icfil"), ("purer", "plain"))
    assert (icfil["difference"], icfil["ci95"]) == pytest.approx((10.5, 0.0))


def test_one_seed_uses_the_episode_t_interval(tree):
    metrics = aggregate.collect_metrics(tree)
    differences = aggregate.paired_differences(metrics[metrics["seed"] == 0])
    row = _difference(differences, ("purer", "plain"), ("ei", "plain"))
    # differences 2, 3, 1, 2: mean 2, s^2 = (0 + 1 + 1 + 0) / 3
    assert row["difference"] == pytest.approx(2.0)
    assert row["ci95"] == pytest.approx(3.182 * math.sqrt(2.0 / 3.0) / 2.0)
    assert row["ci_kind"] == "episodes"


def test_comparisons_cover_purer_ei_variants_vs_plain_and_icfil_vs_controls(tree):
    differences = aggregate.paired_differences(aggregate.collect_metrics(tree))
    pairs = set(zip(differences["a_variant"], differences["b_method"] + "/" + differences["b_variant"], strict=True))
    assert ("plain", "ei/plain") in pairs
    for control in ("plain-steps16", "icfil-noise", "finetune-support", "icfil"):
        assert (control, "purer/plain") in pairs
    for control in ("plain-steps16", "icfil-noise", "finetune-support"):
        assert ("icfil", f"purer/{control}") in pairs
    assert len(differences) == 1 + 4 + 3


def test_different_episodes_cannot_be_paired(tree):
    _write(tree, "ei", "plain", 0, EPISODES[("ei", "plain")], digest="other")
    with pytest.raises(DataError, match="different test episodes.*digests"):
        aggregate.paired_differences(aggregate.collect_metrics(tree))
    _write(tree, "ei", "plain", 0, EPISODES[("ei", "plain")][:3], episodes=4)  # a truncated list
    with pytest.raises(DataError, match="4 vs 3 episodes"):
        aggregate.paired_differences(aggregate.collect_metrics(tree))


def test_icfil_helps_only_where_it_beats_every_control(tree):
    metrics = aggregate.collect_metrics(tree)
    verdict = aggregate.icfil_verdicts(aggregate.paired_differences(metrics)).iloc[0]
    assert (verdict["method"], verdict["controls"], verdict["beaten"], bool(verdict["helps"])) == ("purer", 4, 4, True)
    # a support-only fine-tuning as good as ICFIL: ICFIL no longer "helps"
    for seed, shift in ((0, 0.0), (1, 1.0)):
        _write(tree, "purer", "finetune-support", seed, [a + shift for a in EPISODES[("purer", "icfil")]])
    metrics = aggregate.collect_metrics(tree)
    differences = aggregate.paired_differences(metrics)
    verdict = aggregate.icfil_verdicts(differences).iloc[0]
    assert (verdict["beaten"], bool(verdict["helps"])) == (3, False)
    built = {t.name: t for t in tables.build_tables(aggregate.summarise(metrics), differences)}
    ablation = tables.render_markdown(built["ablation_icfil"])
    assert "**" not in ablation and "it does in no cell." in ablation


def test_tables_carry_deltas_and_bold_only_within_a_variant(tree):
    metrics = aggregate.collect_metrics(tree)
    summary = aggregate.summarise(metrics)
    differences = aggregate.paired_differences(metrics)
    built = {t.name: t for t in tables.build_tables(summary, differences)}
    assert {"main", "ablation_curriculum", "ablation_icfil", "differences"} <= set(built)
    main = tables.render_markdown(built["main"])
    rows = {line.split(" | ")[0].strip("| "): line for line in main.splitlines() if line.startswith("| ")}
    assert "PURER, 16 inner steps" not in rows  # controls only in the ablation
    assert "**" in rows["PURER"] and "**" not in rows["PURER + ICFIL"]  # ICFIL alone in its group
    curriculum = tables.render_markdown(built["ablation_curriculum"])
    assert "(Δ +2.50 ± 6.35)" in curriculum  # PURER - EI, 2 seeds
    ablation = tables.render_markdown(built["ablation_icfil"])
    lines = {line.split(" | ")[0].strip("| "): line for line in ablation.splitlines() if line.startswith("| ")}
    assert "(Δ +10.50 ± 0.00)" in lines["PURER + ICFIL"] and lines["PURER + ICFIL"].count("**") == 2
    assert "PURER, 16 inner steps" in lines and "PURER + ICFIL on noise" in lines
    assert "PURER + support-only fine-tuning" in lines and "it does in the bold cells." in ablation
    diff_text = tables.render_markdown(built["differences"])
    assert "| PURER − EI (no curriculum) | +2.50 ± 6.35 |" in diff_text and "**" not in diff_text
    assert "$-$" in tables.render_latex(built["differences"])


def test_summary_json_has_differences_and_verdicts(tree, tmp_path):
    metrics = aggregate.collect_metrics(tree)
    path = aggregate.write_summary(tmp_path / "summary.json", aggregate.summarise(metrics),
                                   aggregate.paired_differences(metrics))
    data = json.loads(path.read_text())
    assert data["glyphs/5w1s/purer - ei"]["difference"] == 2.5
    assert data["glyphs/5w1s/purer - ei"]["ci95"] == round(12.706 * 0.5, 4)
    assert data["glyphs/5w1s/purer+icfil - purer+finetune-support"]["n_seeds"] == 2
    assert data["glyphs/5w1s/purer+plain-steps16"]["n_seeds"] == 2
    assert data["glyphs/5w1s/purer+icfil verdict"] == {"helps": True, "controls_beaten": 4, "compared": 4}


def test_best_on_test_is_reported_beside_the_clean_number(tmp_path):
    root = tmp_path / "exp"
    for method, clean, best in (("purer", 40.0, 46.0), ("ei", 42.0, 44.0)):
        _write(root, method, "plain", 0, [clean] * 2,
               best_on_test={"accuracy": best, "ci95": 2.0, "checkpoint": "iter00010.pt", "n_checkpoints": 5})
    summary = aggregate.summarise(aggregate.collect_metrics(root))
    built = {t.name: t for t in tables.build_tables(summary)}
    text = tables.render_markdown(built["selection"])
    assert "| PURER — selected on validation | 40.00 ± 1.00 |" in text
    assert "| PURER — best-on-test (biased) | **46.00** |" in text
    assert "| EI (no curriculum) — selected on validation | **42.00 ± 1.00** |" in text
    assert "optimistically biased" in text
    data = aggregate.summary_metrics(summary)
    assert data["glyphs/5w1s/purer"]["best_on_test"] == 46.0
