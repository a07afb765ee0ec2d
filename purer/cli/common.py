"""Helpers shared by the CLI steps: load the config (``--config`` + ``--set``)."""

from __future__ import annotations

import argparse

from purer.config import ExperimentConfig, load_config
from purer.errors import ConfigError
from purer.runinfo import write_run_info
from purer.runtime import resolve_speed_settings

__all__ = ["load", "write_run_info"]


def load(args: argparse.Namespace) -> ExperimentConfig:
    """The experiment config from ``--config`` and ``--set``, its ``auto`` speed settings resolved."""
    try:
        config = load_config(args.config, args.overrides)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {args.config} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
    return resolve_speed_settings(config)
