"""Where the experiment stands: every run of the grid with its state, meta-iteration, validation so
far, reversed steps, time left, last write and meta-tests done (purer/status.py).

Reads only the run folders' logs (``curve.jsonl``, ``val.jsonl``) and which files exist: no test
number is shown, so a long study can be watched while it runs. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys

from purer.cli.common import add_common_arguments
from purer.config import load_config
from purer.errors import PurerError
from purer.models.pool import n_teachers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> None:
    from purer import status

    config = load_config(args.config, args.overrides)  # no speed settings: nothing is computed
    rows = status.experiment_status(config)
    if config.pool_manifest is not None:
        teachers = f"pool: brought, {config.pool_manifest}"
    else:
        try:
            total = n_teachers(config)
        except PurerError as exc:  # the datasets are not prepared yet
            teachers = f"pool: not countable yet ({exc})"
        else:
            teachers = f"pool: {status.teachers_done(config, total)} of {total} teachers trained"
    sys.stdout.write(f"experiment {config.experiment}; {teachers}\n\n{status.status_table(rows)}\n")
