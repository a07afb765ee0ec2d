"""Meta-training run files: the model payloads, resumable checkpoints, logs, grids and the summary.

- ``meta_model.pt`` / ``last.pt``: the meta model and what is needed to rebuild and adapt it
  (written and read by :mod:`purer.meta.model_file`).
- ``checkpoint.pt``: the whole training state (:func:`checkpoint_state`: meta parameters and
  optimiser, the dynamic dataset and its optimiser, the gradient switch, every generator, the best
  validation so far with its ``meta_model.pt`` payload (rewritten on resume if a workflow deleted
  it) and the number of ``curve.jsonl``/``val.jsonl`` lines written), tagged with a *fingerprint*
  of everything that determines the run's numbers, including the teacher files' digests and the
  source of the modules that compute them. A checkpoint with another fingerprint is ignored.
- On resume the JSONL logs are truncated to the checkpoint's line counts, so a resumed run never
  has duplicate lines.
- ``summary.json`` is written last; with a matching fingerprint it marks a finished run.

Every file is written atomically (:mod:`purer.io`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import statistics
from pathlib import Path
from typing import Any

import torch

from purer.config import NEUTRAL_META_TRAIN_KEYS, ExperimentConfig, to_dict
from purer.errors import CheckpointError
from purer.inversion.dataset import DynamicDataset, domain_name, save_png
from purer.io import file_digest, load_torch, save_torch, write_json, write_text
from purer.pipeline import fingerprint_modules

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "purer-meta-train/1"
RUN_OUTPUTS = ("meta_model.pt", "last.pt", "checkpoint.pt", "summary.json", "curve.jsonl", "val.jsonl")
CODE_MODULES = fingerprint_modules()  # the meta-training step's modules (purer/pipeline.py)


def code_digest() -> str:
    """SHA-256 (first 16 hex digits) of the source of the modules that compute a run."""
    digest = hashlib.sha256()
    for name in CODE_MODULES:
        digest.update(Path(importlib.import_module(name).__file__).read_bytes())
    return digest.hexdigest()[:16]


def fingerprint(config: ExperimentConfig, method: str, n_shot: int, seed: int, teachers: list[Any]) -> dict[str, Any]:
    """Everything that determines a run's numbers, as plain JSON values (the device excluded)."""
    meta_train = to_dict(config.meta_train)
    for key in NEUTRAL_META_TRAIN_KEYS:
        meta_train.pop(key)
    meta_train["inversion"].pop("on_nonfinite")  # only matters once a step is not finite
    value = {
        "format": CHECKPOINT_FORMAT, "method": method, "n_shot": n_shot, "seed": seed, "meta_train": meta_train,
        "validation": {"dataset": config.pool.datasets[0], "inner_steps": config.meta_test.inner_steps,
                       "inner_lr": config.meta_test.inner_lr, "episode_seed": config.seed},
        "precision": config.precision, "channels_last": config.channels_last, "compile": config.compile,
        "teachers": [{"index": t.index, "architecture": t.architecture, "checkpoint": str(t.checkpoint),
                      "classes": list(t.classes), "sha256": file_digest(t.checkpoint)} for t in teachers],
        "code": code_digest(),
    }
    return json.loads(json.dumps(value))


# --------------------------------------------------------------------------------------------
# The resumable state
# --------------------------------------------------------------------------------------------


def checkpoint_state(state: Any) -> dict[str, Any]:
    """The resumable part of a trainer ``state`` (see :class:`purer.meta.state.MetaTrainState`)."""
    return {
        "iteration": state.iteration,
        "params": {name: p.detach().clone() for name, p in state.params.items()},
        "meta_optimizer": state.optimizer.state_dict(),
        "data": state.data.state_dict(),
        "switch": state.switch.state_dict(),
        "generators": {name: g.get_state() for name, g in state.generators.items()},
        "best": dict(state.best),
        "curve_lines": state.curve_lines,
        "val_lines": state.val_lines,
        "switch_events": state.switch_events,
        "val_seconds": state.val_seconds,
        "best_model": state.best_model,
        "branched_from": getattr(state, "branched_from", None),
    }


