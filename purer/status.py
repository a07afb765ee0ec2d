"""Where a long experiment stands, read from its run folders without reading a test number.

For every meta-training run of the grid (:func:`purer.grid.grid_runs`): its state (``finished``: a
``summary.json``; ``partial``: training logs but no summary, i.e. running or stopped, resumable;
``stale``: logs of another ``meta_train`` configuration, per the folder's ``config.resolved.yaml``,
which the run starts over; ``not started``), the meta-iteration reached of the run's length, the latest and the best
validation accuracy so far, the latest checkpoint (where a stopped run resumes: the logs past it are
recomputed), the reversed steps taken, a time-left estimate from the median seconds
of the last 100 logged meta-iterations, how long ago its logs or checkpoint were last written (a
run that is going writes ``curve.jsonl`` every meta-iteration; a stopped one falls silent), and how
many of its meta-tests exist. The meta-tests'
numbers are not read: a study can be watched without seeing its test results before the runs end.

Pure Python and JSON (no torch, no pandas): it is cheap to run at any time.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from purer import arms, paths
from purer.config import NEUTRAL_META_TRAIN_KEYS, ExperimentConfig, effective_warmup, to_dict
from purer.grid import grid_runs
from purer.variants import grid_variants

RECENT = 100  # logged meta-iterations behind the time-left estimate


@dataclass(frozen=True)
class RunStatus:
    """One run's progress (accuracies in points; None where nothing is logged yet)."""

    run: str
    n_shot: int
    seed: int
    state: str  # finished / partial / stale / not started
    iteration: int  # meta-iterations logged (the last curve.jsonl line)
    iterations: int  # the run's length (its arm's meta_train.iterations; 0 for an initialisation)
    start: int  # where its own training starts: the warm-up for an arm branched from a trunk, else 0
    checkpoint: int | None  # the meta-iteration a stopped partial run resumes from (None unless partial)
    last_val: tuple[int, float] | None  # (iteration, accuracy) of the latest validation
    best_val: tuple[int, float] | None  # (iteration, accuracy) of the best validation so far
    switches: int  # meta-iterations with a reversed step
    seconds_left: float | None  # (iterations - iteration) * median recent seconds per meta-iteration
    seconds_since_write: float | None  # now - the newest modification time of its logs and checkpoint
    tests_done: int
    tests: int


