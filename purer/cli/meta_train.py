"""Meta-train a model from the pool: ECI (purer), EI, or the random / FedAvg baselines.

    purer meta-train --method purer --n-shot 1 [--seed S] [--out DIR]

Writes ``meta_model.pt`` (best on validation), ``last.pt``, ``curve.jsonl``, ``val.jsonl``,
``grids/*.png``, ``checkpoint.pt`` and ``summary.json`` into the run directory. Rerunning a killed
run continues from its last checkpoint; a finished run is not redone.
"""

from __future__ import annotations

import argparse

from purer.cli.common import add_common_arguments, add_run_arguments, load
from purer.meta.train import meta_train
from purer.seeding import seed_everything


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``/``--set`` plus the method, the shots, the seed and the output directory."""
    add_common_arguments(parser)
    add_run_arguments(parser)
    parser.add_argument("--out", default=None, metavar="DIR", help="run directory (default: from the config)")


def run(args: argparse.Namespace) -> None:
    """Meta-train one (method, n_shot, seed) run."""
    config = load(args)
    seed = config.seed if args.seed is None else args.seed
    seed_everything(seed)
    meta_train(config, args.method, args.n_shot, seed, args.out)
