"""The grid's runs by name: base methods and named arms (``grid.arms``), and branching (config/README.md).

A *run name* is the folder of a meta-training run (``<pool>/<name>/<n_way>w<n_shot>s/seed<k>``) and
the ``--method`` of ``purer meta-train`` / ``meta-test``. Each method of ``grid.methods`` is a run
name with the experiment's ``meta_train``; each arm of ``grid.arms`` is a run name with a base
method and ``meta_train`` overrides (:func:`purer.config.arm_meta_train`). Without arms the grid is
exactly ``grid.methods``, in the same folders as before arms existed.

Branching (``branch_from``): a PURER run is identical to an EI run with the same settings up to
its warm-up (the switch acts only after meta-iteration ``warmup``; every generator is named without
the method), so a PURER arm may start from the EI arm's state saved at the warm-up
(:mod:`purer.meta.branch`). :func:`branch_differences` lists what would make the two differ.
This module is pure Python (the workflow imports it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from purer.config import (
    ArmConfig,
    ExperimentConfig,
    MetaTrainConfig,
    arm_meta_train,
    effective_warmup,
    to_dict,
)
from purer.errors import ConfigError

# meta_train keys that act only from the warm-up on, or never on the numbers: a branch may differ in these
# (``snapshots`` must agree: a branch's snapshots before the warm-up are the trunk's)
BRANCH_FREE_KEYS = ("iterations", "checkpoint_interval", "grid_snapshots",
                    "curriculum.adv_scale", "curriculum.adv_strength", "curriculum.patience")


def run_names(config: ExperimentConfig) -> dict[str, ArmConfig]:
    """Every run name of the grid with its arm: the methods of ``grid.methods``, then ``grid.arms``."""
    names = {method: ArmConfig(method=method) for method in config.grid.methods}
    return names | dict(config.grid.arms)


def base_method(config: ExperimentConfig, name: str) -> str:
    """The base method of run name ``name`` (a method is its own base)."""
    arm = config.grid.arms.get(name)
    return arm.method if arm is not None else name


@dataclass(frozen=True)
class ResolvedRun:
    """A run name resolved: its base method and the config its steps use (the arm's ``meta_train``)."""

    name: str
    method: str
    config: ExperimentConfig


def resolve(config: ExperimentConfig, name: str) -> ResolvedRun:
    """The base method and config of run ``name`` (a method, or an arm of ``grid.arms``).

    Raises:
        ConfigError: ``name`` is neither a method nor an arm (naming the valid ones).
    """
    from purer.pipeline import METHODS  # pipeline imports config only; kept local to stay import-light

    if name in config.grid.arms:
        # the arm's meta_train is validated by arm_meta_train; dataclasses.replace would re-apply every
        # arm's overrides on top of it, so the field is set on a copy instead
        arm_config = copy.copy(config)
        object.__setattr__(arm_config, "meta_train", arm_meta_train(config, name))
        return ResolvedRun(name, str(config.grid.arms[name].method), arm_config)
    if name in METHODS:
        return ResolvedRun(name, name, config)
    raise ConfigError(f"--method {name}: expected a method ({', '.join(METHODS)}) or an arm of grid.arms "
                      f"(defined: {sorted(config.grid.arms)})")


def trunk_of(config: ExperimentConfig, name: str) -> str | None:
    """The EI run an arm branches from (``grid.arms.<name>.branch_from``), or None."""
    arm = config.grid.arms.get(name)
    return None if arm is None else arm.branch_from


def is_trunk(config: ExperimentConfig, name: str) -> bool:
    """Whether some arm branches from run ``name`` (it then saves its warm-up state)."""
    return any(arm.branch_from == name for arm in config.grid.arms.values())


def _flatten(raw: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        out |= _flatten(value, dotted + ".") if isinstance(value, dict) else {dotted: value}
    return out


def branch_differences(trunk: MetaTrainConfig, branch: MetaTrainConfig) -> list[str]:
    """The meta_train keys (dotted) in which ``branch`` differs from ``trunk`` before the warm-up.

    Everything counts except :data:`BRANCH_FREE_KEYS`; the effective warm-ups must agree (so
    ``warmup`` / ``warmup_fraction`` may differ only if they give the same iteration).
    """
    a, b = _flatten(to_dict(trunk)), _flatten(to_dict(branch))
    skip = set(BRANCH_FREE_KEYS) | {"curriculum.warmup", "curriculum.warmup_fraction"}
    differ = [key for key in a if key not in skip and a[key] != b[key]]
    if effective_warmup(trunk.curriculum, trunk.iterations) != effective_warmup(branch.curriculum, branch.iterations):
        differ.append("curriculum.warmup")
    return differ


def check_branch(config: ExperimentConfig, name: str) -> ResolvedRun | None:
    """The trunk run of arm ``name`` when it branches, after checking that it may (else None).

    Raises:
        ConfigError: the two runs differ in a key that acts before the warm-up (naming it), the
            warm-up is 0, or the trunk stops before the warm-up.
    """
    trunk_name = trunk_of(config, name)
    if trunk_name is None:
        return None
    branch, trunk = resolve(config, name), resolve(config, trunk_name)
    where = f"grid.arms.{name}.branch_from: {trunk_name}"
    differ = branch_differences(trunk.config.meta_train, branch.config.meta_train)
    if differ:
        shown = ", ".join(f"meta_train.{key}" for key in differ)
        raise ConfigError(f"{where}: the two runs differ before the warm-up in {shown} "
                          f"(only {', '.join(BRANCH_FREE_KEYS)} may differ)")
    mt = branch.config.meta_train
    warmup = effective_warmup(mt.curriculum, mt.iterations)
    if not 1 <= warmup <= mt.iterations:
        raise ConfigError(f"{where}: the warm-up ({warmup}) must lie in 1..meta_train.iterations ({mt.iterations})")
    if trunk.config.meta_train.iterations < warmup:
        raise ConfigError(f"{where}: the trunk runs {trunk.config.meta_train.iterations} meta-iterations, "
                          f"fewer than the warm-up ({warmup})")
    return trunk


def check_arms(config: ExperimentConfig) -> None:
    """Every branching arm of the grid may branch (:func:`check_branch`)."""
    for name in config.grid.arms:
        check_branch(config, name)
