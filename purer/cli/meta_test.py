"""Evaluate a meta-trained model on fixed, seeded test episodes, optionally with ICFIL.

    purer meta-test --method purer --n-shot 1 [--seed S] [--dataset D] [--icfil] [--run DIR] [--out DIR]

Writes ``<run>/test/<dataset>/{plain,icfil}/metrics.json`` (mean accuracy, 95% CI, per-episode
accuracies, timing). Without ``--dataset`` every test dataset of the config is evaluated
separately and, when there are several, their mean is written to
``<run>/test/average/{plain,icfil}/metrics.json``. ``--out DIR`` replaces ``<run>/test``.
ICFIL is a reconstruction of the paper's description (algorithm.md §3.3).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from purer import paths
from purer.cli.common import load
from purer.cli.main import add_common_arguments
from purer.meta.evaluate import AVERAGE, meta_test, write_average
from purer.outputs import check_output_folder
from purer.seeding import seed_everything


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``/``--set`` plus the run and the test setting."""
    add_common_arguments(parser)
    parser.add_argument("--method", required=True, help="meta-training method (purer, ei, random, average)")
    parser.add_argument("--n-shot", type=int, required=True, metavar="K", help="support images per class")
    parser.add_argument("--seed", type=int, default=None, help="run seed (default: the config's seed)")
    parser.add_argument("--dataset", default=None, help="test dataset (default: every test dataset of the config)")
    parser.add_argument("--icfil", action="store_true", help="calibrate with ICFIL (a reconstruction, algorithm.md §3.3)")
    parser.add_argument("--run", default=None, metavar="DIR", help="run directory (default: from the config)")
    parser.add_argument("--out", default=None, metavar="DIR", help="replaces <run>/test as the output root")


def run(args: argparse.Namespace) -> None:
    """Meta-test one run on one or every test dataset."""
    config = load(args)
    seed = config.seed if args.seed is None else args.seed
    seed_everything(config.seed)
    run_dir = Path(args.run) if args.run else paths.run_dir(config, args.method, args.n_shot, seed)
    datasets = [args.dataset] if args.dataset else list(config.test_datasets)
    mode = "icfil" if args.icfil else "plain"
    outputs = datasets + ([AVERAGE] if len(datasets) > 1 else [])
    for name in outputs:  # every output folder checked before the first evaluation
        check_output_folder(_out(args, name, mode) or paths.test_dir(run_dir, name, args.icfil), "meta-test output folder")
    results = [
        meta_test(config, args.method, args.n_shot, seed, name, args.icfil, _out(args, name, mode), run=run_dir)
        for name in datasets
    ]
    if len(results) > 1:
        write_average(run_dir, results, args.icfil, _out(args, AVERAGE, mode))


def _out(args: argparse.Namespace, dataset: str, mode: str) -> Path | None:
    return Path(args.out) / dataset / mode if args.out else None
