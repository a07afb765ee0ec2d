"""ECI meta-training and the training-time baselines (docs/method.md §2.8, §6).

Methods: ``purer`` (ECI: the dynamic dataset inverted from the pool plus the gradient switch),
``ei`` (the same inversion, the switch never fires), ``random`` (no meta-training: the seeded
random initialisation is the meta model) and ``average`` (no meta-training: the FedAvg of the
teachers, one architecture only).

One meta-iteration (docs/method.md §2.8; run by the engine, :mod:`purer.meta.engine`):

1. **data step**: the inversion loss of the pool (``teachers_per_step`` teachers if set), plus the
   reversed outer loss of a fresh non-detached pseudo episode when the switch is on; one Adam step
   on the images, with gradients taken with respect to the images only. A non-finite data loss
   stops the run or skips the step (``inversion.on_nonfinite``);
2. **meta step**: ``meta_batch_size`` episodes from the detached dynamic dataset; the outer losses
   are summed, with one backward per episode so only one episode's graph is alive at a time; one
   Adam step on the meta parameters;
3. **switch**: fed the meta-batch's mean training query accuracy (percent).

Randomness comes from separate generators: ``data_init`` (initial images, CPU), ``episodes`` and
``adv_episodes`` (training and reversed-step episodes, on the device), ``jitter`` and ``teachers``
(CPU: they yield Python ints). Tensors stay on the device; an iteration synchronises once, to
write its curve line, feed the switch and report a skipped (non-finite) data step.

Validation uses fixed episodes of the first pool dataset's ``val`` split (seeded with the
experiment seed, so every method and seed is selected on the same tasks) and the meta-test
adaptation (``meta_test.inner_steps`` first-order steps); the best-on-val model is ``meta_model.pt``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from purer import paths
from purer.config import ExperimentConfig
from purer.data.cache import SplitData, load_split
from purer.data.episodes import EpisodeSet, fixed_episodes
from purer.errors import CheckpointError, ConfigError
from purer.inversion.curriculum import GradientSwitch, class_strengths
from purer.inversion.dataset import DynamicDataset
from purer.inversion.teacher_pool import ResidentPool
from purer.io import append_jsonl, remove_stale_temporaries, save_torch
from purer.meta import branch as branch_files
from purer.meta import checkpoint as ckpt
from purer.meta import engine
from purer.meta.evaluate import evaluate
from purer.meta.init import initial_meta_model, meta_model_spec
from purer.meta.learners import (
    GradientLearner,
    ProtoNet,
    build_learner,
    episode_loss_fn,
    meta_parameters,
)
from purer.meta.model_file import meta_model_payload
from purer.meta.state import MetaTrainRun, MetaTrainState
from purer.models.manifest import cut_to_max_teachers, load_config_manifest, load_pool
from purer.outputs import claim_output
from purer.pipeline import METHODS, TRAINED
from purer.runinfo import write_run_info
from purer.runtime import require_compiler, resolve_device
from purer.seeding import make_generator
from purer.tracking import progress

logger = logging.getLogger(__name__)

GENERATORS = {"episodes": "device", "adv_episodes": "device", "jitter": "cpu", "teachers": "cpu"}
INIT_HINT = "; set meta_train.init: random to start purer/ei from a random initialisation"


def meta_train(
    config: ExperimentConfig,
    method: str,
    n_shot: int,
    seed: int,
    out_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    restart: bool = False,
    *,
    arm: str | None = None,
    save_warmup: bool = False,
    branch: tuple[ExperimentConfig, Path] | None = None,
) -> dict[str, Any]:
    """Meta-train (or, for the baselines, initialise and validate) one run.

    Args:
        config: the experiment (``meta_train``; ``meta_test`` for the validation adaptation).
        method: ``purer``, ``ei``, ``random`` or ``average``.
        n_shot: support images per class of the training and validation episodes.
        seed: the run seed (generators and the meta-model initialisation).
        out_dir: default :func:`purer.paths.run_dir`.
        device: default ``config.device``.
        restart: discard a run of another fingerprint in ``out_dir`` (else it is refused).
        arm: the arm's name (``grid.arms``), recorded in ``summary.json``; ``config`` is the arm's.
        save_warmup: also save the state after the warm-up iteration (an arm branches from this run).
        branch: (trunk config, trunk run folder): start a ``purer`` run from that ``ei`` run's
            warm-up state (:mod:`purer.meta.branch`) unless its own checkpoint is further on.

    Returns:
        The ``summary.json`` dict. A finished run with the same fingerprint is not redone; a run
        with a matching ``checkpoint.pt`` continues from it.

    Raises:
        CheckpointError: ``out_dir`` holds ``meta_model.pt`` or ``summary.json`` of a run with
            another fingerprint (configuration, teachers or code) and ``restart`` is False. A
            folder without them (a new one, or one whose outputs Snakemake deleted to rerun the
            job after a change) starts over as before.
    """
    run = prepare_run(config, method, n_shot, seed, out_dir, device)
    run.arm, run.save_warmup, run.branch = arm, save_warmup, branch
    if branch is not None and method != "purer":
        raise ConfigError(f"only a purer run can branch from an ei run's warm-up (got method {method})")
    done = ckpt.finished_summary(run.out_dir, run.fingerprint)
    if done is not None and save_warmup and not (run.out_dir / branch_files.WARMUP_CHECKPOINT).is_file():
        done = None  # finished before an arm branched from it: rerun to save the warm-up state
    if done is not None:
        logger.info("%s is already complete; nothing to do", run.out_dir)
        return done
    return train(run, restart) if method in TRAINED else baseline(run, restart)


def refuse_foreign_run(run: MetaTrainRun, restart: bool) -> None:
    """Raise CheckpointError when the run folder holds finished outputs of another run (see :func:`meta_train`);
    this run's own finished outputs (a run rerun to save its warm-up state) are not foreign."""
    found = [name for name in ("meta_model.pt", "summary.json") if (run.out_dir / name).is_file()]
    if found and not restart and ckpt.finished_summary(run.out_dir, run.fingerprint) is None:
        raise CheckpointError(
            f"{run.out_dir} holds {' and '.join(found)} of a run with another configuration, pool or code "
            "(its fingerprint differs); it is kept. Pass --restart to discard it and start over, or write "
            "elsewhere with --out DIR (or --set, which writes a manual run under <experiment>/manual/)"
        )


