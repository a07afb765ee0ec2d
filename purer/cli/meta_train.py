"""Meta-train a model from the pool: ECI (purer), EI, or the random / FedAvg baselines.

    purer meta-train --method purer --n-shot 1 [--seed S] [--out DIR]

Writes ``meta_model.pt`` (best on validation), ``last.pt``, ``curve.jsonl``, ``val.jsonl``,
``grids/*.png``, ``checkpoint.pt`` and ``summary.json`` into the run directory. Rerunning a killed
run continues from its last checkpoint; a finished run is not redone.
"""

from __future__ import annotations

import argparse

from purer import arms, paths
from purer.cli.common import add_common_arguments, add_run_arguments, load
from purer.meta.train import meta_train
from purer.seeding import seed_everything


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``/``--set`` plus the method, the shots, the seed and the output directory."""
    add_common_arguments(parser)
    add_run_arguments(parser)
    parser.add_argument("--out", default=None, metavar="DIR", help="run directory (default: from the config)")


def run(args: argparse.Namespace) -> None:
    """Meta-train one (method or arm, n_shot, seed) run."""
    config = load(args)
    seed = config.seed if args.seed is None else args.seed
    seed_everything(seed)
    run = arms.resolve(config, args.method)
    out = args.out if args.out is not None else paths.run_dir(config, run.name, args.n_shot, seed)
    trunk = arms.check_branch(config, run.name)
    branch = None
    if trunk is not None:
        branch = (trunk.config, paths.run_dir(config, trunk.name, args.n_shot, seed))
    meta_train(run.config, run.method, args.n_shot, seed, out, arm=run.name if run.name != run.method else None,
               save_warmup=arms.is_trunk(config, run.name), branch=branch)
