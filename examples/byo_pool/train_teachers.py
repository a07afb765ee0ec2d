"""Train a pool of teachers "elsewhere" (plain PyTorch, none of purer's training code) and write
the pool manifest that a purer config then points at (examples/byo_pool/README.md).

    python examples/byo_pool/train_teachers.py --config examples/byo_pool/config.yaml --out results/byo_teachers

It reads the config only to find the prepared train split of each pool dataset and the class
block size (``pool.n_way``); the teachers are ``make_small_conv`` networks (byo_nets.py), saved as
``{"state_dict": ...}`` files, and ``manifest.yaml`` lists them by architecture *name*.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from byo_nets import make_small_conv

from purer import paths
from purer.config import load_config
from purer.data.cache import load_split


def train_one(images: torch.Tensor, labels: torch.Tensor, n_classes: int, epochs: int, seed: int) -> torch.nn.Module:
    """A few epochs of Adam on normalised images [N, C, H, W] with labels 0..n_classes-1."""
    torch.manual_seed(seed)
    model = make_small_conv(n_classes, images.shape[1], images.shape[2], running_stats=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        order = torch.randperm(len(images))
        for batch in order.split(32):
            loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True, help="folder for the teacher files and manifest.yaml")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    config = load_config(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    datasets, teachers, offset = [], [], 0
    for name in config.pool.datasets:
        split = load_split(paths.dataset_cache(config, name, "train"))
        images = split.normalise(split.images)
        datasets.append({"name": name, "offset": offset, "n_classes": split.n_classes,
                         "class_names": list(split.class_names)})
        n_way = config.pool.n_way
        for start in range(0, split.n_classes, n_way):
            block = list(range(start, min(start + n_way, split.n_classes)))
            rows = torch.isin(split.labels, torch.tensor(block))
            labels = split.labels[rows] - start
            model = train_one(images[rows], labels, len(block), args.epochs, seed=len(teachers))
            accuracy = float((model(images[rows]).argmax(1) == labels).float().mean()) * 100
            index = len(teachers)
            file = f"teacher_{index:02d}.pt"
            torch.save({"state_dict": model.state_dict()}, out / file)
            teachers.append({"index": index, "architecture": "small_conv", "arch_kwargs": {"width": 16},
                             "checkpoint": file, "dataset": name, "classes": [offset + c for c in block],
                             "image_size": split.image_size, "channels": split.channels,
                             "mean": list(split.mean), "std": list(split.std), "val_accuracy": accuracy})
            print(f"{file}: classes {teachers[-1]['classes']}, train accuracy {accuracy:.1f}%")
        offset += split.n_classes
    manifest = {"format": "purer-pool/1", "datasets": datasets, "teachers": teachers}
    (out / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    print(f"wrote {out / 'manifest.yaml'} ({len(teachers)} teachers)")


if __name__ == "__main__":
    main()