@contextlib.contextmanager
def claim_run(run: MetaTrainRun) -> Iterator[None]:
    """Own the run folder for the rest of the step (after every input was read and checked):
    refuse a foreign folder or a second writer, then remove the temporaries a killed run left."""
    with claim_output(run.out_dir, "meta-train run folder"):
        for folder in (run.out_dir, run.out_dir / "grids", run.out_dir / "snapshots"):
            remove_stale_temporaries(folder)  # left by a killed run (only the lock holder writes here)
        yield


def prepare_run(
    config: ExperimentConfig,
    method: str,
    n_shot: int,
    seed: int,
    out_dir: str | Path | None = None,
    device: str | torch.device | None = None,
) -> MetaTrainRun:
    """Check the arguments; load the manifest (cut to ``pool.max_teachers``) and the fixed
    validation episodes; fix the meta model's shape. Arguments as :func:`meta_train`."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r} (valid: {list(METHODS)})")
    if n_shot < 1:
        raise ConfigError(f"n_shot: expected at least 1, got {n_shot}")
    mt, first = config.meta_train, config.pool.datasets[0]
    manifest = load_config_manifest(config)
    if config.pool.max_teachers is not None:
        manifest = dataclasses.replace(manifest, teachers=cut_to_max_teachers(config, manifest.teachers))
    split = load_split(paths.dataset_cache(config, first, "val"))
    episodes = fixed_episodes(split, mt.n_way, n_shot, mt.n_query, mt.val_episodes, seed=config.seed, name=f"{first}/val")
    spec = meta_model_spec(config, manifest.teachers, split.channels)
    if spec.channels != split.channels:
        raise ConfigError(f"meta_train.channels: {spec.channels}, but the {first} val split has {split.channels} channels")
    learner = {"algorithm": mt.learner.algorithm, "inner_lr": mt.learner.inner_lr, "first_order": mt.learner.first_order}
    info = {"mean": split.mean, "std": split.std, "method": method, "n_shot": n_shot, "seed": seed, "learner": learner}
    out = Path(out_dir) if out_dir is not None else paths.run_dir(config, method, n_shot, seed)
    fingerprint = ckpt.fingerprint(config, method, n_shot, seed, list(manifest.teachers))
    return MetaTrainRun(config, method, n_shot, seed, out, resolve_device(str(device or config.device)), manifest, spec,
               *episode_subset(split, episodes), fingerprint, info)


def episode_subset(split: SplitData, episodes: EpisodeSet) -> tuple[SplitData, EpisodeSet]:
    """Only the images ``episodes`` use, indices remapped (validation normalises just these)."""
    used = torch.unique(episodes.indices)
    subset = dataclasses.replace(split, images=split.images[used], labels=split.labels[used])
    return subset, dataclasses.replace(episodes, indices=torch.searchsorted(used, episodes.indices))


def _learner(run: MetaTrainRun) -> GradientLearner | ProtoNet:
    lc = run.mt.learner
    return build_learner(lc.algorithm, lc.inner_lr, lc.first_order)


def _head(run: MetaTrainRun) -> dict[str, Any]:
    init = run.mt.init if run.method in TRAINED else run.method
    arm = {"arm": run.arm} if run.arm is not None else {}
    return arm | {"method": run.method, "n_way": run.spec.n_way, "n_shot": run.n_shot, "seed": run.seed,
            "n_teachers": len(run.manifest.teachers), "init": init, "learner": run.info["learner"]}


def baseline(run: MetaTrainRun, restart: bool = False) -> dict[str, Any]:
    """``random`` / ``average``: the initialisation is the meta model, validated once (iteration 0)."""
    refuse_foreign_run(run, restart)
    loaded = load_pool(run.manifest, run.device) if run.method == "average" else None
    model = initial_meta_model(run.spec, run.method, loaded, run.seed, run.device)
    state = MetaTrainState(model, meta_parameters(model), _learner(run))
    with claim_run(run):
        write_run_info(run.out_dir, run.config, method=run.method, n_shot=run.n_shot, seed=run.seed)
        ckpt.clear_run(run.out_dir)
        validate(run, state)
        save_model(run, state, run.out_dir / "last.pt")
        return ckpt.write_summary(run.out_dir, _head(run), state, run.fingerprint)


# --------------------------------------------------------------------------------------------
# ECI / EI training
# --------------------------------------------------------------------------------------------


def build_state(run: MetaTrainRun) -> MetaTrainState:
    """Resident pool, meta model (``meta_train.init``), dynamic dataset, switch, generators."""
    mt, device = run.mt, run.device
    require_compiler(run.config.compile, device)
    loaded = load_pool(run.manifest, device)
    pool = ResidentPool(device=device, precision=run.config.precision, channels_last=run.config.channels_last,
                        loaded=loaded, compile=run.config.compile)
    model = initial_meta_model(run.spec, mt.init, loaded, run.seed, device, hint=INIT_HINT)
    model.requires_grad_(False)  # the trained parameters are ``params`` (functional calls)
    params = meta_parameters(model)
    teachers = run.manifest.teachers
    data = DynamicDataset.from_config(teachers, mt.inversion, run.n_shot, mt.n_query, make_generator(run.seed, "data_init"),
                                  device)
    generators = {name: make_generator(run.seed, name, device=device if where == "device" else "cpu")
                  for name, where in GENERATORS.items()}
    learner = _learner(run)
    episode_fn = episode_loss_fn(learner, model, mt.learner.inner_steps, run.config.channels_last, run.config.compile)
    return MetaTrainState(model, params, learner, torch.optim.Adam(params.values(), lr=mt.outer_lr, fused=True), pool, data,
                 GradientSwitch.from_config(mt.curriculum, mt.iterations, enabled=run.method == "purer"), generators,
                 episode_fn=episode_fn)


def train(run: MetaTrainRun, restart: bool = False) -> dict[str, Any]:
    """Meta-train ``purer``/``ei`` from scratch or from a matching ``checkpoint.pt``."""
    state = build_state(run)
    with claim_run(run):
        return train_claimed(run, state, restart)


def train_claimed(run: MetaTrainRun, state: MetaTrainState, restart: bool = False) -> dict[str, Any]:
    """:func:`train` once the run folder is this process's: resume or start, then iterate."""
    saved = ckpt.load_checkpoint(run.out_dir / "checkpoint.pt", run.fingerprint)  # read before any write
    warmup_file = run.out_dir / branch_files.WARMUP_CHECKPOINT
    if saved is not None and run.save_warmup and int(saved["iteration"]) >= state.switch.warmup and not warmup_file.is_file():
        saved = None  # its warm-up state was not kept: start again to save it
    if saved is not None and run.branch is not None and int(saved["iteration"]) < state.switch.warmup:
        saved = None  # a branch's own checkpoint before its warm-up cannot be (it starts there)
    if saved is None:
        refuse_foreign_run(run, restart)
        ckpt.clear_run(run.out_dir)
        warmup_file.unlink(missing_ok=True)
        if run.branch is not None:
            branch_files.start_from_trunk(run, state)
    else:
        ckpt.restore(state, saved, run.out_dir)
        logger.info("resuming %s from meta-iteration %d", run.out_dir, state.iteration)
        if state.best_model is not None and not (run.out_dir / "meta_model.pt").is_file():
            save_torch(run.out_dir / "meta_model.pt", state.best_model)  # a workflow rerun deletes outputs
    write_run_info(run.out_dir, run.config, method=run.method, n_shot=run.n_shot, seed=run.seed)
    iterations = run.mt.iterations
    snapshots = ckpt.grid_iterations(iterations, run.mt.grid_snapshots)
    if snapshots and 1 <= state.switch.warmup <= iterations:
        snapshots.add(state.switch.warmup)  # the images just before the first reversed step (EI too)
    with progress(total=iterations, desc=f"{run.method} {run.spec.n_way}w{run.n_shot}s") as bar:
        bar.update(state.iteration)
        for iteration in range(state.iteration + 1, iterations + 1):
            record = engine.train_iteration(run, state, iteration)
            append_jsonl(run.out_dir / "curve.jsonl", record)
            state.curve_lines += 1
            state.switch_events += int(record["switch"])
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss_outer']:.3f}", acc=f"{record['train_accuracy']:.1f}",
                            switch=state.switch_events)
            after_iteration(run, state, iteration, snapshots)
    if state.best["iteration"] is None:  # zero iterations: validate the initialisation
        validate(run, state)
    save_model(run, state, run.out_dir / "last.pt")
    head = _head(run) | strength_summary(run)
    if run.branch is not None:
        head["branched_from"] = state.branched_from
    return ckpt.write_summary(run.out_dir, head, state, run.fingerprint)


