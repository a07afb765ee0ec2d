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

from purer import arms, manual, paths
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
    """Meta-train one (method or arm, n_shot, seed) run."""
    config = load(args)
    seed = run_seed(config, args)
    seed_everything(seed)
    out, own = args.out, None
    if args.overrides and out is None:  # a manual run: written in its own folder (purer/manual.py)
        own = manual.manual_config(config, args.overrides)
        config = manual.with_input_pool(config, own)
    run = arms.resolve(config, args.method)
    if out is None:
        out = paths.run_dir(own or config, run.name, args.n_shot, seed)
        if own is not None:
            manual.announce(out)
    trunk = arms.check_branch(config, run.name)
    branch = None if trunk is None else (trunk.config, paths.run_dir(own or config, trunk.name, args.n_shot, seed))
    meta_train(run.config, run.method, args.n_shot, seed, out, restart=args.restart,
               arm=run.name if run.name != run.method else None, save_warmup=arms.is_trunk(config, run.name),
               branch=branch)
    if own is not None:
        manual.record_overrides(own, args.config, args.overrides)
