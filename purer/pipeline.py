"""The pipeline in one place: its methods, its steps, the modules each step runs, and the grid.

Everything that used to be kept by hand in several places is read from here:

- the methods (:data:`METHODS`, the values of ``grid.methods``; :data:`TRAINED` are meta-trained,
  the others are initialisations) and their order in the report (:data:`REPORT_ORDER`);
- which package modules each step runs (:data:`STEP_MODULES`, beyond the shared infrastructure
  :data:`SHARED_MODULES`): the Snakemake rules list them as code inputs
  (workflow/rules/common.smk), so an edit reruns exactly the steps that run the edited module, and
  the meta-training resume fingerprint digests the meta-training step's modules
  (:func:`fingerprint_modules`);
- the configured grid (:func:`grid_runs`, :func:`grid_tests`): the Snakemake targets, and the
  ``metrics.json`` files the report reads (a run of an older grid left in the results folder is
  not averaged in).

The output layout itself is :mod:`purer.paths`.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_args

from purer import paths
from purer.config import ExperimentConfig, Method
from purer.variants import grid_variants

METHODS: tuple[str, ...] = get_args(Method)  # ECI, EI (ECI without the switch), and two initialisations
TRAINED = ("purer", "ei")
REPORT_ORDER = ("random", "average", "ei", "purer")  # baselines first, the method last (paper style)

# Modules every step runs; an edit to one of them is an infrastructure change (not a code input).
SHARED_MODULES = (
    "pipeline.py", "config.py", "errors.py", "io.py", "outputs.py", "paths.py", "seeding.py", "runinfo.py",
    "runtime.py", "tracking.py", "hostmem.py", "cli/common.py", "cli/main.py",
)

# Package modules each step runs (paths under purer/), beyond SHARED_MODULES.
STEP_MODULES: dict[str, tuple[str, ...]] = {
    "prepare": ("cli/prepare.py", "data/registry.py", "data/cache.py"),
    "pool": ("cli/pool.py", "models/manifest.py", "models/pool.py", "models/pretrain.py", "models/backbones.py",
             "data/cache.py"),
    "meta_train": (
        "cli/meta_train.py",
        "meta/train.py", "meta/engine.py", "meta/state.py", "meta/checkpoint.py", "meta/model_file.py",
        "meta/init.py", "meta/learners.py", "meta/evaluate.py",
        "inversion/losses.py", "inversion/dataset.py", "inversion/teacher_pool.py", "inversion/curriculum.py",
        "models/manifest.py", "models/pool.py", "models/backbones.py",
        "data/episodes.py", "data/cache.py",
    ),
    "meta_test": (
        "cli/meta_test.py", "variants.py",
        "meta/meta_test.py", "meta/evaluate.py", "meta/model_file.py", "meta/calibration.py", "meta/init.py",
        "meta/learners.py", "inversion/losses.py", "models/backbones.py",
        "data/episodes.py", "data/cache.py",
    ),
    "report": ("cli/report.py", "report/aggregate.py", "report/tables.py", "report/figures.py", "statistics.py",
               "variants.py"),
}

# Modules of each dataset source (``datasets.<name>.source``), run by ``prepare`` only.
SOURCE_MODULES: dict[str, tuple[str, ...]] = {
    "glyphs": ("data/glyphs.py",),
    "mini-imagenet": ("data/mini_imagenet.py", "data/images.py"),
    "cifar-fs": ("data/cifar_fs.py", "data/images.py", "data/splits/train.txt", "data/splits/val.txt",
                 "data/splits/test.txt"),
    "folder": ("data/folder.py", "data/images.py"),
}


def fingerprint_modules() -> tuple[str, ...]:
    """Dotted names of the modules that compute a meta-training run's numbers (its CLI aside)."""
    return tuple(
        "purer." + module.removesuffix(".py").replace("/", ".")
        for module in STEP_MODULES["meta_train"]
        if module.endswith(".py") and not module.startswith("cli/")
    )


def grid_runs(config: ExperimentConfig) -> list[tuple[str, int, int]]:
    """(method, n_shot, seed) of every meta-training run in ``grid``."""
    g = config.grid
    return [(m, k, s) for m in g.methods for k in g.shots for s in g.seeds]


def grid_tests(config: ExperimentConfig) -> list[Path]:
    """Every meta-test ``metrics.json`` of the grid: for each run and test dataset, the plain test,
    and ICFIL with its controls for ``grid.icfil_methods`` (:func:`purer.variants.grid_variants`)."""
    files = []
    for method, n_shot, seed in grid_runs(config):
        run = paths.run_dir(config, method, n_shot, seed)
        for dataset in config.test_datasets:
            files += [paths.test_dir(run, dataset, name) / "metrics.json" for name in grid_variants(config, method)]
    return files
