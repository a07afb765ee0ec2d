"""The contract every CLI step shares: its common arguments and how it loads the config.

Every step takes ``--config``/``--set``/``--verbose`` (:func:`add_common_arguments`); the steps of
one run (``meta-train``, ``meta-test``) also take ``--method``, ``--n-shot`` and ``--seed``
(:func:`add_run_arguments`). :func:`load` reads the config and resolves its ``auto`` runtime
settings (:mod:`purer.runtime`). ``purer.cli.main`` imports the steps; no step imports it.
"""

from __future__ import annotations

import argparse

from purer.config import ExperimentConfig, load_config
from purer.errors import ConfigError
from purer.pipeline import METHODS
from purer.runinfo import write_run_info
from purer.runtime import configure_process, resolve_speed_settings

__all__ = ["add_common_arguments", "add_run_arguments", "load", "run_seed", "write_run_info"]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--set`` (shared by every step)."""
    parser.add_argument("--config", "-c", default=None, help="YAML config (default: built-in defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set meta_train.outer_lr=0.0005 (repeatable)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def add_run_arguments(parser: argparse.ArgumentParser, *, check_method: bool = True) -> None:
    """``--method``, ``--n-shot`` and ``--seed``: which run a step works on. ``--method`` is a method of
    :data:`purer.pipeline.METHODS` or an arm of ``grid.arms``, checked once the config is loaded
    (:func:`purer.arms.resolve`); ``check_method=False``: meta-test with ``--run`` tests any run folder."""
    help_text = f"meta-training method ({', '.join(METHODS)}) or an arm of grid.arms (the run's folder name)"
    parser.add_argument("--method", required=True, help=help_text)
    parser.add_argument("--n-shot", type=int, required=True, metavar="K", help="support images per class")
    parser.add_argument(
        "--seed", type=int, default=None, help="run seed (default: the first of grid.seeds, as the pipeline's first run)"
    )


def run_seed(config: ExperimentConfig, args: argparse.Namespace) -> int:
    """``--seed``, or the grid's first run seed (``grid.seeds[0]``): the run the pipeline writes for it.

    The experiment seed (``seed``) is another thing: it seeds the fixed validation and test
    episodes and the teachers, never a run.
    """
    return config.grid.seeds[0] if args.seed is None else args.seed


def load(args: argparse.Namespace, step: str | None = None) -> ExperimentConfig:
    """The experiment config from ``--config`` and ``--set``, its ``auto`` speed settings resolved for
    ``step`` (:func:`purer.runtime.resolve_speed_settings`); the process's threads and compile cache set
    (:func:`purer.runtime.configure_process`)."""
    try:
        config = load_config(args.config, args.overrides)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {args.config} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
    resolved = resolve_speed_settings(config, step=step)
    configure_process(resolved)
    return resolved
