"""Tiny splits, meta models and configs for the meta-test and ICFIL tests."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from purer import paths
from purer.config import ExperimentConfig, load_config
from purer.data.cache import SplitData, save_split
from purer.io import save_torch
from purer.models.backbones import build_backbone

SIZE, WIDTH = 16, 4


def tiny_split(n_classes: int = 6, per_class: int = 8, size: int = SIZE, channels: int = 3, seed: int = 0) -> SplitData:
    """Class-coloured noise images (learnable), labels interleaved so cache order != class order."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(n_classes, channels, 1, 1, generator=generator) * 200 + 20
    labels = torch.arange(n_classes).repeat(per_class)
    noise = torch.randn(len(labels), channels, size, size, generator=generator) * 20
    images = (centres[labels] + noise).clamp(0, 255).to(torch.uint8)
    names = tuple(f"c{c:02d}" for c in range(n_classes))
    return SplitData(images, labels, names, (0.5,) * channels, (0.25,) * channels)


def tiny_model(n_way: int = 5, channels: int = 3, size: int = SIZE, width: int = WIDTH, seed: int = 0):
    """A Conv4 meta model (batch-statistics BN) with seeded random weights."""
    torch.manual_seed(seed)
    return build_backbone("conv4", n_way, channels, size, running_stats=False, width=width)


def meta_model_record(model, n_way: int = 5, channels: int = 3, size: int = SIZE, width: int = WIDTH, **extra) -> dict:
    """A checkpoint in the ``meta_model.pt`` format written by ``purer meta-train``."""
    record = {
        "state_dict": model.state_dict(),
        "architecture": "conv4",
        "arch_kwargs": {"width": width},
        "n_way": n_way,
        "input_size": size,
        "channels": channels,
        "mean": [0.5] * channels,
        "std": [0.25] * channels,
        "method": "purer",
        "n_shot": 1,
        "seed": 0,
        "iteration": 10,
        "val_accuracy": 40.0,
        "learner": {"algorithm": "maml", "inner_lr": 0.1, "first_order": False},
    }
    record.update(extra)
    return record


def write_meta_model(path: Path, seed: int = 0, **extra) -> Path:
    n_way = extra.get("n_way", 5)
    save_torch(path, meta_model_record(tiny_model(n_way=n_way, seed=seed), **extra))
    return path


def tiny_config(tmp_path: Path, datasets: dict[str, int] | None = None, **meta_test) -> tuple[Path, ExperimentConfig]:
    """A YAML config over synthetic datasets (``name -> image_size``) with cached test splits."""
    datasets = datasets or {"toy": SIZE}
    section = {"n_way": 5, "n_query": 3, "episodes": 4, "inner_steps": 1}
    section["icfil"] = {"pseudo_per_class": 2, "inversion_steps": 2, "feature_steps": 2, "head_steps": 2}
    section.update(meta_test)
    raw = {
        "experiment": "t",
        "seed": 7,
        "results_dir": str(tmp_path / "results"),
        "data_dir": str(tmp_path / "data"),
        "datasets": {name: {"source": "folder", "image_size": size} for name, size in datasets.items()},
        "pool": {"datasets": list(datasets)},
        "meta_test": section,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    for index, (name, size) in enumerate(datasets.items()):
        save_split(paths.dataset_cache(config, name, "test"), tiny_split(size=size, seed=index))
    return path, config
