"""Does the fast CPU path change accuracy? fp32 vs ``precision: bf16`` (+ channels-last + compile).

Meta-trains and meta-tests one method (default ``purer`` 1-shot) of the default pipeline with the
same pre-trained pool, the same seeds and the same fixed test episodes, once per settings variant,
through the ``purer`` command line. Per seed it reports each variant's accuracy ± 95% CI and the
paired difference to the first variant on the same episodes (mean ± 1.96·sd/√n of the per-episode
differences); over seeds, the mean and its t-interval.

Needs the default pipeline's pool (``make run`` or ``dvc repro``). Runs go to a temporary folder
unless ``--keep DIR``; only the CSV is written to ``benchmarks/results/``.

    python benchmarks/accuracy_precision.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from results_csv import write_csv

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "fp32": [],
    "optimised": ["precision=bf16", "channels_last=true", "compile=true"],
    "bf16": ["precision=bf16"],
}
T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "config" / "config.yaml"))
    parser.add_argument("--method", default="purer")
    parser.add_argument("--n-shot", type=int, default=1)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default="fp32,optimised", help=f"comma-separated, first = baseline: {list(VARIANTS)}")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy_precision_cpu.csv")
    return parser.parse_args(argv)


def purer(*args: str) -> None:
    command = [sys.executable, "-m", "purer.cli.main", *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")


def run_variant(args: argparse.Namespace, variant: str, seed: int, root: Path) -> dict:
    """Meta-train + meta-test one (variant, seed); returns its metrics and seconds per iteration."""
    run = root / variant / f"seed{seed}"
    sets = [item for value in VARIANTS[variant] for item in ("--set", value)]
    common = ["--config", args.config, "--method", args.method, "--n-shot", str(args.n_shot), "--seed", str(seed)]
    purer("meta-train", *common, *sets, "--out", str(run))
    purer("meta-test", *common, *sets, "--run", str(run))
    (metrics_file,) = sorted(run.glob("test/*/plain/metrics.json"))
    metrics = json.loads(metrics_file.read_text())
    curve = [json.loads(line) for line in (run / "curve.jsonl").read_text().splitlines()]
    return {"metrics": metrics, "s_per_iter": statistics.median(r["seconds"] for r in curve),
            "first_iter_s": curve[0]["seconds"]}


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and 95% half-width of the per-episode differences a − b (percentage points)."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    return statistics.fmean(diffs), 1.96 * statistics.pstdev(diffs) / math.sqrt(len(diffs))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    variants, seeds = args.variants.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown} (valid: {list(VARIANTS)})")
    rows = []
    with tempfile.TemporaryDirectory(prefix="purer-accuracy-") as tmp:
        root = args.keep or Path(tmp)
        for seed in seeds:
            results = {v: run_variant(args, v, seed, root) for v in variants}
            base = results[variants[0]]["metrics"]
            for v in variants:
                m = results[v]["metrics"]
                diff, half = paired(m["accuracies"], base["accuracies"])
                rows.append({"variant": v, "seed": seed, "accuracy": m["accuracy"], "ci95": m["ci95"],
                             "diff_vs_" + variants[0]: round(diff, 2), "diff_ci95": round(half, 2),
                             "checkpoint_iteration": m["checkpoint_iteration"], "episodes": m["episodes"],
                             "s_per_iter": round(results[v]["s_per_iter"], 3),
                             "first_iter_s": round(results[v]["first_iter_s"], 1)})
                print(f"seed {seed} {v}: {m['accuracy']:.2f} ± {m['ci95']:.2f} "
                      f"(vs {variants[0]}: {diff:+.2f} ± {half:.2f}), {rows[-1]['s_per_iter']} s/iter",
                      file=sys.stderr, flush=True)
    write_csv(args.out, rows, list(rows[0]))
    print(f"{args.method} {args.n_shot}-shot, config {args.config}, seeds {seeds}\n")
    print("| variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean (t 95%) | paired diff per seed | s/iter |")
    print("|---|" + "---|" * (len(seeds) + 3))
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        accs = [r["accuracy"] for r in mine]
        t = T_975.get(len(accs) - 1)
        spread = f" ± {t * statistics.stdev(accs) / math.sqrt(len(accs)):.2f}" if t else ""
        diffs = ", ".join(f"{r['diff_vs_' + variants[0]]:+.2f} ± {r['diff_ci95']:.2f}" for r in mine)
        print(f"| {v} | " + " | ".join(f"{r['accuracy']:.2f} ± {r['ci95']:.2f}" for r in mine)
              + f" | {statistics.fmean(accs):.2f}{spread} | {diffs} | {statistics.median(r['s_per_iter'] for r in mine)} |")
    print(f"\nCSV: {args.out}")


if __name__ == "__main__":
    main()
