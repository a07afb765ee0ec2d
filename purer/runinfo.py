"""Run provenance written next to every output: the resolved config and the environment."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from purer import __version__
from purer.config import ExperimentConfig, to_dict
from purer.io import write_json, write_yaml


def write_run_info(out_dir: str | Path, config: ExperimentConfig, **extra: object) -> None:
    """Write ``config.resolved.yaml`` and ``env.json`` (versions, git commit, device) into ``out_dir``."""
    out_dir = Path(out_dir)
    write_yaml(out_dir / "config.resolved.yaml", to_dict(config) | {k: v for k, v in extra.items()})
    write_json(
        out_dir / "env.json",
        {
            "purer": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "git_commit": _git_commit(),
            "device": config.device,
        },
    )


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
