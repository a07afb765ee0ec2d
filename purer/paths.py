"""Every output path, built by one set of functions from config values (no timestamps, no flags).

Layout::

    <data_dir>/<dataset>/<size>px/{train,val,test}.pt                  cached splits
    <results_dir>/<experiment>/<pool>/pool/teacher_03.pt               one teacher
    <results_dir>/<experiment>/<pool>/pool/manifest.yaml               the pool manifest
    <results_dir>/<experiment>/<pool>/<method>/<n_way>w<n_shot>s/seed<k>/          a meta-training run
    .../seed<k>/test/<dataset>/<variant>/metrics.json                              a meta-test
    <results_dir>/<experiment>/report/{tables,figures}/                           the report

``<pool>`` is the pool's dataset names joined by ``+`` (e.g. ``cifar-fs+mini-imagenet``).

``experiment`` and the dataset names are single folder names (no ``/``, ``\\``, ``..`` or leading
dot): every :class:`ExperimentConfig` checks them when it is built (:func:`purer.config.require_name`),
so no path here leaves ``results_dir`` or ``data_dir``.
"""

from __future__ import annotations

from pathlib import Path

from purer.config import ExperimentConfig

SPLITS = ("train", "val", "test")


def dataset_cache(config: ExperimentConfig, name: str, split: str) -> Path:
    """Cached uint8 tensors of one split of dataset ``name``."""
    size = config.datasets[name].image_size
    return Path(config.data_dir) / name / f"{size}px" / f"{split}.pt"


def pool_tag(config: ExperimentConfig) -> str:
    return "+".join(config.pool.datasets)


def experiment_dir(config: ExperimentConfig) -> Path:
    return Path(config.results_dir) / config.experiment


def pool_dir(config: ExperimentConfig) -> Path:
    return experiment_dir(config) / pool_tag(config) / "pool"


def teacher_path(config: ExperimentConfig, index: int) -> Path:
    return pool_dir(config) / f"teacher_{index:02d}.pt"


def manifest_path(config: ExperimentConfig) -> Path:
    """The pool manifest: ``pool_manifest`` when the config brings its own pool, else the trained pool's."""
    if config.pool_manifest is not None:
        return Path(config.pool_manifest)
    return pool_dir(config) / "manifest.yaml"


def run_dir(config: ExperimentConfig, method: str, n_shot: int, seed: int) -> Path:
    """Directory of one meta-training run (experiment, pool, method, way/shot, seed)."""
    n_way = config.meta_train.n_way
    return experiment_dir(config) / pool_tag(config) / method / f"{n_way}w{n_shot}s" / f"seed{seed}"


def test_dir(run: Path, dataset: str, icfil: bool | str) -> Path:
    """Directory of one meta-test of a trained run on ``dataset``.

    ``icfil``: False/True for ``plain``/``icfil``, or a test variant's name (purer/variants.py).
    """
    variant = icfil if isinstance(icfil, str) else ("icfil" if icfil else "plain")
    return Path(run) / "test" / dataset / variant


def report_dir(config: ExperimentConfig) -> Path:
    return experiment_dir(config) / "report"
