"""The configured grid: its meta-training runs and the meta-tests of each (``grid`` in the config).

The Snakemake targets (workflow/rules/common.smk) and the report (``purer report``) read the grid
from here, so the report reads exactly the configured grid: a run of an older grid left in the
results folder is not averaged into the tables.
"""

from __future__ import annotations

from pathlib import Path

from purer import paths
from purer.arms import check_arms, run_names
from purer.config import ExperimentConfig
from purer.variants import grid_variants


def grid_runs(config: ExperimentConfig) -> list[tuple[str, int, int]]:
    """(run name, n_shot, seed) of every meta-training run in ``grid``: the methods, then the arms
    (:func:`purer.arms.run_names`). Branching arms are checked (:func:`purer.arms.check_arms`)."""
    g = config.grid
    check_arms(config)
    return [(m, k, s) for m in run_names(config) for k in g.shots for s in g.seeds]


def grid_tests(config: ExperimentConfig) -> list[Path]:
    """Every meta-test ``metrics.json`` of the grid: for each run and test dataset, the plain test,
    and ICFIL with its controls for ``grid.icfil_methods`` (:func:`purer.variants.grid_variants`)."""
    files = []
    for method, n_shot, seed in grid_runs(config):
        run = paths.run_dir(config, method, n_shot, seed)
        for dataset in config.test_datasets:
            files += [paths.test_dir(run, dataset, name) / "metrics.json" for name in grid_variants(config, method)]
    return files