def save_checkpoint(path: Path, state: dict[str, Any], fingerprint_value: dict[str, Any]) -> None:
    """Atomically write the training state with its fingerprint."""
    save_torch(path, {"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint_value} | state)


def load_checkpoint(path: Path, fingerprint_value: dict[str, Any]) -> dict[str, Any] | None:
    """The saved training state, or ``None`` if there is none or it belongs to another run.

    Raises:
        CheckpointError: the file is truncated or not a meta-training checkpoint.
    """
    if not path.exists():
        return None
    saved = load_torch(path, "meta-training checkpoint")
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a meta-training checkpoint (expected format {CHECKPOINT_FORMAT})")
    if saved.get("fingerprint") != fingerprint_value:
        logger.warning("ignoring %s: written for another configuration or code; starting from scratch", path)
        return None
    return saved


def restore(state: Any, saved: dict[str, Any], out_dir: Path) -> None:
    """Load ``saved`` into a freshly built trainer ``state``; truncate the logs to its line counts.

    Raises:
        CheckpointError: an entry is missing or of the wrong type.
    """
    try:
        with torch.no_grad():
            for name, value in saved["params"].items():
                state.params[name].copy_(value)
        state.optimizer.load_state_dict(saved["meta_optimizer"])
        state.data.load_state_dict(saved["data"], where=f"{out_dir / 'checkpoint.pt'}: data")
        state.switch.load_state_dict(saved["switch"])
        for name, generator in state.generators.items():
            generator.set_state(saved["generators"][name])
        state.iteration = state.resumed_from = int(saved["iteration"])
        state.best = dict(saved["best"])
        state.curve_lines, state.val_lines = int(saved["curve_lines"]), int(saved["val_lines"])
        state.switch_events, state.val_seconds = int(saved["switch_events"]), float(saved["val_seconds"])
        state.best_model = saved.get("best_model")
        state.branched_from = saved.get("branched_from")
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{out_dir / 'checkpoint.pt'} does not hold a complete meta-training state "
                              f"({type(exc).__name__}: {detail}); delete it to start the run from scratch") from None
    truncate_jsonl(out_dir / "curve.jsonl", state.curve_lines)
    truncate_jsonl(out_dir / "val.jsonl", state.val_lines)


# --------------------------------------------------------------------------------------------
# Logs, grids, summary
# --------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (empty if it does not exist); a torn last line is dropped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logger.warning("%s: dropping an incomplete line", path)
            break
    return records


def truncate_jsonl(path: Path, n_lines: int) -> None:
    """Keep the first ``n_lines`` records of ``path`` (atomically).

    Raises:
        CheckpointError: the file has fewer lines than the checkpoint says were written.
    """
    records = read_jsonl(path)
    if len(records) < n_lines:
        raise CheckpointError(f"{path} has {len(records)} lines but the checkpoint recorded {n_lines}")
    write_text(path, "".join(json.dumps(r) + "\n" for r in records[:n_lines]))


def clear_run(out_dir: Path) -> None:
    """Remove the outputs of an earlier, different run in ``out_dir`` and start empty logs."""
    for name in RUN_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)
    for grid in (out_dir / "grids").glob("grid_iter*.png"):
        grid.unlink()
    write_text(out_dir / "curve.jsonl", "")
    write_text(out_dir / "val.jsonl", "")


def grid_iterations(iterations: int, snapshots: int) -> set[int]:
    """``snapshots`` iterations spread evenly over 1..iterations, the last one included."""
    if iterations < 1 or snapshots < 1:
        return set()
    return {max(1, round(iterations * k / snapshots)) for k in range(1, snapshots + 1)}


def write_grids(data: DynamicDataset, folder: Path, iteration: int) -> None:
    """``grid_iterNNNNN.png``: synthesized images, one row per class (one more file per extra domain)."""
    per_class = min(8, data.images_per_class)
    for i, key in enumerate(data.domains):
        suffix = "" if i == 0 else f"_{domain_name(key)}"
        save_png(data.class_grid(key, per_class=per_class), folder / f"grid_iter{iteration:05d}{suffix}.png")


def finished_summary(out_dir: Path, fingerprint_value: dict[str, Any]) -> dict[str, Any] | None:
    """``summary.json`` of a finished run with this fingerprint, else ``None``."""
    path = out_dir / "summary.json"
    if not path.is_file() or not (out_dir / "meta_model.pt").is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and summary.get("fingerprint") == fingerprint_value else None


def write_summary(out_dir: Path, head: dict[str, Any], state: Any, fingerprint_value: dict[str, Any]) -> dict[str, Any]:
    """Write ``summary.json``: ``head`` plus timing, switch events and validation figures.

    ``seconds`` sums the per-iteration times of ``curve.jsonl`` (across resumes);
    ``seconds_per_iteration`` is their median.
    """
    curve = read_jsonl(out_dir / "curve.jsonl")
    val = read_jsonl(out_dir / "val.jsonl")
    seconds = [float(r["seconds"]) for r in curve]
    summary = head | {
        "iterations": state.iteration,
        "seconds": sum(seconds),
        "seconds_validation": state.val_seconds,
        "seconds_per_iteration": statistics.median(seconds) if seconds else None,
        "switch_events": sum(bool(r["switch"]) for r in curve),
        "switch_iterations": [r["iteration"] for r in curve if r["switch"]],
        "best_val_accuracy": state.best["accuracy"],
        "best_val_ci95": state.best["ci95"],
        "best_iteration": state.best["iteration"],
        "final_val_accuracy": val[-1]["accuracy"] if val else None,
        "resumed_from": state.resumed_from,
        "fingerprint": fingerprint_value,
    }
    write_json(out_dir / "summary.json", summary)
    return summary
