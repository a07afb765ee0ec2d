"""Teacher pre-training throughput (images/s) per architecture, image size and precision (docs/method.md §1.2).

One training step is what :func:`purer.models.pretrain.train_epoch` does per mini-batch: gather the
batch from the resident, normalised block tensors (``data.train_x[batch]``, plus the memory-format
conversion), forward under the configured autocast, fp32 cross-entropy, backward, global
gradient-norm clip, optimiser step (Adam for Conv4, SGD with momentum for ResNets, as
:func:`purer.models.pretrain.build_optimizer`). The gather is timed separately, to show that data
loading is not the bottleneck. Images are random (speed does not depend on them): a 5-class block
of 2,400 training images (mini-ImageNet: 600 per class, 80 % train).

Each (architecture, size, mode) runs at least ``--iters`` steps after ``--warmup`` steps, or stops
early once ``--max-seconds`` of timed steps have passed (at least 3 steps; ResNet-18 at 84 px
takes seconds per step on 2 CPU cores).

    python benchmarks/bench_pretrain.py --device cpu --threads 2
    python benchmarks/bench_pretrain.py --device cuda --iters 50 --warmup 10

Prints a Markdown table and writes ``benchmarks/results/pretrain_<device>.csv``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from results_csv import write_csv

MODES = {  # name: (precision, channels_last)
    "fp32": ("fp32", False),
    "fp32-cl": ("fp32", True),
    "bf16-cl": ("bf16", True),
}
FIELDS = [
    "device", "architecture", "size", "mode", "batch_size", "threads", "steps", "step_s", "gather_s",
    "gather_pct", "images_per_s", "load_before", "load_after",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--architectures", default="conv4,resnet10,resnet18")
    parser.add_argument("--sizes", default="32,84")
    parser.add_argument("--modes", default="fp32,bf16-cl", help=f"comma-separated names from {list(MODES)}")
    parser.add_argument("--batch-size", type=int, default=64, help="pool.batch_size")
    parser.add_argument("--images", type=int, default=2400, help="training images of the block")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="stop timing a configuration after this")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


def setup(args: argparse.Namespace, architecture: str, size: int, precision: str, channels_last: bool):
    """Model, optimiser (as pre-training builds them), block data and the step's pieces."""
    import torch

    from purer.config import ExperimentConfig
    from purer.models.backbones import build_backbone
    from purer.models.pretrain import build_optimizer

    device = torch.device(args.device)
    kwargs = {"width": 32} if architecture == "conv4" else {}
    model = build_backbone(architecture, 5, 3, size, running_stats=True, **kwargs).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, _ = build_optimizer(model, architecture, ExperimentConfig(device=args.device, precision=precision))
    generator = torch.Generator().manual_seed(0)
    train_x = torch.randn(args.images, 3, size, size, generator=generator).to(device)
    train_y = torch.randint(0, 5, (args.images,), generator=generator).to(device)
    return model, optimizer, train_x, train_y


def time_config(args: argparse.Namespace, architecture: str, size: int, mode: str) -> dict:
    """Timed training steps of one configuration: the step and, inside it, the batch gather."""
    import torch
    import torch.nn.functional as F

    precision, channels_last = MODES[mode]
    model, optimizer, train_x, train_y = setup(args, architecture, size, precision, channels_last)
    model.train()
    cuda = args.device.startswith("cuda")
    generator = torch.Generator().manual_seed(1)
    order = torch.randperm(args.images, generator=generator).to(train_y.device)
    autocast = torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    steps, gathers, load_before, spent = [], [], os.getloadavg()[0], 0.0
    for i in range(args.warmup + args.iters):
        start = (i * args.batch_size) % (args.images - args.batch_size)
        _sync(cuda)
        t0 = time.perf_counter()
        batch = order[start : start + args.batch_size]
        x, y = train_x[batch].contiguous(memory_format=fmt), train_y[batch]
        _sync(cuda)
        t1 = time.perf_counter()
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 50.0)
        optimizer.step()
        _sync(cuda)
        t2 = time.perf_counter()
        if i >= args.warmup:
            steps.append(t2 - t0)
            gathers.append(t1 - t0)
            spent += t2 - t0
            if spent > args.max_seconds and len(steps) >= 3:
                break
    step_s, gather_s = statistics.median(steps), statistics.median(gathers)
    return {
        "device": args.device, "architecture": architecture, "size": size, "mode": mode,
        "batch_size": args.batch_size, "threads": args.threads, "steps": len(steps), "step_s": round(step_s, 4),
        "gather_s": round(gather_s, 5), "gather_pct": round(100 * gather_s / step_s, 2),
        "images_per_s": round(args.batch_size / step_s, 1), "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }  # fmt: skip


def _sync(cuda: bool) -> None:
    if cuda:
        import torch

        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for architecture in args.architectures.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for mode in args.modes.split(","):
                rows.append(time_config(args, architecture, size, mode))
                print(f"done {architecture} {size}px {mode}: {rows[-1]['images_per_s']} images/s",
                      file=sys.stderr, flush=True)
    out = args.out or Path(__file__).parent / "results" / f"pretrain_{args.device.replace(':', '')}.csv"
    write_csv(out, rows, FIELDS)
    print(f"device {args.device}, {args.threads} threads, batch {args.batch_size}, torch {torch.__version__}")
    print("| architecture | size | mode | s/step (median) | gather s | gather % | images/s | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['architecture']} | {r['size']} | {r['mode']} | {r['step_s']:.4f} | {r['gather_s']:.5f} | "
              f"{r['gather_pct']:.2f} | {r['images_per_s']:.0f} | {r['load_before']:.1f}/{r['load_after']:.1f} |")
    print(f"CSV: {out}")


if __name__ == "__main__":
    main()