def strength_summary(run: MetaTrainRun) -> dict[str, Any]:
    """``reversed_strength``: min / median / max over classes of ρ_c, the reversed term's coefficient
    over the class's inversion coefficient in a step with all teachers (docs/reversed-strength.md);
    null for EI."""
    if run.method != "purer":
        return {"reversed_strength": None}
    mt, teachers = run.mt, run.manifest.teachers
    per_class = class_strengths(mt.curriculum, teachers, range(len(teachers)), mt.inversion.teacher_weighting)
    strengths = list(per_class.values())
    return {"reversed_strength": {"min": min(strengths), "median": statistics.median(strengths), "max": max(strengths)}}


def after_iteration(run: MetaTrainRun, state: MetaTrainState, iteration: int, snapshots: set[int]) -> None:
    """Grids, validation and the checkpoint, each when due (the checkpoint last)."""
    last = iteration == run.mt.iterations
    if iteration in snapshots:
        ckpt.write_grids(state.data, run.out_dir / "grids", iteration)
    scheduled = iteration % run.mt.val_interval == 0
    if scheduled:
        validate(run, state)
    if run.save_warmup and iteration == state.switch.warmup:
        branch_files.save_warmup_state(run, state)  # before a final validation a longer run would not do
    if last and not scheduled:
        validate(run, state)
    if iteration % run.mt.checkpoint_interval == 0 or last:
        ckpt.save_checkpoint(run.out_dir / "checkpoint.pt", ckpt.checkpoint_state(state), run.fingerprint)


