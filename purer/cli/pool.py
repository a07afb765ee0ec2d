"""Partition the meta-train classes, train one teacher per block, write the pool manifest.

``purer pool list [--count]`` prints the teachers the config defines (no training);
``purer pool train --teacher I [--out DIR]`` trains teacher I (resumable);
``purer pool manifest [--out DIR]`` gathers the trained teachers into ``manifest.yaml``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from purer import paths
from purer.cli.common import load, write_run_info
from purer.cli.main import add_common_arguments
from purer.config import ExperimentConfig
from purer.models.pool import teacher_spec, teacher_specs, write_manifest
from purer.models.pretrain import train_teacher
from purer.outputs import POOL_FILES, check_output_folder
from purer.seeding import seed_everything


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train``, ``manifest`` and ``list`` actions, each with ``--config``/``--set``."""
    actions = parser.add_subparsers(dest="pool_command", metavar="<action>", required=True)
    train = actions.add_parser("train", help="train one teacher (algorithm.md §1.2)")
    add_common_arguments(train)
    train.add_argument("--teacher", "--block", dest="teacher", type=int, required=True, metavar="I",
                       help="teacher index, 0-based (= block index for disjoint pools)")
    train.add_argument("--out", default=None, metavar="DIR", help="pool folder (default: from the config)")
    manifest = actions.add_parser("manifest", help="write manifest.yaml from the trained teachers")
    add_common_arguments(manifest)
    manifest.add_argument("--out", default=None, metavar="DIR", help="pool folder (default: from the config)")
    listing = actions.add_parser(
        "list", help="print the pool's teachers (index, dataset, architecture, classes)"
    )
    add_common_arguments(listing)
    listing.add_argument("--count", action="store_true", help="print only the number of teachers")


def run(args: argparse.Namespace) -> None:
    """Dispatch to the chosen action."""
    config = load(args)
    {"train": _train, "manifest": _manifest, "list": _list}[args.pool_command](config, args)


def _pool_dir(config: ExperimentConfig, args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else paths.pool_dir(config)


def _train(config: ExperimentConfig, args: argparse.Namespace) -> None:
    teacher_spec(config, args.teacher)  # index check before any work
    seed_everything(config.seed)
    out_dir = _pool_dir(config, args)
    check_output_folder(out_dir, "pool folder", POOL_FILES)
    train_teacher(config, args.teacher, out_dir / paths.teacher_path(config, args.teacher).name)
    write_run_info(out_dir, config)  # after the inputs were read and the folder claimed


def _manifest(config: ExperimentConfig, args: argparse.Namespace) -> None:
    out_dir = _pool_dir(config, args)
    check_output_folder(out_dir, "pool folder", POOL_FILES)
    write_manifest(config, out_dir)
    write_run_info(out_dir, config)


def _list(config: ExperimentConfig, args: argparse.Namespace) -> None:
    specs = teacher_specs(config)
    if args.count:
        print(len(specs))
        return
    print(f"{'index':>5}  {'dataset':<16} {'arch':<9} {'size':>4} {'ch':>2}  classes (global)  [local]")
    for spec in specs:
        channels = "?" if spec.channels is None else spec.channels
        classes = ",".join(map(str, spec.classes))
        local = ",".join(map(str, spec.local_classes))
        print(
            f"{spec.index:>5}  {spec.dataset:<16} {spec.architecture:<9} {spec.image_size:>4} {channels!s:>2}  {classes}  [{local}]"
        )
