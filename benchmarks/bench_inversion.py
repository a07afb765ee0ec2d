"""Seconds per inversion data step: vmapped pool vs per-teacher loop (docs/method.md §8.3-8.4).

One data step = the inversion loss of every teacher, its backward to the images, one Adam step
(what ECI does once per meta-iteration). Teachers are randomly initialised Conv4s (speed does not
depend on training); the default shape is mini-ImageNet at 32 px: 64 classes in 5-way blocks
(13 teachers, the last with 4 classes), 16 images per class, RGB, i.e. 1,024 images per step.

Each configuration runs in its own subprocess so that its peak memory is its own: on CPU the
growth of ``ru_maxrss`` over the run, on CUDA ``torch.cuda.max_memory_allocated``.

    python benchmarks/bench_inversion.py --device cpu --threads 2 --iters 50

Writes a Markdown table to stdout and ``benchmarks/results/inversion_<device>.csv``.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_csv import write_csv

CONFIGS = [  # (mode, precision, channels_last); channels-last applies to the loop only
    ("batched", "fp32", False),
    ("loop", "fp32", False),
    ("loop", "fp32", True),
    ("batched", "bf16", False),
    ("loop", "bf16", True),
]
FIELDS = [
    "device", "mode", "precision", "channels_last", "teachers", "images", "threads", "iters",
    "median_s", "p10_s", "p90_s", "images_per_s", "peak_mem_mb",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--teachers", type=int, default=13, help="number of 5-way teachers")
    parser.add_argument("--classes", type=int, default=64, help="classes (last block short if not a multiple of 5)")
    parser.add_argument("--spc", type=int, default=16, help="images per class")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=50, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--configs", default="all", help="comma-separated indices into CONFIGS, or 'all'")
    parser.add_argument("--out", type=Path, default=None, help="CSV path (default benchmarks/results/inversion_<device>.csv)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build(args: argparse.Namespace, precision: str, channels_last: bool):
    """The resident pool and pseudo data of the benchmark shape."""

    from purer.inversion.dataset import DynamicDataset
    from purer.inversion.teacher_pool import ResidentPool
    from purer.models.backbones import build_backbone
    from purer.models.manifest import TeacherEntry
    from purer.seeding import make_generator, seed_everything

    seed_everything(0)
    classes = list(range(min(args.classes, 5 * args.teachers)))
    blocks = [classes[i : i + 5] for i in range(0, len(classes), 5)][: args.teachers]
    loaded = []
    for index, block in enumerate(blocks):
        entry = TeacherEntry(
            index=index, architecture="conv4", arch_kwargs={"width": 32}, checkpoint=Path("unused.pt"),
            dataset="bench", classes=tuple(block), local_classes=tuple(block), num_outputs=5,
            image_size=args.size, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, val_accuracy=None,
        )  # fmt: skip
        model = build_backbone("conv4", 5, 3, args.size, running_stats=True, width=32)
        loaded.append((entry, model.eval().requires_grad_(False)))
    pool = ResidentPool(None, args.device, precision, channels_last, loaded=loaded)
    data = DynamicDataset(pool.teachers, args.spc, 0.25, make_generator(0, "bench", "data"), args.device)
    return pool, data


def time_steps(args: argparse.Namespace, mode: str, precision: str, channels_last: bool) -> dict:
    """Run warm-up + timed data steps in this process; return the measurements."""
    import torch

    from purer.config import InversionConfig
    from purer.seeding import make_generator

    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pool, data = build(args, precision, channels_last)
    loss_fn = pool.inversion_loss if mode == "batched" else pool.reference_inversion_loss
    config, generator = InversionConfig(), make_generator(0, "bench", "jitter")
    times = []
    for step in range(args.warmup + args.iters):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        data.optimizer.zero_grad(set_to_none=True)
        total, _ = loss_fn(data, generator, config)
        total.backward()
        data.optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024  # KiB on Linux
    images = sum(d.images.shape[0] for d in data.domains.values())
    return summarise(args, mode, precision, channels_last, times, images, pool.n_teachers, peak)


def summarise(args, mode, precision, channels_last, times, images, teachers, peak) -> dict:
    ordered = sorted(times)
    median = statistics.median(ordered)
    return {
        "device": args.device, "mode": mode, "precision": precision, "channels_last": channels_last,
        "teachers": teachers, "images": images, "threads": args.threads, "iters": len(times),
        "median_s": round(median, 4), "p10_s": round(ordered[int(0.1 * (len(ordered) - 1))], 4),
        "p90_s": round(ordered[math.ceil(0.9 * (len(ordered) - 1))], 4),
        "images_per_s": round(images / median, 1), "peak_mem_mb": round(peak, 1),
    }  # fmt: skip


def run_worker(argv: list[str], index: int) -> dict:
    """Run configuration ``index`` in a fresh interpreter; parse its JSON line."""
    command = [sys.executable, __file__, *argv, "--worker", str(index)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"configuration {CONFIGS[index]} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    head = "| mode | precision | channels_last | s/step (median) | p10–p90 | images/s | peak MB |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['precision']} | {r['channels_last']} | {r['median_s']:.4f} | "
            f"{r['p10_s']:.4f}–{r['p90_s']:.4f} | {r['images_per_s']:.0f} | {r['peak_mem_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(time_steps(args, *CONFIGS[int(args.worker)])))
        return
    indices = range(len(CONFIGS)) if args.configs == "all" else [int(i) for i in args.configs.split(",")]
    rows = []
    for index in indices:
        rows.append(run_worker(argv, index))
        print(f"done {CONFIGS[index]}: {rows[-1]['median_s']} s/step", file=sys.stderr, flush=True)
    out = args.out or Path(__file__).parent / "results" / f"inversion_{args.device.replace(':', '')}.csv"
    write_csv(out, rows, FIELDS)
    first = rows[0]
    print(f"{first['teachers']} conv4 teachers, {first['images']} images/step, device {args.device}, "
          f"{args.threads} threads, median of {args.iters} steps after {args.warmup} warm-up")  # fmt: skip
    print(markdown(rows))
    print(f"CSV: {out}")


if __name__ == "__main__":
    main()