def read_lines(path: Path) -> list[dict]:
    """The JSON objects of a JSONL log; a torn last line (a sitting stopped mid-write) is skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def written_for_another_config(run: Path, meta_train: dict) -> bool:
    """Whether the run folder's ``config.resolved.yaml`` has another ``meta_train`` (neutral keys aside)."""
    try:
        written = yaml.safe_load((run / "config.resolved.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    if not isinstance(written, dict) or not isinstance(written.get("meta_train"), dict):
        return False
    def strip(section: dict) -> dict:
        return {k: v for k, v in section.items() if k not in NEUTRAL_META_TRAIN_KEYS}
    return strip(written["meta_train"]) != strip(meta_train)


TRAINING_FILES = ("curve.jsonl", "val.jsonl", "checkpoint.pt")


def seconds_since_write(run: Path, now: float) -> float | None:
    """Seconds since the newest of the run folder's training files was written; None if it has none."""
    times = [(run / name).stat().st_mtime for name in TRAINING_FILES if (run / name).is_file()]
    return max(now - max(times), 0.0) if times else None


def resume_point(run: Path, iteration: int, interval: int, start: int) -> int:
    """The meta-iteration of a run's latest checkpoint, from its logs alone (no torch).

    The trainer writes ``checkpoint.pt`` every ``interval`` meta-iterations (purer/meta/train.py), so
    the latest one is the last multiple of ``interval`` logged; before its first one a run resumes from
    where its training starts (``start``: 0, or the warm-up checkpoint of a branched run).
    """
    if not (run / "checkpoint.pt").is_file():
        return start
    return max(start, iteration // interval * interval)


def run_status(config: ExperimentConfig, name: str, n_shot: int, seed: int, now: float | None = None) -> RunStatus:
    """The progress of run ``name`` (a method or an arm) at ``n_shot`` and ``seed``; ``now``: a Unix
    time for the last-write age (default: the current time)."""
    resolved = arms.resolve(config, name)
    run = paths.run_dir(config, name, n_shot, seed)
    trained = resolved.method in ("purer", "ei")
    mt = resolved.config.meta_train
    length = mt.iterations if trained else 0
    start = effective_warmup(mt.curriculum, mt.iterations) if arms.trunk_of(config, name) else 0
    curve = read_lines(run / "curve.jsonl")
    val = [(int(r["iteration"]), float(r["accuracy"])) for r in read_lines(run / "val.jsonl")
           if "iteration" in r and "accuracy" in r]
    iteration = int(curve[-1].get("iteration", len(curve))) if curve else 0
    if (run / "summary.json").is_file():
        state = "finished"
    elif not (curve or val or (run / "checkpoint.pt").is_file()):
        state = "not started"
    elif trained and written_for_another_config(run, to_dict(mt)):
        state, iteration, curve, val = "stale", 0, [], []
    else:
        state = "partial"
    recent = [float(r["seconds"]) for r in curve[-RECENT:] if isinstance(r.get("seconds"), (int, float))]
    seconds_left = None
    if state == "partial" and recent:
        seconds_left = max(length - iteration, 0) * statistics.median(recent)
    tests = [paths.test_dir(run, dataset, variant) / "metrics.json"
             for dataset in config.test_datasets for variant in grid_variants(config, name)]
    return RunStatus(
        run=name, n_shot=n_shot, seed=seed, state=state, iteration=iteration, iterations=length, start=start,
        checkpoint=resume_point(run, iteration, mt.checkpoint_interval, start) if state == "partial" else None,
        last_val=val[-1] if val else None, best_val=max(val, key=lambda v: (v[1], -v[0])) if val else None,
        switches=sum(1 for r in curve if r.get("switch")), seconds_left=seconds_left,
        seconds_since_write=(seconds_since_write(run, time.time() if now is None else now)
                             if state == "partial" else None),
        tests_done=sum(1 for t in tests if t.is_file()), tests=len(tests),
    )


def experiment_status(config: ExperimentConfig, now: float | None = None) -> list[RunStatus]:
    """:func:`run_status` of every run of the grid, in the grid's order."""
    now = time.time() if now is None else now
    return [run_status(config, name, n_shot, seed, now) for name, n_shot, seed in grid_runs(config)]


def teachers_done(config: ExperimentConfig, n_teachers: int) -> int:
    """How many of the pool's ``n_teachers`` checkpoints exist."""
    return sum(1 for i in range(n_teachers) if paths.teacher_path(config, i).is_file())


def _accuracy(value: tuple[int, float] | None) -> str:
    return "-" if value is None else f"{value[1]:.2f} @{value[0]}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{int(seconds)} s ago"
    if seconds < 2 * 3600:
        return f"{int(seconds // 60)} min ago"
    return f"{_duration(seconds)} ago"


def status_table(rows: list[RunStatus]) -> str:
    """A Markdown table of :func:`experiment_status`, one line per run, with a total line."""
    lines = ["| run | shot | seed | state | meta-iteration | checkpoint | last val | best val | reversed steps | "
             "time left | last write | meta-tests |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        progress = f"{r.iteration}/{r.iterations}" if r.iterations else "-"
        checkpoint = "-" if r.checkpoint is None else str(r.checkpoint)
        lines.append(f"| {r.run} | {r.n_shot} | {r.seed} | {r.state} | {progress} | {checkpoint} | {_accuracy(r.last_val)} | "
                     f"{_accuracy(r.best_val)} | {r.switches} | {_duration(r.seconds_left)} | {_ago(r.seconds_since_write)} | {r.tests_done}/{r.tests} |")
    finished = sum(r.state == "finished" for r in rows)
    left = sum(r.iterations - max(r.iteration, r.start) for r in rows if r.state != "finished")
    lines.append(f"\n{finished} of {len(rows)} runs finished; {left} meta-iterations left in the others "
                 "(a branched run from its warm-up on).")
    return "\n".join(lines)
