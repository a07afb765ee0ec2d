"""Gather the ``metrics.json`` of the configured grid (:func:`purer.grid.grid_tests`) into paper-style tables (Markdown, LaTeX, CSV),
seaborn figures (PNG, PDF) and ``summary.json`` (DVC metrics)."""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

from purer import manual, paths
from purer.arms import run_names
from purer.cli import common
from purer.cli.common import add_common_arguments
from purer.errors import ConfigError
from purer.grid import grid_tests
from purer.io import atomic_dir, write_json

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--root",
        default=None,
        metavar="DIR",
        help="read every meta-test under DIR instead of the configured grid's (default: the grid, in the experiment folder)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="report folder (default: <results_dir>/<experiment>/report)",
    )


def run(args: argparse.Namespace) -> None:
    from purer.report import (  # pandas/seaborn: only when reporting
        aggregate,
        compute,
        decision,
        figures,
        records,
        sweeps,
        tables,
    )

    config = common.load(args)
    if args.overrides and not args.root and not args.out:  # the report of the manual runs of these overrides
        config = manual.manual_config(config, args.overrides)
        manual.announce(paths.report_dir(config))
    root = Path(args.root) if args.root else paths.experiment_dir(config)
    out = Path(args.out) if args.out else paths.report_dir(config)
    tables.check_formats(config.report.formats)
    figures.check_formats(config.report.figure_formats)
    check_replaceable(out)
    # read and build everything first: a bad input leaves no partial report behind
    # the pipeline's report reads exactly the configured grid; `--root DIR` reads every run under DIR
    grid = None if args.root else grid_tests(config)
    bases = {name: arm.method for name, arm in run_names(config).items()}
    collected = aggregate.collect_metrics(root, grid, bases)
    selection = None
    if config.grid.sweeps and not args.root:  # chosen on validation (run summaries), never on test numbers
        selection = sweeps.select(config.grid.sweeps, sweeps.validation_scores(config), config.meta_train.n_way)
        collected = sweeps.sweep_rows(collected, selection)
    summary = aggregate.summarise(collected)
    differences = aggregate.paired_differences(collected, config.grid.pairs)
    built_tables = tables.build_tables(summary, differences)
    main_table = next(t for t in built_tables if t.name == "main")
    main_rows = summary[summary["test_variant"].isin(aggregate.MAIN_VARIANTS)]
    built_figures = figures.build_figures(main_rows, main_table, root)
    compute_time = None if args.root else compute.compute_rows(config)  # the grid's runs and tests
    # the study's decision rule, fixed in the config before the runs (purer/report/decision.py)
    verdict = decision.decide(differences, config) if config.report.decision and not args.root else None
    # the whole report is written into a temporary folder that then replaces `out`: an interrupted
    # report leaves the previous one intact, and files of formats no longer configured disappear
    with atomic_dir(out) as tmp:
        written = tables.write_tables(built_tables, tmp / "tables", config.report.formats)
        written += figures.save_figures(built_figures, tmp / "figures", config.report.figure_formats)
        if selection is not None:
            written += sweeps.write_selection(selection, tmp / "tables")
        if verdict is not None:
            written += decision.write_decision(verdict, tmp / "tables")
        if compute_time is not None:
            written += compute.write_compute(compute_time, tmp)  # beside tables/: timings differ run to run
        written.append(aggregate.write_summary(tmp / "summary.json", summary, differences,
                                               None if selection is None else sweeps.selection_metrics(selection)))
        common.write_run_info(tmp, config)
        write_json(tmp / INPUTS_RECORD, input_record(collected["path"]))
    for path in written:
        logger.info("wrote %s", out / path.relative_to(tmp))
    if config.report.records and not args.root:
        logger.info("wrote %d record files under %s", len(records.write_records(config)), records.records_dir(config))
    if verdict is not None:
        logger.info("decision: %s", verdict.text)
    logger.info(
        "report: %d result cells, %d tables, %d figures in %s",
        len(summary),
        len(built_tables),
        len(built_figures),
        out,
    )


# The record of the metrics files a report was built from. It is not committed (.gitignore): in a
# fresh clone the committed tables and figures are there but this record is not, so the pipeline
# recomputes the report and everything it needs instead of taking the committed files as its output.
INPUTS_RECORD = "inputs.json"
# what a report folder holds: anything else in an existing `out` (but hidden names: temporaries,
# .DS_Store) is not ours to replace
REPORT_ENTRIES = frozenset({"tables", "figures", "summary.json", "env.json", "config.resolved.yaml", INPUTS_RECORD,
                            "compute_time.csv", "compute_time.md"})


def input_record(metrics_paths: Iterable[str | Path]) -> dict[str, object]:
    """``{"metrics": [{"path", "sha256"}, ...]}`` for the ``metrics.json`` files a report read."""
    files = sorted(str(p) for p in metrics_paths)
    return {"metrics": [{"path": p, "sha256": hashlib.sha256(Path(p).read_bytes()).hexdigest()} for p in files]}


def check_replaceable(out: Path) -> None:
    """Raise ConfigError if ``out`` exists and holds anything a report does not write (``out`` is replaced whole)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"report folder {out} is a file, not a folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in REPORT_ENTRIES and not p.name.startswith("."))
    if foreign:
        raise ConfigError(
            f"{out} holds {foreign[0]!r}, which is not part of a purer report: the report replaces its "
            "folder as a whole, so choose a new or empty folder with --out"
        )
