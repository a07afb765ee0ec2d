"""The decision rule the report applies (purer/report/decision.py, config report.decision)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from purer.config import DecisionConfig, load_config
from purer.errors import ConfigError
from purer.report import aggregate
from purer.report.decision import (
    MORE_SEEDS,
    NEGATIVE,
    NO_DIFFERENCE,
    PENDING,
    POSITIVE,
    decide,
    outcome,
    write_decision,
)

POOL = "glyphs"
EI = [38.0, 57.0, 19.0, 78.0]  # per-episode accuracies; PURER of seed s is EI + d_s on every episode
RULE = DecisionConfig(pair=("purer", "ei"), n_shot=1)  # target 1.5, first look at 3 seeds, at most 5


@pytest.mark.parametrize(("n_seeds", "difference", "ci95", "expected"), [
    (2, 3.0, 1.0, PENDING),          # fewer seeds than the first look
    (3, 2.0, 1.0, POSITIVE),         # first look, narrow: the interval [1, 3] lies above zero
    (3, -2.0, 1.0, NEGATIVE),
    (3, 0.5, 1.0, NO_DIFFERENCE),
    (3, 1.0, 1.5, NO_DIFFERENCE),    # a half-width equal to the target decides; [−0.5, 2.5] holds zero
    (3, 3.0, 2.0, MORE_SEEDS),       # wider than the target: more seeds, even though [1, 5] excludes zero
    (4, 3.0, 1.0, MORE_SEEDS),       # between the two looks
    (5, 0.5, 2.5, NO_DIFFERENCE),    # the last look decides whatever the width
    (5, 3.0, 2.5, POSITIVE),
    (6, -3.0, 2.5, NEGATIVE),
])
def test_outcome_by_hand(n_seeds, difference, ci95, expected):
    assert outcome(n_seeds, difference, ci95, RULE) == expected


def _tree(root: Path, shifts: list[float]) -> Path:
    for seed, shift in enumerate(shifts):
        for method, accuracies in (("ei", EI), ("purer", [a + shift for a in EI])):
            folder = root / POOL / method / "5w1s" / f"seed{seed}" / "test" / POOL / "plain"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "metrics.json").write_text(json.dumps({
                "method": method, "dataset": POOL, "n_way": 5, "n_shot": 1, "seed": seed, "icfil": False,
                "test_variant": "plain", "selection": "val", "episodes": len(accuracies),
                "accuracy": sum(accuracies) / len(accuracies), "ci95": 1.0, "accuracies": accuracies,
                "episodes_digest": "d1",
            }))
    return root


def _decide(tmp_path: Path, shifts: list[float]):
    config = load_config(None, ["grid.methods=[purer, ei]", "grid.shots=[1]", "report.decision.pair=[purer, ei]",
                                "report.decision.n_shot=1"])
    differences = aggregate.paired_differences(aggregate.collect_metrics(_tree(tmp_path / "exp", shifts)))
    return decide(differences, config)


def test_three_close_seeds_decide_at_the_first_look(tmp_path):
    decision = _decide(tmp_path, [2.0, 2.5, 3.0])
    # mean 2.5; s = 0.5; half-width t(0.975, 2) · s / √3 = 4.303 · 0.5 / √3 = 1.242 ≤ 1.5; [1.26, 3.74] > 0
    assert decision.outcome == POSITIVE and decision.n_seeds == 3
    assert decision.difference == pytest.approx(2.5)
    assert decision.ci95 == pytest.approx(4.303 * 0.5 / math.sqrt(3))
    assert decision.seed_differences == "0:2.0000;1:2.5000;2:3.0000"
    assert decision.text.startswith("purer − ei at 5-way 1-shot (plain): +2.50 ± 1.24 points over 3 seeds")
    assert "positive: purer is better than ei" in decision.text


def test_three_spread_seeds_ask_for_more(tmp_path):
    decision = _decide(tmp_path, [-1.0, 0.5, 1.0])
    # mean 1/6; s = √(13/12) = 1.041; half-width 4.303 · 1.041 / √3 = 2.586 > 1.5
    assert decision.outcome == MORE_SEEDS
    assert decision.ci95 == pytest.approx(4.303 * math.sqrt(13 / 12) / math.sqrt(3))
    assert "adds seeds up to 5 (2 more)" in decision.text


def test_five_seeds_decide_whatever_the_width(tmp_path):
    decision = _decide(tmp_path, [-1.0, 0.5, 1.0, 0.0, 0.5])
    assert decision.outcome == NO_DIFFERENCE and decision.n_seeds == 5
    assert decision.difference == pytest.approx(0.2)


def test_missing_tests_are_pending(tmp_path):
    decision = _decide(tmp_path, [2.0, 2.5])
    assert decision.outcome == PENDING and decision.n_seeds == 2
    assert decision.difference == pytest.approx(2.25)  # recorded, not judged
    assert "2 of 3 seeds" in decision.text


def test_written_files(tmp_path):
    decision = _decide(tmp_path, [2.0, 2.5, 3.0])
    written = write_decision(decision, tmp_path / "tables")
    assert [p.name for p in written] == ["decision.md", "decision.json"]
    text = (tmp_path / "tables" / "decision.md").read_text()
    assert "**positive**" in text and "decided at 3 seeds if the 95% t half-width is at most 1.5 points" in text
    record = json.loads((tmp_path / "tables" / "decision.json").read_text())
    assert record["outcome"] == POSITIVE and record["pair"] == ["purer", "ei"] and record["setting"] == "5w1s"


@pytest.mark.parametrize(("override", "message"), [
    ("report.decision.pair=[purer, nobody]", "report.decision.pair: expected methods, arms or sweeps of the grid"),
    ("report.decision.pair=[purer]", "report.decision.pair: expected two different run names"),
    ("report.decision.n_shot=3", "report.decision.n_shot: expected one of grid.shots [1, 5]"),
    ("report.decision.max_seeds=2", "report.decision.max_seeds: expected at least first_seeds (3)"),
    ("report.decision.first_seeds=1", "report.decision.first_seeds: expected at least 2"),
    ("report.decision.dataset=elsewhere", "report.decision.dataset: expected a test dataset ['glyphs'] or null"),
])
def test_a_bad_rule_is_one_clear_error(override, message):
    base = ["report.decision.pair=[purer, ei]"]
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        load_config(None, [*base, override] if "pair=" not in override else [override])


def test_the_replication_study_fixes_its_rule():
    config = load_config(Path(__file__).resolve().parents[1] / "config" / "experiments" / "replication.yaml")
    rule = config.report.decision
    assert rule.pair == ("purer-parity", "ei-triangular") and rule.n_shot == 5 and rule.variant == "plain"
    assert (rule.target_half_width, rule.first_seeds, rule.max_seeds) == (1.5, 3, 5)
