"""Partition the meta-train classes, train one teacher per block, write the pool manifest.

``purer pool list [--count]`` prints the teachers the config defines, their number and an estimate
of the training time (no training);
``purer pool train --teacher I [--out DIR]`` trains teacher I (resumable);
``purer pool manifest [--out DIR]`` gathers the trained teachers into ``manifest.yaml``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from purer import manual, paths
from purer.cli.common import add_common_arguments, load, write_run_info
from purer.config import ExperimentConfig
from purer.errors import ConfigError
from purer.models.manifest import write_manifest
from purer.models.pool import coverage, teacher_spec, teacher_specs
from purer.models.pretrain import estimate_pool, train_teacher
from purer.outputs import POOL_FILES, check_output_folder
from purer.seeding import seed_everything

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``train``, ``manifest`` and ``list`` actions, each with ``--config``/``--set``."""
    actions = parser.add_subparsers(dest="pool_command", metavar="<action>", required=True)
    train = actions.add_parser("train", help="train one teacher (docs/method.md §1.2)")
    add_common_arguments(train)
    train.add_argument("--teacher", "--block", dest="teacher", type=int, required=True, metavar="I",
                       help="teacher index, 0-based (= block index for disjoint pools)")
    train.add_argument("--out", default=None, metavar="DIR", help="pool folder (default: from the config)")
    manifest = actions.add_parser("manifest", help="write manifest.yaml from the trained teachers")
    add_common_arguments(manifest)
    manifest.add_argument("--out", default=None, metavar="DIR", help="pool folder (default: from the config)")
    listing = actions.add_parser(
        "list", help="print the pool's teachers (index, dataset, architecture, classes), their number and "
        "an estimated training time"
    )
    add_common_arguments(listing)
    listing.add_argument("--count", action="store_true", help="print only the number of teachers")


def run(args: argparse.Namespace) -> None:
    """Dispatch to the chosen action."""
    config = load(args, step="pool" if args.pool_command == "train" else None)
    if config.pool_manifest is not None and args.pool_command in ("train", "manifest"):
        raise ConfigError(
            f"the config brings its own pool (pool_manifest: {config.pool_manifest}): there is no pool to "
            f"{'train' if args.pool_command == 'train' else 'gather'}; set pool_manifest: null to train one"
        )
    {"train": _train, "manifest": _manifest, "list": _list}[args.pool_command](config, args)


def _pool_dir(config: ExperimentConfig, args: argparse.Namespace) -> Path:
    """``--out``; with ``--set`` overrides the manual folder's pool (purer/manual.py); else the pipeline's."""
    if args.out:
        return Path(args.out)
    if args.overrides:
        folder = paths.pool_dir(manual.manual_config(config, args.overrides))
        manual.announce(folder)
        return folder
    return paths.pool_dir(config)


def _train(config: ExperimentConfig, args: argparse.Namespace) -> None:
    teacher_spec(config, args.teacher)  # index check before any work
    logger.info("%s", coverage(config))
    seed_everything(config.seed)
    out_dir = _pool_dir(config, args)
    check_output_folder(out_dir, "pool folder", POOL_FILES)
    train_teacher(config, args.teacher, out_dir / paths.teacher_path(config, args.teacher).name)
    write_run_info(out_dir, config)  # after the inputs were read and the folder claimed
    _record(config, args)


def _manifest(config: ExperimentConfig, args: argparse.Namespace) -> None:
    out_dir = _pool_dir(config, args)
    check_output_folder(out_dir, "pool folder", POOL_FILES)
    write_manifest(config, out_dir)
    write_run_info(out_dir, config)
    _record(config, args)


def _record(config: ExperimentConfig, args: argparse.Namespace) -> None:
    if args.overrides and not args.out:
        manual.record_overrides(manual.manual_config(config, args.overrides), args.config, args.overrides)


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
    for line in _summary(config, specs):
        print(line)


def _summary(config: ExperimentConfig, specs: list) -> list[str]:
    """The pool's size and cost: teachers per dataset (classes / n_way), images, estimated time."""
    pool, lines = config.pool, []
    counts = {name: sum(s.dataset == name for s in specs) for name in pool.datasets}
    per_dataset = ", ".join(f"{name} {count}" for name, count in counts.items())
    block_count = specs[0].n_blocks if specs else 0
    cut = f" (max_teachers {pool.max_teachers} of {block_count}, block_selection {pool.block_selection})"
    lines.append(f"{len(specs)} teachers ({per_dataset}){cut if len(specs) < block_count else ''}, "
                 f"{pool.n_way} classes each, {pool.epochs} epochs")  # fmt: skip
    lines.append(coverage(config, specs))
    estimate = estimate_pool(config, specs)
    if estimate.train_images is None:
        lines.append("estimated training time: unknown until the train caches exist (run `purer prepare`)")
    elif estimate.seconds is None:
        lines.append(f"{estimate.train_images:,} training images per epoch over all teachers; no time estimate "
                     f"for {', '.join(estimate.unmeasured)}")  # fmt: skip
    else:
        lines.append(
            f"estimated training time: {_duration(estimate.seconds)} in all ({pool.epochs} epochs x "
            f"{estimate.train_images:,} training images), on 2 idle CPU cores in fp32 (an estimate of the "
            f"training compute from benchmarks/README.md, without start-up and validation; bf16 + "
            f"channels_last is 2-4x faster, a GPU far faster)"
        )
    return lines


def _duration(seconds: float) -> str:
    """``under 1 s``, ``45 s``, ``12 min`` or ``3.4 h``."""
    if seconds < 1:
        return "under 1 s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"
