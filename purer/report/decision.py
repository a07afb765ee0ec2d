"""A study's decision rule, applied by the report to the paired differences (``report.decision``).

The rule is fixed in the config before the runs (results/replication/README.md, "Decision rule"):
the contrast ``a − b`` of ``report.decision.pair`` at ``n_shot`` in one test variant is, per seed,
the mean of the per-episode differences over the shared test episodes; across seeds, the mean of
those with a 95% Student t interval (``purer.report.aggregate.paired_differences``). Then:

1. fewer than ``first_seeds`` seeds with both tests: **pending**;
2. at ``first_seeds`` seeds with a half-width of at most ``target_half_width``, or at ``max_seeds``
   or more seeds whatever the width: decided, **positive** (the interval lies above zero),
   **negative** (below zero) or **no detectable difference** (it contains zero);
3. otherwise (wider than the target at the first look, or between the two looks): **more seeds**,
   up to ``max_seeds``; the grid's ``seeds`` must be extended before the decision.

Only the numbers of the named contrast are read; nothing here chooses among runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from purer.config import DecisionConfig, ExperimentConfig
from purer.errors import DataError
from purer.io import write_json, write_text

PENDING, MORE_SEEDS = "pending", "more seeds"
POSITIVE, NEGATIVE, NO_DIFFERENCE = "positive", "negative", "no detectable difference"


@dataclass(frozen=True)
class Decision:
    """What the rule says now: the outcome, its numbers (None while pending) and one sentence."""

    pair: tuple[str, str]
    setting: str  # e.g. "5w5s"
    variant: str
    dataset: str
    outcome: str  # PENDING, MORE_SEEDS, POSITIVE, NEGATIVE or NO_DIFFERENCE
    n_seeds: int
    difference: float | None  # mean of the per-seed paired differences (percentage points)
    ci95: float | None  # 95% t half-width across seeds
    seed_differences: str  # "seed:difference;..." as in the paired-differences table
    target_half_width: float
    first_seeds: int
    max_seeds: int
    text: str


def outcome(n_seeds: int, difference: float | None, ci95: float | None, rule: DecisionConfig) -> str:
    """The rule's outcome for ``n_seeds`` paired seeds with mean ``difference`` ± ``ci95`` (module docstring)."""
    if n_seeds < rule.first_seeds or difference is None or ci95 is None:
        return PENDING
    first_look_decides = n_seeds == rule.first_seeds and ci95 <= rule.target_half_width
    if not first_look_decides and n_seeds < rule.max_seeds:
        return MORE_SEEDS
    if difference - ci95 > 0:
        return POSITIVE
    if difference + ci95 < 0:
        return NEGATIVE
    return NO_DIFFERENCE


def decide(differences: pd.DataFrame, config: ExperimentConfig) -> Decision:
    """Apply ``config.report.decision`` to the report's paired differences.

    Args:
        differences: :func:`purer.report.aggregate.paired_differences` of the grid (sweeps already
            resolved to their selected member).

    Raises:
        DataError: the contrast has several rows for the same shot, variant and dataset (runs of
            another pool or context mixed in), naming how many.
    """
    rule = config.report.decision
    if rule is None:
        raise DataError("report.decision is not set: there is no decision rule to apply")
    a, b = rule.pair
    n_way = config.meta_test.n_way
    dataset = rule.dataset or config.test_datasets[0]
    rows = differences
    if not rows.empty:
        rows = rows[(rows["a_method"] == a) & (rows["b_method"] == b) & (rows["a_variant"] == rule.variant)
                    & (rows["b_variant"] == rule.variant) & (rows["n_shot"] == rule.n_shot)
                    & (rows["n_way"] == n_way) & (rows["dataset"] == dataset)]
    if len(rows) > 1:
        raise DataError(f"report.decision: {len(rows)} rows of {a} − {b} at {n_way}-way {rule.n_shot}-shot "
                        f"({rule.variant}, {dataset}); expected one (results of several pools or contexts?)")
    row = rows.iloc[0] if len(rows) else None
    n_seeds = 0 if row is None else int(row["n_seeds"])
    difference = None if row is None or n_seeds < 2 else float(row["difference"])
    ci95 = None if row is None or n_seeds < 2 else float(row["ci95"])
    result = outcome(n_seeds, difference, ci95, rule)
    seeds = "" if row is None else str(row["seed_differences"])
    return Decision(
        pair=(a, b), setting=f"{n_way}w{rule.n_shot}s", variant=rule.variant, dataset=dataset, outcome=result,
        n_seeds=n_seeds, difference=difference, ci95=ci95, seed_differences=seeds,
        target_half_width=rule.target_half_width, first_seeds=rule.first_seeds, max_seeds=rule.max_seeds,
        text=sentence(result, a, b, n_way, rule, n_seeds, difference, ci95),
    )


def sentence(result: str, a: str, b: str, n_way: int, rule: DecisionConfig, n_seeds: int,
             difference: float | None, ci95: float | None) -> str:
    """One plain sentence for the outcome."""
    what = f"{a} − {b} at {n_way}-way {rule.n_shot}-shot ({rule.variant})"
    if result == PENDING:
        return (f"{what}: pending, {n_seeds} of {rule.first_seeds} seeds have both tests; "
                "the rule decides at the first look or later.")
    numbers = (f"{difference:+.2f} ± {ci95:.2f} points over {n_seeds} seeds "
               f"(95% t interval [{difference - ci95:+.2f}, {difference + ci95:+.2f}])")
    if result == MORE_SEEDS:
        return (f"{what}: {numbers}; the half-width exceeds the {rule.target_half_width:g}-point target at the first "
                f"look, so the rule adds seeds up to {rule.max_seeds} ({rule.max_seeds - n_seeds} more) and decides there.")
    verdict = {POSITIVE: f"positive: {a} is better than {b}",
               NEGATIVE: f"negative: {a} is worse than {b}",
               NO_DIFFERENCE: "no detectable difference: the interval contains zero"}[result]
    return (f"{what}: {numbers}; {verdict} (half-width {ci95:.2f} against the {rule.target_half_width:g}-point "
            "target).")


def write_decision(decision: Decision, folder: Path) -> list[Path]:
    """``decision.md`` (the sentence and the rule) and ``decision.json`` (every field) in ``folder``."""
    rule = (f"Rule (report.decision, fixed before the runs): decided at {decision.first_seeds} seeds if the 95% "
            f"t half-width is at most {decision.target_half_width:g} points, else at {decision.max_seeds} seeds "
            "whatever the width; positive if the interval lies above zero, negative if below, otherwise no "
            "detectable difference.")
    lines = [f"# Decision: {decision.pair[0]} − {decision.pair[1]}, {decision.setting} ({decision.variant}, "
             f"{decision.dataset})", "", f"**{decision.outcome}**. {decision.text}", "", rule, ""]
    if decision.seed_differences:
        lines += [f"Per-seed paired differences (seed:points): {decision.seed_differences}", ""]
    write_text(folder / "decision.md", "\n".join(lines))
    write_json(folder / "decision.json", asdict(decision))
    return [folder / "decision.md", folder / "decision.json"]
