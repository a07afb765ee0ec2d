"""Branching a PURER run from an EI run's warm-up state (``grid.arms.<name>.branch_from``).

Up to its warm-up a PURER run is an EI run with the same settings: the gradient switch acts only
after meta-iteration ``warmup`` (:mod:`purer.inversion.curriculum`), every generator is named
without the method (``make_generator(seed, name)``), and nothing else reads the method before it.
So the EI *trunk* saves its whole training state after meta-iteration ``warmup``
(``warmup_checkpoint.pt``, a ``checkpoint.pt`` with the trunk's fingerprint), and the PURER
*branch* starts from it: the trunk's logs, grids and snapshots up to the warm-up are copied, the
state is restored, the switch is PURER's as after ``observe(warmup)`` (on: the next data step is
reversed), and the model payloads name the branch's method. Which keys may differ between the two
runs: :func:`purer.arms.branch_differences`.

The warm-up state is the state after the warm-up iteration's scheduled validation but before a
final validation (a trunk whose last iteration is the warm-up validates once more, after saving).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

from purer.errors import CheckpointError
from purer.io import load_torch, save_torch, write_text
from purer.meta import checkpoint as ckpt

logger = logging.getLogger(__name__)

WARMUP_CHECKPOINT = "warmup_checkpoint.pt"
_ITERATION = re.compile(r"iter(\d+)")


def save_warmup_state(run: Any, state: Any) -> None:
    """The trunk's whole state after the warm-up iteration (``warmup_checkpoint.pt``)."""
    ckpt.save_checkpoint(run.out_dir / WARMUP_CHECKPOINT, ckpt.checkpoint_state(state), run.fingerprint)


def trunk_fingerprint(run: Any) -> dict[str, Any]:
    """The fingerprint the trunk's checkpoints carry (the EI method, the trunk's config, same pool)."""
    trunk_config, _ = run.branch
    return ckpt.fingerprint(trunk_config, "ei", run.n_shot, run.seed, list(run.manifest.teachers))


def start_from_trunk(run: Any, state: Any) -> None:
    """Load the trunk's warm-up state into a freshly built PURER ``state`` and copy its files.

    Raises:
        CheckpointError: the trunk's warm-up state is missing, or it was written for another
            configuration or code, or at another iteration.
    """
    _, trunk_dir = run.branch
    trunk_dir = Path(trunk_dir)
    path = trunk_dir / WARMUP_CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: run the ei trunk {trunk_dir} first (it saves its warm-up state "
                              "when an arm branches from it)")
    saved = ckpt.load_checkpoint(path, trunk_fingerprint(run))
    warmup = state.switch.warmup
    if saved is None:
        raise CheckpointError(f"{path} was written for another configuration or code than this branch's trunk; "
                              f"rerun the trunk {trunk_dir}")
    if int(saved["iteration"]) != warmup:
        raise CheckpointError(f"{path} holds meta-iteration {saved['iteration']}, not the warm-up {warmup}")
    switch = state.switch.state_dict()  # PURER's switch, before any observation
    for name in ("curve.jsonl", "val.jsonl"):
        write_text(run.out_dir / name, (trunk_dir / name).read_text(encoding="utf-8"))  # restore cuts them
    ckpt.restore(state, saved, run.out_dir)
    state.switch.load_state_dict(switch)
    state.switch.observe(warmup, 0.0)  # at the warm-up iteration the switch turns on, whatever the accuracy
    state.resumed_from = None
    state.branched_from = {"run": str(trunk_dir), "iteration": warmup}
    if state.best_model is not None:
        state.best_model = _as_branch(state.best_model, run)
        save_torch(run.out_dir / "meta_model.pt", state.best_model)
    for folder in ("grids", "snapshots"):
        for source in sorted((trunk_dir / folder).glob("*")):
            match = _ITERATION.search(source.name)
            if match is None or int(match.group(1)) > warmup or not source.is_file():
                continue
            target = run.out_dir / folder / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.suffix == ".pt":
                save_torch(target, _as_branch(load_torch(source, "meta-model snapshot"), run))
            else:
                shutil.copyfile(source, target)
    logger.info("branched %s from %s at meta-iteration %d", run.out_dir, trunk_dir, warmup)


def _as_branch(payload: dict[str, Any], run: Any) -> dict[str, Any]:
    """A trunk model payload as the branch would have written it (its method and run entries)."""
    return payload | {key: run.info[key] for key in ("method", "n_shot", "seed")}
