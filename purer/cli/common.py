"""Helpers shared by the CLI steps: load the config (``--config`` + ``--set``)."""

from __future__ import annotations

import argparse

from purer.config import ExperimentConfig, load_config
from purer.runinfo import write_run_info
from purer.runtime import resolve_speed_settings

__all__ = ["load", "write_run_info"]


def load(args: argparse.Namespace) -> ExperimentConfig:
    """The experiment config from ``--config`` and ``--set``, its ``auto`` speed settings resolved."""
    return resolve_speed_settings(load_config(args.config, args.overrides))
