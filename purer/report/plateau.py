"""The plateau rule that fixes a study's warm-up and length from a pilot's validation curve.

The rule of results/replication/README.md ("Length"), stated before the pilot's curve was read:

- ``S(i)``: the mean of the ``window`` validation accuracies ending at iteration ``i`` (with
  validation every 250 iterations and ``window = 4``, a 1,000-iteration window);
- ``g(i) = S(i + horizon) - S(i)``: what the run still gains over the next ``horizon`` iterations;
- the plateau ``P`` is the smallest ``i >= start`` at which ``g(i)``, ``g(i + step)``, ...,
  ``g(i + (checks - 1)·step)`` are all below ``threshold`` points (``step``: the validation
  interval); when the curve has no such ``i``, ``P = cap`` (the pilot's length: "not reached");
- the warm-up ``W = max(1.25·P, P + 1000)`` rounded up to a multiple of 500, and the length
  ``T = 3·W``.

    python -m purer.report.plateau results/replication/pilot/val.csv --out results/replication/pilot/plateau.json

reads a ``val.csv`` record (``iteration,accuracy,ci95``) or a run's ``val.jsonl`` and writes every
``S(i)`` and ``g(i)`` with the outcome, so the numbers behind the study's length can be checked.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from purer.errors import DataError
from purer.io import write_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlateauRule:
    """The rule's constants (the defaults are the replication study's)."""

    window: int = 4  # validation points averaged into S(i)
    horizon: int = 1000  # iterations ahead compared by g(i)
    threshold: float = 0.5  # accuracy points: g below this counts as "no longer improving"
    checks: int = 3  # consecutive validation points at which g must stay below the threshold
    start: int = 1000  # the smallest iteration the plateau may be at
    cap: int = 6000  # P when the curve never plateaus (the pilot's length)


def smoothed(curve: dict[int, float], interval: int, window: int) -> dict[int, float]:
    """``S(i)`` for every ``i`` with ``window`` validation points ending at it (``curve``: iteration -> accuracy)."""
    return {
        i: sum(curve[i - k * interval] for k in range(window)) / window
        for i in curve
        if all(i - k * interval in curve for k in range(window))
    }


def gains(curve: dict[int, float], interval: int, rule: PlateauRule) -> dict[int, float]:
    """``g(i) = S(i + horizon) - S(i)`` wherever both are defined."""
    s = smoothed(curve, interval, rule.window)
    return {i: s[i + rule.horizon] - s[i] for i in s if i + rule.horizon in s}


def validation_interval(iterations: list[int]) -> int:
    """The curve's one validation interval; DataError unless the iterations are evenly spaced."""
    steps = {b - a for a, b in zip(iterations, iterations[1:], strict=False)}
    if len(steps) != 1 or min(steps) <= 0:
        raise DataError(f"validation iterations must be evenly spaced and increasing, got {iterations[:6]}...")
    return steps.pop()


def plateau(curve: dict[int, float], rule: PlateauRule = PlateauRule()) -> dict:
    """Apply the rule to a validation curve (``{iteration: accuracy in points}``).

    Returns ``{"plateau": P, "reached": bool, "warmup": W, "length": T, "interval": ...,
    "smoothed": {i: S(i)}, "gains": {i: g(i)}, "rule": {...}}``.
    """
    iterations = sorted(curve)
    if len(iterations) < 2:
        raise DataError(f"a validation curve needs at least 2 points, got {len(iterations)}")
    interval = validation_interval(iterations)
    g = gains(curve, interval, rule)
    found = next(
        (
            i
            for i in sorted(g)
            if i >= rule.start
            and all(i + k * interval in g and g[i + k * interval] < rule.threshold for k in range(rule.checks))
        ),
        None,
    )
    p = rule.cap if found is None else found
    warmup = warmup_for(p)
    return {
        "plateau": p,
        "reached": found is not None,
        "warmup": warmup,
        "length": 3 * warmup,
        "interval": interval,
        "last_iteration": iterations[-1],
        "smoothed": {str(i): round(v, 4) for i, v in sorted(smoothed(curve, interval, rule.window).items())},
        "gains": {str(i): round(v, 4) for i, v in sorted(g.items())},
        "rule": asdict(rule),
    }


def warmup_for(plateau_iteration: int) -> int:
    """``W = max(1.25·P, P + 1000)`` rounded up to a multiple of 500."""
    return int(math.ceil(max(1.25 * plateau_iteration, plateau_iteration + 1000) / 500) * 500)


def read_curve(path: str | Path) -> dict[int, float]:
    """``{iteration: accuracy}`` from a ``val.csv`` record or a run's ``val.jsonl``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read the validation curve ({exc.strerror})") from None
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = list(csv.DictReader(text.splitlines()))
        return {int(row["iteration"]): float(row["accuracy"]) for row in rows}
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: expected rows with 'iteration' and 'accuracy' ({exc})") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Apply the plateau rule to a pilot's validation curve.")
    parser.add_argument("curve", type=Path, help="val.csv (a run record) or val.jsonl (a run folder)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write the outcome to")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        outcome = plateau(read_curve(args.curve))
    except DataError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    write_json(args.out, outcome)
    logger.info(
        "plateau %s at %d (curve to %d): warm-up %d, length %d -> %s",
        "reached" if outcome["reached"] else "not reached, P = cap",
        outcome["plateau"], outcome["last_iteration"], outcome["warmup"], outcome["length"], args.out,
    )


if __name__ == "__main__":
    main()
