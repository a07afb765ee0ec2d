"""Helpers for the workflow tests: run Snakemake/DVC as a user would, and a micro config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def tool_env(**extra: str) -> dict[str, str]:
    """The environment of a pipeline run: the venv's ``purer`` on PATH, no profile, no analytics."""
    env = dict(os.environ)
    env.pop("SNAKEMAKE_PROFILE", None)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        PURER_NO_PROGRESS="1",
        PYTHONWARNINGS="ignore",
    )
    env.update(extra)
    return env


def snakemake(*args: str, cwd: Path = REPO, timeout: float = 600, env: dict[str, str] | None = None):
    """Run ``python -m snakemake ARGS`` on the repository's Snakefile; returns the CompletedProcess."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args]
    return subprocess.run(
        command, cwd=cwd, env=env or tool_env(), capture_output=True, text=True, timeout=timeout
    )


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def micro_config(**sections) -> dict:
    """A config small enough for a whole pipeline run in well under a minute of compute.

    glyphs at 16 px (10/5/5 classes, 10 images each) -> 2 Conv4 teachers (2 epochs) -> purer and
    random, 1-shot, 4 meta-iterations -> 3 test episodes, plain and ICFIL (2 inversion steps).
    Paths are relative, so the run stays inside the ``--directory`` it is given.
    """
    config = {
        "experiment": "micro",
        "datasets": {
            "glyphs": {
                "source": "glyphs",
                "image_size": 16,
                "train_classes": 10,
                "val_classes": 5,
                "test_classes": 5,
                "images_per_class": 10,
            }
        },
        "pool": {"datasets": ["glyphs"], "n_way": 5, "conv4_width": 8, "epochs": 2, "batch_size": 16,
                 "milestones": [1], "checkpoint_interval": 1},
        "meta_train": {
            "meta_model_width": 8,
            "n_query": 2,
            "meta_batch_size": 2,
            "iterations": 4,
            "val_interval": 2,
            "val_episodes": 2,
            "checkpoint_interval": 2,
            "grid_snapshots": 1,
            "curriculum": {"warmup": 1, "patience": 1},
        },
        "meta_test": {
            "n_query": 2,
            "episodes": 3,
            "matched_steps": [2, 3],
            "icfil": {"pseudo_per_class": 1, "inversion_steps": 2, "feature_steps": 1, "head_steps": 1},
        },
        "grid": {"methods": ["purer", "random"], "shots": [1], "seeds": [0], "icfil": [False, True],
                 "icfil_methods": ["purer"]},
        "report": {"formats": ["md", "csv"], "figure_formats": ["png"]},
    }
    for key, value in sections.items():
        config[key] = value
    return config


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def sbatch_calls(state: Path) -> list[list[str]]:
    """The argv of every ``sbatch`` call the fake SLURM (tests/slurm_shim) recorded in ``state``."""
    calls = [json.loads(line) for line in (state / "calls.jsonl").read_text(encoding="utf-8").splitlines()]
    return [call["argv"] for call in calls if call["cmd"] == "sbatch"]


def flag(argv: list[str], name: str) -> str | None:
    """The value after option ``name`` in ``argv`` (None if absent)."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
    return None
