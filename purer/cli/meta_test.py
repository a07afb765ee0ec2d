"""Evaluate a meta-trained model on fixed, seeded test episodes, optionally with ICFIL.

    purer meta-test --method purer --n-shot 1 [--seed S] [--dataset D] [--icfil | --variant V] [--run DIR] [--out DIR]

Writes ``<run>/test/<dataset>/<variant>/metrics.json`` (mean accuracy, 95% CI, per-episode
accuracies, timing); the variant is ``plain`` by default, ``icfil`` with ``--icfil``, or one of the
ICFIL controls with ``--variant`` (``plain-steps<k>``, ``icfil-noise``, ``finetune-support``: the
support-only fine-tuning flag; see purer/variants.py). Without ``--dataset`` every test dataset of
the config is evaluated separately and, when there are several, their mean is written to
``<run>/test/average/<variant>/metrics.json``. ``--out DIR`` replaces ``<run>/test``.
ICFIL is a reconstruction of the paper's description (docs/method.md §3.3).

The seed defaults to the grid's first (``grid.seeds[0]``). With ``--set`` overrides (and no
``--out``) the test is a manual one: written under ``<results_dir>/<experiment>/manual/<key>/``
(purer/manual.py), of the manual run there if it exists, else of the pipeline's run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from purer import arms, manual, paths
from purer.cli.common import add_common_arguments, add_run_arguments, load, run_seed
from purer.errors import ConfigError
from purer.meta.meta_test import AVERAGE, meta_test, write_average
from purer.outputs import check_output_folder
from purer.runtime import META_TEST_STEP
from purer.seeding import seed_everything
from purer.variants import ICFIL, PLAIN


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``/``--set`` plus the run and the test setting."""
    add_common_arguments(parser)
    add_run_arguments(parser, check_method=False)
    parser.add_argument("--dataset", default=None, help="test dataset (default: every test dataset of the config)")
    parser.add_argument("--icfil", action="store_true", help="calibrate with ICFIL (a reconstruction, docs/method.md §3.3)")
    parser.add_argument(
        "--variant", default=None, metavar="NAME",
        help="test variant: plain, icfil, plain-steps<k> (k in meta_test.matched_steps), icfil-noise, finetune-support",
    )
    parser.add_argument("--run", default=None, metavar="DIR", help="run directory (default: from the config)")
    parser.add_argument("--out", default=None, metavar="DIR", help="replaces <run>/test as the output root")


def run(args: argparse.Namespace) -> None:
    """Meta-test one run on one or every test dataset."""
    config = load(args, step=META_TEST_STEP)
    seed = run_seed(config, args)
    seed_everything(config.seed)
    run_dir = Path(args.run) if args.run else paths.run_dir(config, args.method, args.n_shot, seed)
    own = None
    if args.overrides and args.out is None:  # a manual test: written in the manual run folder
        own = manual.manual_config(config, args.overrides)
        own_run = paths.run_dir(own, args.method, args.n_shot, seed)
        if not args.run and (own_run / "meta_model.pt").is_file():
            run_dir = own_run
        args.out = str(own_run / "test")
        manual.announce(own_run / "test")
    if args.method in config.grid.arms:  # an arm is tested with its own settings (its learner)
        config = arms.resolve(config, args.method).config
    datasets = [args.dataset] if args.dataset else list(config.test_datasets)
    if args.icfil and args.variant not in (None, ICFIL):
        raise ConfigError(f"--icfil and --variant {args.variant} contradict each other (give one)")
    mode = args.variant or (ICFIL if args.icfil else PLAIN)
    outputs = datasets + ([AVERAGE] if len(datasets) > 1 else [])
    for name in outputs:  # every output folder checked before the first evaluation
        check_output_folder(_out(args, name, mode) or paths.test_dir(run_dir, name, mode), "meta-test output folder")
    results = [
        meta_test(config, args.method, args.n_shot, seed, name, mode, _out(args, name, mode), run=run_dir)
        for name in datasets
    ]
    if len(results) > 1:
        write_average(run_dir, results, mode, _out(args, AVERAGE, mode))
    if own is not None:
        manual.record_overrides(own, args.config, args.overrides)


def _out(args: argparse.Namespace, dataset: str, mode: str) -> Path | None:
    return Path(args.out) / dataset / mode if args.out else None
