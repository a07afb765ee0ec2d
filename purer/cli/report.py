"""Gather every ``metrics.json`` of an experiment into paper-style tables (Markdown, LaTeX, CSV),
seaborn figures (PNG, PDF) and ``summary.json`` (DVC metrics)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from purer import paths
from purer.cli import common
from purer.cli.main import add_common_arguments

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--root",
        default=None,
        metavar="DIR",
        help="folder searched for results (default: the experiment folder)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="report folder (default: <results_dir>/<experiment>/report)",
    )


def run(args: argparse.Namespace) -> None:
    from purer.report import aggregate, figures, tables  # pandas/seaborn: only when reporting

    config = common.load(args)
    root = Path(args.root) if args.root else paths.experiment_dir(config)
    out = Path(args.out) if args.out else paths.report_dir(config)
    tables.check_formats(config.report.formats)
    figures.check_formats(config.report.figure_formats)
    # read and build everything first: a bad input leaves no partial report behind
    metrics = aggregate.collect_metrics(root)
    summary = aggregate.summarise(metrics)
    differences = aggregate.paired_differences(metrics)
    built_tables = tables.build_tables(summary, differences)
    main_table = next(t for t in built_tables if t.name == "main")
    main_rows = summary[summary["test_variant"].isin(aggregate.MAIN_VARIANTS)]
    built_figures = figures.build_figures(main_rows, main_table, root)
    written = tables.write_tables(built_tables, out / "tables", config.report.formats)
    written += figures.save_figures(built_figures, out / "figures", config.report.figure_formats)
    written.append(aggregate.write_summary(out / "summary.json", summary, differences))
    common.write_run_info(out, config)
    for path in written:
        logger.info("wrote %s", path)
    logger.info(
        "report: %d result cells, %d tables, %d figures in %s",
        len(summary),
        len(built_tables),
        len(built_figures),
        out,
    )
