"""Logging set-up and progress bars (library code logs, never prints)."""

from __future__ import annotations

import logging
import os
import sys

from tqdm.auto import tqdm

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool = False) -> None:
    """Configure the root logger once, from a CLI entry point."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=LOG_FORMAT,
        stream=sys.stderr,
        force=True,
    )


def progress(iterable=None, *, total: int | None = None, desc: str = "", disable: bool | None = None):
    """A tqdm progress bar on stderr; disabled when ``PURER_NO_PROGRESS`` is set (tests, CI logs)."""
    if disable is None:
        disable = bool(os.environ.get("PURER_NO_PROGRESS"))
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False)
