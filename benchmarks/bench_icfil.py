"""ICFIL test episodes per second: the per-episode path vs batched episode groups, same run.

The meta model is a randomly initialised Conv4 (speed does not depend on training) of the default
pipeline's shape: width 32, 32 px grey, 5-way, on a synthetic 10-class test split (40 images per
class). Every configuration scores the *same* fixed episodes with the ICFIL settings of
``--config`` (default config/config.yaml: 5 pseudo images per class, 20 inversion steps, 10
feature steps, 5 head steps) through :func:`purer.meta.evaluate.evaluate`. Each row reports its mean
accuracy and how many episodes got exactly the per-episode path's accuracy: in float32 the batched
kernels round differently, and Adam on the pseudo images turns rounding noise in near-zero pixel
gradients into full-size steps, so some episodes differ (the float64 equality is a test:
tests/test_icfil_controls.py).

    python benchmarks/bench_icfil.py --threads 2 --episodes 50 --shots 1,5 --groups 1,10,25,50
    python benchmarks/bench_icfil.py --threads 1 --episodes 50 --shots 1,5 --groups 1,1c --channels 3 \
        --config config/experiments/bench.yaml

Writes a Markdown table to stdout and ``benchmarks/results/icfil_cpu.csv``. ``group`` 1 is the
per-episode path (before); larger groups run one vmapped inversion and calibration per group
(after); ``1c`` is the per-episode path with ``compile: true`` (the inversion's steps as one compiled
graph; its compilation is paid in an untimed first pass, as a later job finds it in the compile
cache). Rows are interleaved by repeat so that a change of machine load hits all of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_csv import write_csv

REPO = Path(__file__).resolve().parent.parent
FIELDS = [
    "device", "cpu_model", "threads", "n_shot", "group", "episodes", "repeats", "inversion_steps",
    "median_s", "min_s", "episodes_per_s", "speedup", "mean_accuracy", "equal_episodes", "load_before", "load_after",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    parser.add_argument("--episodes", type=int, default=50, help="test episodes per measurement")
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--groups", default="1,10,25,50",
                        help="episode_batch values; 1 = per-episode path, 1c = per-episode path compiled")
    parser.add_argument("--channels", type=int, default=1, help="image channels (1 grey, 3 RGB)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:k]")
    parser.add_argument("--out", type=Path, default=None, help="CSV path (default benchmarks/results/icfil_<device>.csv)")
    return parser.parse_args(argv)


def cpu_model() -> str:
    """``Model name`` from ``lscpu`` (or ``unknown``)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    for line in text.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from purer.config import load_config
    from purer.data.cache import SplitData
    from purer.data.episodes import fixed_episodes
    from purer.meta.evaluate import evaluate
    from purer.meta.learners import build_learner
    from purer.meta.meta_test import icfil_batch_hook, icfil_hook
    from purer.models.backbones import build_backbone

    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(40)
    images = torch.randint(0, 256, (len(labels), args.channels, 32, 32), generator=generator, dtype=torch.uint8)
    split = SplitData(images, labels, tuple(f"c{i}" for i in range(10)), (0.5,) * args.channels,
                      (0.25,) * args.channels)
    torch.manual_seed(0)
    model = build_backbone("conv4", 5, args.channels, 32, running_stats=False, width=32).to(args.device)
    params = {n: p.detach() for n, p in model.named_parameters()}
    learner = build_learner("maml", config.meta_train.learner.inner_lr)
    shots = [int(s) for s in args.shots.split(",")]
    groups = [g.strip() for g in args.groups.split(",")]
    compiled = dataclasses.replace(config, compile=True)
    if "1c" in groups:  # pay the compilation outside the timed passes
        for n_shot in shots:
            warm = fixed_episodes(split, 5, n_shot, 15, 1, seed=config.seed, name="bench/warm-up")
            evaluate(model, params, learner, split, warm, 1, args.device, calibrate=icfil_hook(compiled, "bench", 5))

    times: dict[tuple[int, str], list[float]] = {(k, g): [] for k in shots for g in groups}
    accuracies: dict[tuple[int, str], list[float]] = {}
    loads: dict[tuple[int, str], list[float]] = {key: [] for key in times}
    for _ in range(args.repeats):
        for n_shot in shots:
            episodes = fixed_episodes(split, 5, n_shot, 15, args.episodes, seed=config.seed, name="bench/test")
            for group in groups:
                loads[(n_shot, group)].append(os.getloadavg()[0])
                start = time.perf_counter()
                if group in ("1", "1c"):
                    result = evaluate(model, params, learner, split, episodes, 1, args.device,
                                      calibrate=icfil_hook(compiled if group == "1c" else config, "bench", 5))
                else:
                    result = evaluate(model, params, learner, split, episodes, 1, args.device,
                                      calibrate_batch=icfil_batch_hook(config, "bench", 5), episode_batch=int(group))
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[(n_shot, group)].append(time.perf_counter() - start)
                loads[(n_shot, group)].append(os.getloadavg()[0])
                accuracies[(n_shot, group)] = result["accuracies"]

    rows = []
    model_name = cpu_model()
    for n_shot in shots:
        before = statistics.median(times[(n_shot, "1")]) if "1" in groups else None
        for group in groups:
            median = statistics.median(times[(n_shot, group)])
            load = loads[(n_shot, group)]
            rows.append({
                "device": args.device, "cpu_model": model_name, "threads": args.threads, "n_shot": n_shot,
                "group": group, "episodes": args.episodes, "repeats": args.repeats,
                "inversion_steps": config.meta_test.icfil.inversion_steps,
                "median_s": round(median, 3), "min_s": round(min(times[(n_shot, group)]), 3),
                "episodes_per_s": round(args.episodes / median, 3),
                "speedup": "" if before is None else round(before / median, 2),
                "mean_accuracy": round(statistics.fmean(accuracies[(n_shot, group)]), 2),
                "equal_episodes": _equal(accuracies.get((n_shot, "1")), accuracies[(n_shot, group)]),
                "load_before": round(min(load[0::2]), 2), "load_after": round(max(load[1::2]), 2),
            })  # fmt: skip
    write_csv(args.out or REPO / "benchmarks" / "results" / f"icfil_{args.device.split(':')[0]}.csv", rows, FIELDS)
    header = "| shot | group | median s | episodes/s | speed-up | mean accuracy | equal episodes | load |"
    lines = [f"{args.device}; CPU: {model_name}, {args.threads} threads (a machine shared with other jobs)", "",
             header, "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['n_shot']} | {row['group']} | {row['median_s']} | {row['episodes_per_s']} | "
                     f"{row['speedup']} | {row['mean_accuracy']} | {row['equal_episodes']} | "
                     f"{row['load_before']}/{row['load_after']} |")
    sys.stdout.write("\n".join(lines) + "\n")


def _equal(reference: list[float] | None, accuracies: list[float]) -> str:
    """``"k/n"``: episodes whose accuracy equals the per-episode path's (empty without it)."""
    if reference is None:
        return ""
    return f"{sum(a == b for a, b in zip(reference, accuracies, strict=True))}/{len(accuracies)}"


if __name__ == "__main__":
    main()
