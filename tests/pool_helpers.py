"""Tiny configs and synthetic cached splits for the pool tests (no image decoding)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from purer import paths
from purer.config import ExperimentConfig, load_config
from purer.data.cache import SplitData, save_split
from purer.models.backbones import build_backbone


def synthetic_split(n_classes: int, per_class: int, size: int, channels: int = 3, seed: int = 0) -> SplitData:
    """Learnable toy images: each class has its own mean colour, plus noise; labels interleaved."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(n_classes, channels, 1, 1, generator=generator) * 200 + 20
    labels = torch.arange(n_classes).repeat(per_class)  # interleaved, so cache order != class order
    noise = torch.randn(len(labels), channels, size, size, generator=generator) * 20
    images = (centres[labels] + noise).clamp(0, 255).to(torch.uint8)
    names = tuple(f"class{c:02d}" for c in range(n_classes))
    return SplitData(images, labels, names, (0.5,) * channels, (0.25,) * channels)


def write_config(tmp_path: Path, datasets: dict[str, int] | None = None, **pool) -> Path:
    """A YAML config over folder datasets (``name -> image_size``) with pool settings ``pool``."""
    datasets = datasets or {"toy": 16}
    raw = {
        "experiment": "t",
        "seed": 0,
        "data_dir": str(tmp_path / "data"),
        "results_dir": str(tmp_path / "results"),
        "datasets": {
            name: {"source": "folder", "path": str(tmp_path / "raw" / name), "image_size": size}
            for name, size in datasets.items()
        },
        "pool": {"datasets": list(datasets), "n_way": 3, "epochs": 2, "batch_size": 8} | pool,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def write_caches(
    config: ExperimentConfig, classes: dict[str, int], per_class: int = 10, channels: int = 3
) -> None:
    """Write synthetic cached splits for each dataset (``name -> number of train classes``)."""
    for i, (name, n_classes) in enumerate(classes.items()):
        size = config.datasets[name].image_size
        split = synthetic_split(n_classes, per_class, size, channels, i)
        save_split(paths.dataset_cache(config, name, "train"), split)
        for other in ("val", "test"):  # a complete cache, so the registry reads the class count from it
            save_split(paths.dataset_cache(config, name, other), synthetic_split(2, 2, size, channels, i))


def setup_pool(tmp_path: Path, classes: dict[str, int] | None = None, channels: int = 3, **pool):
    """Config file + caches; returns (config path, loaded config)."""
    classes = classes or {"toy": 10}
    path = write_config(tmp_path, {name: 16 for name in classes}, **pool)
    config = load_config(path)
    write_caches(config, classes, channels=channels)
    return path, config


def fake_checkpoint(spec, path: Path, channels: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Save an untrained teacher for ``spec`` in the checkpoint format; returns its state dict."""
    torch.manual_seed(seed)
    model = build_backbone(spec.architecture, spec.num_outputs, channels, spec.image_size, **spec.arch_kwargs)
    state = model.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": state,
            "architecture": spec.architecture,
            "arch_kwargs": dict(spec.arch_kwargs),
            "num_outputs": spec.num_outputs,
            "image_size": spec.image_size,
            "channels": channels,
            "classes": list(spec.classes),
            "mean": [0.5] * channels,
            "std": [0.25] * channels,
            "val_accuracy": 0.75,
            "epoch": 1,
        },
        path,
    )
    return state
