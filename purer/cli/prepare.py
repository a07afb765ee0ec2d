"""Decode datasets once into cached uint8 tensors: <data_dir>/<name>/<size>px/{train,val,test}.pt.

Prepares every dataset defined under `datasets` in the config, or only those named with
--dataset. A cache that is up to date for the current dataset config is kept (use --force to
rebuild it). The resolved config is written beside each cache.
"""

from __future__ import annotations

import argparse

from purer.cli.common import load, write_run_info
from purer.data.registry import dataset_config, prepare_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from purer.cli.common import add_common_arguments

    add_common_arguments(parser)
    parser.add_argument(
        "--dataset",
        dest="datasets",
        action="append",
        default=None,
        metavar="NAME",
        help="a dataset name from the config's `datasets` (repeatable; default: all of them)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild caches that are already up to date")


def run(args: argparse.Namespace) -> None:
    config = load(args)
    names = args.datasets or list(config.datasets)
    for name in names:
        dataset_config(config, name)  # unknown names fail before any work
    for name in names:
        paths = prepare_dataset(config, name, force=args.force)
        write_run_info(paths["train"].parent, config, dataset=name)
