"""The pipeline in one place: its methods, its steps, the modules each step runs, and the grid.

Everything that used to be kept by hand in several places is read from here:

- the methods (:data:`METHODS`, the values of ``grid.methods``; :data:`TRAINED` are meta-trained,
  the others are initialisations) and their order in the report (:data:`REPORT_ORDER`);
- which package modules each step runs (:data:`STEP_MODULES`, beyond the shared infrastructure
  :data:`SHARED_MODULES`): the Snakemake rules list them as code inputs
  (workflow/rules/common.smk), so an edit reruns exactly the steps that run the edited module, and
  the meta-training resume fingerprint digests the meta-training step's modules
  (:func:`fingerprint_modules`);
- the configured grid is :mod:`purer.grid` (runs and meta-tests: the Snakemake targets and the
  ``metrics.json`` files the report reads).

The output layout itself is :mod:`purer.paths`.
"""

from __future__ import annotations

from typing import get_args

from purer.config import Method

METHODS: tuple[str, ...] = get_args(Method)  # ECI, EI (ECI without the switch), and two initialisations
TRAINED = ("purer", "ei")
REPORT_ORDER = ("random", "average", "ei", "purer")  # baselines first, the method last (paper style)

# Modules every step runs; an edit to one of them is an infrastructure change (not a code input).
SHARED_MODULES = (
    "pipeline.py", "config.py", "errors.py", "io.py", "outputs.py", "paths.py", "manual.py", "seeding.py", "runinfo.py",
    "runtime.py", "compiler.py", "tracking.py", "hostmem.py", "cli/common.py", "cli/main.py",
)

# Package modules each step runs (paths under purer/), beyond SHARED_MODULES.
STEP_MODULES: dict[str, tuple[str, ...]] = {
    "prepare": ("cli/prepare.py", "data/registry.py", "data/cache.py"),
    "pool": ("cli/pool.py", "models/manifest.py", "models/pool.py", "models/pretrain.py", "models/backbones.py",
             "data/cache.py"),
    "meta_train": (
        "cli/meta_train.py", "arms.py", "meta/branch.py",
        "meta/train.py", "meta/engine.py", "meta/state.py", "meta/checkpoint.py", "meta/model_file.py",
        "meta/init.py", "meta/learners.py", "meta/evaluate.py",
        "inversion/losses.py", "inversion/dataset.py", "inversion/teacher_pool.py", "inversion/curriculum.py",
        "models/manifest.py", "models/pool.py", "models/backbones.py",
        "data/episodes.py", "data/cache.py",
    ),
    "meta_test": (
        "cli/meta_test.py", "variants.py", "arms.py",
        "meta/meta_test.py", "meta/evaluate.py", "meta/model_file.py", "meta/calibration.py", "meta/init.py",
        "meta/learners.py", "inversion/losses.py", "models/manifest.py", "models/pool.py", "models/backbones.py",
        "data/episodes.py", "data/cache.py",
    ),
    "report": (
        "cli/report.py", "grid.py", "arms.py", "variants.py", "statistics.py",
        "report/sweeps.py", "report/records.py", "report/compute.py", "report/aggregate.py", "report/tables.py",
        "report/figures.py", "report/decision.py",
        "models/manifest.py", "models/pool.py", "models/backbones.py",  # the pool record reads the manifest
        "data/cache.py",
    ),
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
