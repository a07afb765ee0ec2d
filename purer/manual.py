"""Manual runs: a step given ``--set`` overrides writes into a folder of its own.

The pipeline never passes ``--set`` (every job reads one YAML file), so a step run by hand with
overrides is an experiment beside the pipeline's. Without ``--out`` it writes under::

    <results_dir>/<experiment>/manual/<key>/               key: 10 hex digits of the overrides
        overrides.yaml                                     the config file and the overrides, in order
        <pool>/pool/ ... <pool>/<method>/<n_way>w<n_shot>s/seed<k>/ ... report/   the usual layout

so it can neither overwrite nor wipe the pipeline's outputs, and the same overrides always meet the
same folder (``purer pool train --set X`` then ``purer meta-train --set X`` then ``purer meta-test
--set X`` then ``purer report --set X`` chain there). A step reads its inputs from that folder when
they are there, else from the pipeline's (a manual meta-train uses the pipeline's pool, a manual
meta-test tests the pipeline's run). The pipeline's report never reads ``manual/``
(:func:`purer.report.aggregate.collect_metrics`); ``purer report --set X`` or
``purer report --root <results_dir>/<experiment>/manual/<key>`` reports a manual folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from purer import paths
from purer.config import ExperimentConfig
from purer.io import write_yaml

logger = logging.getLogger(__name__)

MANUAL = "manual"  # folder under <results_dir>/<experiment>/ holding the manual runs


def overrides_key(overrides: Sequence[str]) -> str:
    """10 hex digits of SHA-256 over the overrides as given (order kept: a later one wins)."""
    return hashlib.sha256(json.dumps([o.strip() for o in overrides]).encode("utf-8")).hexdigest()[:10]


def manual_config(config: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """``config`` with its outputs moved to ``<results_dir>/<experiment>/manual/<key>``: every
    :mod:`purer.paths` function of the result points into the manual folder."""
    root = paths.experiment_dir(config) / MANUAL
    return dataclasses.replace(config, results_dir=str(root), experiment=overrides_key(overrides))


def with_input_pool(config: ExperimentConfig, manual: ExperimentConfig) -> ExperimentConfig:
    """``config`` reading the manual folder's pool manifest if there is one, else the pipeline's."""
    if config.pool_manifest is not None:
        return config
    own = paths.manifest_path(manual)
    return dataclasses.replace(config, pool_manifest=str(own if own.is_file() else paths.manifest_path(config)))


def record_overrides(manual: ExperimentConfig, config_file: str | None, overrides: Sequence[str]) -> Path:
    """Write ``overrides.yaml`` into the manual folder (what made it); returns its path."""
    path = paths.experiment_dir(manual) / "overrides.yaml"
    write_yaml(path, {"config": config_file, "overrides": [o.strip() for o in overrides]})
    return path


def announce(target: Path) -> None:
    logger.info("--set given: a manual run, written under %s (the pipeline's outputs are not touched)", target)


def is_manual(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in a ``manual/`` folder below ``root``."""
    try:
        return MANUAL in Path(path).relative_to(root).parts
    except ValueError:
        return False