def validate(run: MetaTrainRun, state: MetaTrainState) -> dict[str, Any]:
    """Score the current parameters on the fixed val episodes; a new best becomes ``meta_model.pt``."""
    start = time.perf_counter()
    lc, mtest = run.mt.learner, run.config.meta_test
    inner_lr = lc.inner_lr if mtest.inner_lr is None else mtest.inner_lr
    learner = build_learner(lc.algorithm, inner_lr, True)
    result = evaluate(state.meta_model, state.params, learner, run.val_split, run.val_episodes, mtest.inner_steps,
                      run.device, input_size=run.spec.input_size, adapt_batch=mtest.adapt_batch,
                      compile=run.config.compile)
    record = {"iteration": state.iteration, "accuracy": result["accuracy"], "ci95": result["ci95"]}
    append_jsonl(run.out_dir / "val.jsonl", record)
    state.val_lines += 1
    if run.mt.snapshots:  # every validated model, for the best-on-test parity protocol
        save_model(run, state, run.out_dir / "snapshots" / f"iter{state.iteration:05d}.pt")
    if state.best["accuracy"] is None or record["accuracy"] > state.best["accuracy"]:
        state.best = {"accuracy": record["accuracy"], "ci95": record["ci95"], "iteration": state.iteration}
        state.best_model = save_model(run, state, run.out_dir / "meta_model.pt")
    state.val_seconds += time.perf_counter() - start
    logger.info("iteration %d: val accuracy %.2f ± %.2f %%", state.iteration, record["accuracy"], record["ci95"])
    return record


def save_model(run: MetaTrainRun, state: MetaTrainState, path: Path) -> dict[str, Any]:
    """Write (and return) the current parameters as a ``meta_model.pt``-style payload (with their val accuracy)."""
    validated = [r for r in ckpt.read_jsonl(run.out_dir / "val.jsonl") if r["iteration"] == state.iteration]
    accuracy = validated[-1]["accuracy"] if validated else None
    payload = meta_model_payload(run.spec, state.params, run.info, state.iteration, accuracy)
    save_torch(path, payload)
    return payload
