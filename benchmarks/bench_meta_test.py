"""Plain test episodes per second: the per-episode loop vs batched groups (``meta_test.adapt_batch``).

The meta model is a randomly initialised Conv4 (speed does not depend on training) of the bench
pipeline's shape (config/experiments/bench.yaml): width 32, 32 px RGB, 5-way, 15 queries, MAML with
1 test-time inner step, on a synthetic 10-class test split (60 images per class). Every configuration
scores the *same* fixed episodes through :func:`purer.meta.evaluate.evaluate`, as the plain meta-test
and meta-training's validation do. Each row reports its mean accuracy and how many episodes got exactly
the per-episode path's accuracy (float32 rounding may flip a near-tie; the equality itself is a test:
tests/test_batched_meta_test.py).

    python benchmarks/bench_meta_test.py --threads 1 --episodes 100 --shots 1,5 --groups 1,10,25,50

Writes a Markdown table to stdout and ``benchmarks/results/meta_test_plain_cpu.csv``. ``group`` 1 is
the per-episode loop (before). Rows are interleaved by repeat so that a change of machine load hits
all of them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from bench_icfil import cpu_model
from results_csv import write_csv

REPO = Path(__file__).resolve().parent.parent
FIELDS = [
    "device", "cpu_model", "threads", "n_shot", "inner_steps", "group", "episodes", "repeats",
    "median_s", "min_s", "episodes_per_s", "speedup", "mean_accuracy", "equal_episodes", "load_before", "load_after",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=100, help="test episodes per measurement")
    parser.add_argument("--shots", default="1,5")
    parser.add_argument("--inner-steps", type=int, default=1, help="test-time inner steps (bench: 1)")
    parser.add_argument("--groups", default="1,10,25,50", help="adapt_batch values; 1 = per-episode loop")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (a pipeline job's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:k]")
    parser.add_argument("--out", type=Path, default=None,
                        help="CSV path (default benchmarks/results/meta_test_plain_<device>.csv)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from purer.data.cache import SplitData
    from purer.data.episodes import fixed_episodes
    from purer.meta.evaluate import evaluate
    from purer.meta.learners import build_learner
    from purer.models.backbones import build_backbone

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(10).repeat(60)
    images = torch.randint(0, 256, (len(labels), 3, 32, 32), generator=generator, dtype=torch.uint8)
    split = SplitData(images, labels, tuple(f"c{i}" for i in range(10)), (0.5,) * 3, (0.25,) * 3)
    torch.manual_seed(0)
    model = build_backbone("conv4", 5, 3, 32, running_stats=False, width=32).to(args.device)
    params = {n: p.detach() for n, p in model.named_parameters()}
    learner = build_learner("maml", 0.01, True)
    shots = [int(s) for s in args.shots.split(",")]
    groups = [int(g) for g in args.groups.split(",")]

    warmup = fixed_episodes(split, 5, 1, 15, 2, seed=0, name="warm-up")
    for group in (1, 2):  # torch.func's first use imports torch._dynamo (seconds); not part of a measurement
        evaluate(model, params, learner, split, warmup, args.inner_steps, args.device, adapt_batch=group)
    times: dict[tuple[int, int], list[float]] = {(k, g): [] for k in shots for g in groups}
    accuracies: dict[tuple[int, int], list[float]] = {}
    loads: dict[tuple[int, int], list[float]] = {key: [] for key in times}
    for _ in range(args.repeats):
        for n_shot in shots:
            episodes = fixed_episodes(split, 5, n_shot, 15, args.episodes, seed=2022, name="bench/test")
            for group in groups:
                loads[(n_shot, group)].append(os.getloadavg()[0])
                start = time.perf_counter()
                result = evaluate(model, params, learner, split, episodes, args.inner_steps, args.device,
                                  adapt_batch=group)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[(n_shot, group)].append(time.perf_counter() - start)
                loads[(n_shot, group)].append(os.getloadavg()[0])
                accuracies[(n_shot, group)] = result["accuracies"]

    rows = []
    model_name = cpu_model()
    for n_shot in shots:
        before = statistics.median(times[(n_shot, 1)]) if 1 in groups else None
        for group in groups:
            median = statistics.median(times[(n_shot, group)])
            load = loads[(n_shot, group)]
            reference = accuracies.get((n_shot, 1))
            rows.append({
                "device": args.device, "cpu_model": model_name, "threads": args.threads, "n_shot": n_shot,
                "inner_steps": args.inner_steps, "group": group, "episodes": args.episodes, "repeats": args.repeats,
                "median_s": round(median, 3), "min_s": round(min(times[(n_shot, group)]), 3),
                "episodes_per_s": round(args.episodes / median, 1),
                "speedup": "" if before is None else round(before / median, 2),
                "mean_accuracy": round(statistics.fmean(accuracies[(n_shot, group)]), 2),
                "equal_episodes": "" if reference is None else
                f"{sum(a == b for a, b in zip(reference, accuracies[(n_shot, group)], strict=True))}/{args.episodes}",
                "load_before": round(min(load[0::2]), 2), "load_after": round(max(load[1::2]), 2),
            })  # fmt: skip
    write_csv(args.out or REPO / "benchmarks" / "results" / f"meta_test_plain_{args.device.split(':')[0]}.csv",
              rows, FIELDS)
    lines = [f"{args.device}; CPU: {model_name}, {args.threads} threads (a machine shared with other jobs)", "",
             "| shot | group | median s | episodes/s | speed-up | mean accuracy | equal episodes | load |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['n_shot']} | {row['group']} | {row['median_s']} | {row['episodes_per_s']} | "
                     f"{row['speedup']} | {row['mean_accuracy']} | {row['equal_episodes']} | "
                     f"{row['load_before']}/{row['load_after']} |")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
