"""Sweeps: a group of arms of which the report keeps one per shot, chosen on validation only.

``grid.sweeps: {name: [arm, ...]}``. The *validation score* of an arm in a shot is the mean over
its seeds of ``best_val_accuracy`` in the runs' ``summary.json`` (the validation accuracy of the
selected checkpoint, ``meta_model.pt``). Per shot the member with the highest score is selected
(ties: the first listed); its test rows are then reported a second time under the sweep's name
(:func:`sweep_rows`), so tables, paired differences (``grid.pairs`` may name the sweep) and
``summary.json`` treat the sweep like a run. Selection reads run summaries only, never a test
number. Every member's score is reported (:func:`selection_table`, :func:`selection_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from purer import paths
from purer.config import ExperimentConfig
from purer.errors import DataError
from purer.report.aggregate import read_json, variant_label

COLUMNS = ["sweep", "n_way", "n_shot", "member", "val_score", "n_seeds", "seed_scores", "selected"]


def validation_scores(config: ExperimentConfig) -> pd.DataFrame:
    """``best_val_accuracy`` of every run of every sweep member: columns name, n_shot, seed, val_accuracy.

    Raises:
        DataError: a run's ``summary.json`` is missing or lacks ``best_val_accuracy`` (naming it).
    """
    members = dict.fromkeys(m for group in config.grid.sweeps.values() for m in group)
    rows = []
    for name in members:
        for n_shot in config.grid.shots:
            for seed in config.grid.seeds:
                path = paths.run_dir(config, name, n_shot, seed) / "summary.json"
                if not path.is_file():
                    raise DataError(f"sweep member {name}: {path} is missing (run `purer meta-train --method {name}`)")
                score = read_json(path, "run summary").get("best_val_accuracy")
                if not isinstance(score, (int, float)) or isinstance(score, bool):
                    raise DataError(f"run summary {path}: best_val_accuracy must be a number, got {score!r}")
                rows.append({"name": name, "n_shot": n_shot, "seed": seed, "val_accuracy": float(score)})
    return pd.DataFrame(rows, columns=["name", "n_shot", "seed", "val_accuracy"])


def select(sweeps: Mapping[str, Sequence[str]], scores: pd.DataFrame, n_way: int) -> pd.DataFrame:
    """Every member's validation score per sweep and shot, and which one is selected.

    Args:
        sweeps: ``grid.sweeps``.
        scores: the frame of :func:`validation_scores` (validation numbers only).
        n_way: the episodes' ways (for the setting columns).

    Returns:
        One row per (sweep, shot, member) in the listed order: :data:`COLUMNS`; ``selected`` is
        True for exactly one member per sweep and shot (the highest score; ties: the first).
    """
    rows = []
    for sweep, members in sweeps.items():
        for n_shot in sorted(set(scores["n_shot"])):
            group = []
            for member in members:
                own = scores[(scores["name"] == member) & (scores["n_shot"] == n_shot)].sort_values("seed")
                if own.empty:
                    continue
                seed_scores = ";".join(f"{s}:{a:.4f}" for s, a in zip(own["seed"], own["val_accuracy"], strict=True))
                group.append({"sweep": sweep, "n_way": n_way, "n_shot": int(n_shot), "member": member,
                              "val_score": float(own["val_accuracy"].mean()), "n_seeds": len(own),
                              "seed_scores": seed_scores, "selected": False})
            if group:
                best = max(range(len(group)), key=lambda i: (group[i]["val_score"], -i))
                group[best]["selected"] = True
                rows += group
    return pd.DataFrame(rows, columns=COLUMNS)


def sweep_rows(metrics: pd.DataFrame, selection: pd.DataFrame) -> pd.DataFrame:
    """``metrics`` plus the selected members' rows again, renamed to their sweep (per shot)."""
    extra = []
    for _, choice in selection[selection["selected"]].iterrows():
        rows = metrics[(metrics["method"] == choice["member"]) & (metrics["n_shot"] == choice["n_shot"])].copy()
        rows["method"] = choice["sweep"]
        rows["variant"] = [f"{variant_label(choice['sweep'], v)} (= {choice['member']} on validation)"
                           for v in rows["test_variant"]]
        extra.append(rows)
    return pd.concat([metrics, *extra], ignore_index=True) if extra else metrics


def selection_metrics(selection: pd.DataFrame) -> dict[str, dict[str, float | int | bool]]:
    """``summary.json`` entries ``sweep/<sweep>/<n_way>w<n_shot>s/<member>``: score, seeds, selected."""
    return {
        f"sweep/{r['sweep']}/{r['n_way']}w{r['n_shot']}s/{r['member']}": {
            "val_score": round(float(r["val_score"]), 4), "n_seeds": int(r["n_seeds"]), "selected": bool(r["selected"]),
        }
        for _, r in selection.iterrows()
    }


def selection_table(selection: pd.DataFrame) -> dict[str, str]:
    """``tables/sweeps.md`` and ``tables/sweeps.csv``: every member's validation score per shot."""
    lines = ["# Sweeps: validation score of every member (%); * = selected", "",
             "| Sweep | Shot | Member | Validation score | Seeds |", "|---|---|---|---|---|"]
    for _, r in selection.iterrows():
        mark = " *" if r["selected"] else ""
        score = "—" if math.isnan(r["val_score"]) else f"{r['val_score']:.2f}"
        lines.append(f"| {r['sweep']} | {r['n_way']}-way {r['n_shot']}-shot | {r['member']}{mark} | {score} | "
                     f"{r['seed_scores']} |")
    lines += ["", "Score: mean over seeds of the selected checkpoint's validation accuracy (summary.json "
              "best_val_accuracy); the test split is not used to select."]
    return {"sweeps.md": "\n".join(lines) + "\n", "sweeps.csv": selection.to_csv(index=False)}


def write_selection(selection: pd.DataFrame, folder: Path) -> list[Path]:
    """Write :func:`selection_table` into ``folder``; returns the paths."""
    from purer.io import write_text

    written = []
    for name, text in selection_table(selection).items():
        write_text(folder / name, text)
        written.append(folder / name)
    return written
