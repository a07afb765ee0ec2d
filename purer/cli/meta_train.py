"""Meta-train a model from the pool: ECI (purer), EI, or the random / FedAvg baselines.

    purer meta-train --method purer --n-shot 1 [--seed S] [--out DIR]

Writes ``meta_model.pt`` (best on validation), ``last.pt``, ``curve.jsonl``, ``val.jsonl``,
``grids/*.png``, ``checkpoint.pt`` and ``summary.json`` into the run directory. Rerunning a killed
run continues from its last checkpoint; a finished run is not redone. A folder holding a run of
another configuration or code is refused unless ``--restart`` is given.

The seed defaults to the grid's first (``grid.seeds[0]``). With ``--set`` overrides (and no
``--out``) the run is a manual one: it is written under
``<results_dir>/<experiment>/manual/<key>/`` (purer/manual.py) and uses the pipeline's pool unless
that folder has its own.
"""

from __future__ import annotations

import argparse

from purer import manual, paths
from purer.cli.common import add_common_arguments, add_run_arguments, load, run_seed
from purer.meta.train import meta_train
from purer.seeding import seed_everything


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``/``--set`` plus the method, the shots, the seed and the output directory."""
    add_common_arguments(parser)
    add_run_arguments(parser)
    parser.add_argument("--out", default=None, metavar="DIR", help="run directory (default: from the config)")
    parser.add_argument(
        "--restart", action="store_true",
        help="discard a run of another configuration or code in the run directory and start over",
    )


def run(args: argparse.Namespace) -> None:
    """Meta-train one (method, n_shot, seed) run."""
    config = load(args)
    seed = run_seed(config, args)
    seed_everything(seed)
    out = args.out
    if args.overrides and out is None:
        own = manual.manual_config(config, args.overrides)
        config, out = manual.with_input_pool(config, own), paths.run_dir(own, args.method, args.n_shot, seed)
        manual.announce(out)
    meta_train(config, args.method, args.n_shot, seed, out, restart=args.restart)
    if args.overrides and args.out is None:
        manual.record_overrides(own, args.config, args.overrides)
