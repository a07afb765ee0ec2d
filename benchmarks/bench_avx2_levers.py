"""Speed levers of the ECI meta-iteration on a CPU without AVX-512, each measured against what runs now.

Every section times its variants interleaved in one process (variant A, B, ... then again), so a
machine shared with other jobs slows all of them alike; it reports the median and the minimum in
milliseconds and checks that the variants compute the same values (``max_abs_diff``).

Sections (``--sections``):

- ``grouped_conv``: the four Conv4 convolutions of 12 teachers (80 images each), forward plus input
  gradient: one call per teacher (what the pool runs) vs one grouped convolution over the 12
  (what stacking the teachers into one model, or ``vmap`` over them, turns them into).
- ``first_layer``: the 3-channel first convolution: oneDNN in channels-last (what runs), the input
  zero-padded to 8 channels, and im2col + ``addmm`` (eager and compiled).
- ``channel_stats``: one teacher's compiled inversion loss with its gradient, BN input statistics as
  now (``rows.mean(0)``, which inductor compiles into one strided pass per 8 channels) vs two
  matrix-vector products.
- ``meta_formats``: the meta step's 4 second-order MAML episodes (forward + backward), compiled or
  eager, channels-last or contiguous.
- ``profile``: where one ``optimised-fp32`` meta-iteration of the ``t13`` benchmark spends its time,
  data step and meta step apart, by kind of kernel (torch.profiler, inductor kernels named).

    python benchmarks/bench_avx2_levers.py --threads 1 --sections grouped_conv,first_layer,channel_stats,meta_formats
    python benchmarks/bench_avx2_levers.py --threads 2 --sections profile

Prints Markdown tables and writes ``benchmarks/results/avx2_levers_<tag>_cpu.csv``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from results_csv import speed_flags, write_csv

from purer.runtime import cpu_model

FIELDS = ["section", "variant", "threads", "median_ms", "min_ms", "max_abs_diff", "note"]
SECTIONS = ("grouped_conv", "first_layer", "channel_stats", "meta_formats", "profile")


def interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each call, the variants taking turns ``repeats`` times (after one warm-up each)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def rows_of(section: str, times: dict, threads: int, diffs: dict | None = None, notes: dict | None = None) -> list[dict]:
    return [{"section": section, "variant": name, "threads": threads,
             "median_ms": round(1e3 * statistics.median(ts), 2), "min_ms": round(1e3 * min(ts), 2),
             "max_abs_diff": (diffs or {}).get(name, ""), "note": (notes or {}).get(name, "")}
            for name, ts in times.items()]  # fmt: skip


def grouped_conv(args) -> list[dict]:
    import torch
    import torch.nn.functional as F

    teachers, batch, rows = 12, 80, []
    for cin, side in ((3, 32), (32, 16), (32, 8), (32, 4)):
        for fmt_name, fmt in (("channels_last", torch.channels_last), ("contiguous", torch.contiguous_format)):
            g = torch.Generator().manual_seed(0)
            xs = [torch.randn(batch, cin, side, side, generator=g) for _ in range(teachers)]
            ws = [torch.randn(32, cin, 3, 3, generator=g) for _ in range(teachers)]
            grad = torch.randn(batch, 32 * teachers, side, side, generator=g)

            def loop(xs=xs, ws=ws, grad=grad, fmt=fmt):
                outs = []
                for t, (x, w) in enumerate(zip(xs, ws, strict=True)):
                    x = x.contiguous(memory_format=fmt).requires_grad_(True)
                    y = F.conv2d(x, w.contiguous(memory_format=fmt), padding=1)
                    outs.append(torch.autograd.grad(y, [x], grad[:, 32 * t : 32 * (t + 1)].contiguous(memory_format=fmt))[0])
                return torch.cat(outs, dim=1)

            def grouped(xs=xs, ws=ws, grad=grad, fmt=fmt):
                x = torch.cat(xs, dim=1).contiguous(memory_format=fmt).requires_grad_(True)
                y = F.conv2d(x, torch.cat(ws).contiguous(memory_format=fmt), padding=1, groups=len(xs))
                return torch.autograd.grad(y, [x], grad.contiguous(memory_format=fmt))[0]

            diff = (loop() - grouped()).abs().max().item()
            times = interleaved({"per-teacher loop": loop, "grouped": grouped}, args.repeats)
            note = f"{cin}->32 ch at {side} px, {fmt_name}"
            rows += rows_of(f"grouped_conv {cin}ch {side}px {fmt_name}", times, args.threads,
                            {"grouped": f"{diff:.2e}"}, {k: note for k in times})
    return rows


def first_layer(args) -> list[dict]:
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    n = 80
    x0, w, b = torch.randn(n, 3, 32, 32, generator=g), torch.randn(32, 3, 3, 3, generator=g), torch.randn(32, generator=g)
    grad = torch.randn(n, 32, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)

    def onednn():
        x = x0.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        y = F.conv2d(x, w.contiguous(memory_format=torch.channels_last), b, padding=1)
        return y, torch.autograd.grad(y, [x], grad)[0]

    def padded8():
        x = x0.clone().requires_grad_(True)
        xp = F.pad(x, (0, 0, 0, 0, 0, 5)).contiguous(memory_format=torch.channels_last)
        y = F.conv2d(xp, F.pad(w, (0, 0, 0, 0, 0, 5)).contiguous(memory_format=torch.channels_last), b, padding=1)
        return y, torch.autograd.grad(y, [x], grad)[0]

    def im2col():
        x = x0.clone().requires_grad_(True)
        xp = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))
        patches = torch.cat([xp[:, i : i + 32, j : j + 32, :] for i in range(3) for j in range(3)], dim=3)
        y = torch.addmm(b, patches.reshape(-1, 27), w.permute(2, 3, 1, 0).reshape(27, 32))
        y = y.view(n, 32, 32, 32).permute(0, 3, 1, 2)
        return y, torch.autograd.grad(y, [x], grad)[0]

    fns = {"oneDNN channels-last (now)": onednn, "zero-padded to 8 channels": padded8, "im2col + addmm": im2col,
           "im2col + addmm, compiled": torch.compile(im2col, dynamic=False)}
    ref = onednn()
    diffs = {}
    for name, fn in fns.items():
        y, gx = fn()
        diffs[name] = f"{max((y - ref[0]).abs().max().item(), (gx - ref[1]).abs().max().item()):.2e}"
    return rows_of("first_layer", interleaved(fns, args.repeats), args.threads, diffs)


def channel_stats(args) -> list[dict]:
    import torch

    from purer.config import InversionConfig
    from purer.inversion.teacher_pool import _functional_loop_terms
    from purer.models import backbones
    from purer.models.backbones import build_backbone

    def by_mv(rows):
        weights = rows.new_full((rows.shape[0],), 1.0 / rows.shape[0])
        mean = rows.t().mv(weights)
        return mean, (rows - mean).square().t().mv(weights)

    original = backbones.ChannelStats.forward

    def forward_mv(x):
        return by_mv(x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]))

    model = build_backbone("conv4", 5, 3, 32, running_stats=True, width=32).eval().requires_grad_(False)
    model.to(memory_format=torch.channels_last)
    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    x = torch.randn(80, 3, 32, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    targets = torch.arange(5).repeat_interleave(16)
    compiled = {}

    def step(name):
        backbones.ChannelStats.forward = staticmethod(original if name == "now" else forward_mv)
        if name not in compiled:
            compiled[name] = torch.compile(partial(_functional_loop_terms, model, InversionConfig(), "fp32", True),
                                           dynamic=False)
        total = compiled[name](params, buffers, x, targets)["total"]
        return torch.autograd.grad(total, [x])[0]

    try:
        ref, other = step("now"), step("two mv products")
        times = interleaved({"now": partial(step, "now"), "two mv products": partial(step, "two mv products")},
                            args.repeats)
    finally:
        backbones.ChannelStats.forward = staticmethod(original)
    return rows_of("channel_stats (one teacher, compiled loss + input gradient)", times, args.threads,
                   {"two mv products": f"{(ref - other).abs().max().item():.2e}"})


def meta_formats(args) -> list[dict]:
    import torch

    from purer.meta.learners import build_learner, episode_loss_fn, meta_parameters
    from purer.models.backbones import build_backbone

    model = build_backbone("conv4", 5, 3, 32, running_stats=False, width=32, adaptive_pool=False).requires_grad_(False)
    params = meta_parameters(model)
    learner = build_learner("maml", 0.01)
    g = torch.Generator().manual_seed(0)
    episodes = [(torch.randn(5, 3, 32, 32, generator=g), torch.arange(5), torch.randn(75, 3, 32, 32, generator=g),
                 torch.arange(5).repeat_interleave(15)) for _ in range(4)]  # fmt: skip
    variants = {f"{'compiled' if c else 'eager'}, {'channels-last' if cl else 'contiguous'}":
                episode_loss_fn(learner, model, 1, cl, c) for c in (True, False) for cl in (True, False)}  # fmt: skip

    def step(fn):
        for p in params.values():
            p.grad = None
        for episode in episodes:
            fn(params, *episode)[0].backward()
        return torch.cat([p.grad.flatten() for p in params.values()])

    ref = step(variants["eager, contiguous"])
    diffs = {name: f"{(step(fn) - ref).abs().max().item():.2e}" for name, fn in variants.items()}
    times = interleaved({name: partial(step, fn) for name, fn in variants.items()}, args.repeats)
    return rows_of("meta_formats (4 episodes, forward + backward)", times, args.threads, diffs)


KINDS = (  # (kind, test on an event name), first match wins
    ("convolution forward (oneDNN)", lambda n: n == "aten::mkldnn_convolution"),
    ("convolution backward (oneDNN)", lambda n: n == "aten::convolution_backward"),
    ("matmul", lambda n: n in ("aten::mm", "aten::addmm", "aten::bmm", "aten::mv")),
    ("compiled: max-pool backward", lambda n: n.startswith("graph_") and "max_pool2d_with_indices_backward" in n),
    ("compiled: with a reduction (BN statistics, norms, BN training)",
     lambda n: n.startswith("graph_") and any(k in n for k in ("mean", "norm", "sum", "_native_batch_norm_legit_"))),
    ("compiled: other element-wise", lambda n: n.startswith("graph_")),
    ("max-pool backward scatter (aten)", lambda n: n == "aten::scatter_reduce_"),
    ("max-pool (ATen kernels, purer.compiler)",
     lambda n: n in ("aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward")),
    ("fused Adam", lambda n: n == "aten::_fused_adam_"),
)


def profile(args) -> list[dict]:
    """Self CPU time per kind of kernel over ``repeats`` data steps and meta steps of ``t13`` optimised-fp32."""
    import bench_meta_iteration as bench_module
    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from purer.hostmem import retain_freed_memory
    from purer.meta import engine

    inductor_config.cpp.enable_kernel_profile = True  # inductor kernels appear by name
    retain_freed_memory()
    rows = []
    with tempfile.TemporaryDirectory(prefix="purer-bench-") as tmp:
        bench = bench_module.Bench(bench_module.SCENARIOS["t13"], bench_module.variant_for("optimised-fp32", "cpu"),
                                   "cpu", Path(tmp))
        for index in range(1, 4):  # compilation, warm-up
            bench.iteration(index)
        steps = {"data step": lambda i: engine.data_step(bench.run, bench.state, i),
                 "meta step": lambda i: engine.meta_step(bench.run, bench.state)}
        index = 4
        for step_name, step in steps.items():
            walls = []
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    step(index)
                    walls.append(time.perf_counter() - start)
                    index += 1
            wall_ms = 1e3 * statistics.median(walls)
            totals: dict[str, float] = {}
            for event in prof.key_averages():
                kind = next((k for k, test in KINDS if test(event.key)), "other (Python, dispatch, small ops)")
                totals[kind] = totals.get(kind, 0.0) + event.self_cpu_time_total / 1e3 / args.repeats
            whole = sum(totals.values())
            for kind, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
                rows.append({"section": f"profile {step_name}", "variant": kind, "threads": args.threads,
                             "median_ms": round(ms, 2), "min_ms": "", "max_abs_diff": "",
                             "note": f"{100 * ms / whole:.0f}% of the profiled {whole:.0f} ms (wall {wall_ms:.0f} ms)"})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--sections", default=",".join(SECTIONS[:-1]), help=f"comma-separated of {list(SECTIONS)}")
    parser.add_argument("--tag", default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    sections = [s.strip() for s in args.sections.split(",")]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"--sections: unknown {unknown} (valid: {list(SECTIONS)})")
    tag = args.tag or f"{'+'.join(sections)}_{args.threads}t"
    out = Path(__file__).parent / "results" / f"avx2_levers_{tag}_cpu.csv"
    rows: list[dict] = []
    for section in sections:
        rows += globals()[section](args)
        write_csv(out, rows, FIELDS)  # after every section
        print(f"done {section}", file=sys.stderr, flush=True)
    flags = speed_flags()
    print(f"CPU: {cpu_model()}; flags: {flags}; torch {torch.__version__}; {args.threads} threads; "
          f"{args.repeats} interleaved repeats")
    print("\n| section | variant | median ms | min ms | max abs diff | note |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['section']} | {r['variant']} | {r['median_ms']} | {r['min_ms']} | {r['max_abs_diff']} | {r['note']} |")
    print(f"CSV: {out}")


if __name__ == "__main__":
    main()
