"""Seconds per full ECI meta-iteration: the authors' cost profile vs ``purer meta-train`` (docs/method.md §2.8, §8).

One meta-iteration = the data step (inversion loss of every teacher, backward, one Adam step on
the images) + the meta step (a meta-batch of 4 second-order MAML episodes, 5-way 1-shot, 15
queries, one Adam step on the meta model) + one host sync for the logged values. The gradient
switch stays off (the warm-up phase, i.e. the method ``ei``): the reversed step fires at most once
per ``patience`` iterations and is not part of the timings.

Variants (see ``VARIANTS``):

- ``reference``: the cost profile of the authors' code (docs/method.md §8.1, §8.3, §8.5, §8.10):
  every iteration each teacher is rebuilt and its checkpoint ``torch.load``-ed from disk, teachers
  run one by one in fp32 and contiguous memory, each call deep-copies the teacher and registers
  forward hooks on its BatchNorm layers that take the input statistics as the authors' hook does
  (§8.2, :func:`authors_hooked_forward`), the data loss is back-propagated into the teacher weights
  too (``requires_grad=True``), and the 4 episode graphs are kept until one summed backward.
- ``+<name>``: one speed-up on top of the reference (an ablation).
- ``trainer-fp32``: what ``purer meta-train`` runs with the default settings (resident pool,
  images-only gradients, fused BN statistics, per-episode backward, ``teacher_batching: auto``,
  freed host memory retained as the ``purer`` command line does: :mod:`purer.hostmem`).
- ``optimised``: ``purer meta-train``'s own ``data_step``/``meta_step`` with the best settings
  for the device (``BEST``; on CPU ``precision: bf16``, ``channels_last: true``, ``compile: true``).
  ``first_iter_s`` is the first iteration, which pays the compilation.

Scenarios (see ``SCENARIOS``): randomly initialised teachers (speed does not depend on training)
with 5 classes each, 16 images per class, RGB; ``t13`` is CIFAR-FS / mini-ImageNet at 32 px (64
classes, 13 Conv4 teachers of width 32, the last with 4 classes).

Each (scenario, variant) runs in its own subprocess: peak memory is the growth of ``ru_maxrss``
(CPU) or ``torch.cuda.max_memory_allocated`` (CUDA). ``--limits`` also measures the practical
FLOP rate of the same layers at a large batch: the convolutions alone, and whole Conv4 blocks
(convolution, BatchNorm, ReLU, max-pool); ``--limits-only`` measures only those, and
``--limit-batch``/``--limit-sizes``/``--limit-precisions`` choose what (bf16 rows are slow where bf16 is
emulated). Each row also counts the useful FLOPs of the meta step (``meta_gflop``: 4 second-order
MAML episodes, forward and backward) and its rate (``meta_gflops``).

    python benchmarks/bench_meta_iteration.py --device cpu --threads 2 --configs main
    python benchmarks/bench_meta_iteration.py --device cuda --configs main,scaling --limits

Prints a Markdown table and writes ``benchmarks/results/meta_iteration_<tag>_<device>.csv``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from results_csv import speed_flags, write_csv

from purer.runtime import cpu_model, describe_machine


@dataclass(frozen=True)
class Scenario:
    """A pool shape: ``teachers`` blocks of 5 classes (the last may be short) over ``classes``."""

    teachers: int
    classes: int
    architectures: tuple[str, ...] = ("conv4",)
    size: int = 32


@dataclass(frozen=True)
class Variant:
    """How an iteration is run. ``trainer=True`` uses ``purer.meta.train`` itself."""

    trainer: bool = False
    reload: bool = True  # rebuild + torch.load every teacher every iteration (§8.1)
    teacher_grads: bool = True  # backward into the teacher weights too (§8.5)
    summed_backward: bool = True  # keep the 4 episode graphs until one backward (§8.10)
    episode_vmap: bool = False  # the 4 episodes as one vmap (torch.func) instead of a loop
    precision: str = "fp32"
    channels_last: bool = False
    batching: str = "loop"  # loop | vmap | auto (trainer only)
    teachers_per_step: int | None = None
    threads: int | None = None  # None = --threads
    conv_fp32_precision: str | None = None  # torch.backends.mkldnn.conv.fp32_precision (CPU)
    compile: bool = False  # config ``compile``: compiled per-teacher losses and meta episodes
    authors_hooks: bool = True  # deep copy + BN forward hooks per call, the authors' statistics (§8.2)
    retain_malloc: bool = False  # purer.hostmem.retain_freed_memory (what the purer CLI does at start)


SCENARIOS = {
    "t4": Scenario(4, 20),
    "t13": Scenario(13, 64),
    "t32": Scenario(32, 160),
    "t100": Scenario(100, 500),
    "mixed": Scenario(3, 15, ("conv4", "resnet10", "resnet18")),
    "t13_84px": Scenario(13, 64, ("conv4",), 84),
}
REFERENCE = Variant()
TRAINER = Variant(trainer=True, reload=False, teacher_grads=False, summed_backward=False, batching="auto",
                  authors_hooks=False, retain_malloc=True)
BEST = {  # the fastest settings measured per device type (benchmarks/README.md)
    "cpu": replace(TRAINER, precision="bf16", channels_last=True, compile=True),
    "cuda": replace(TRAINER, channels_last=True, compile=True),  # fp32: bf16 was no faster on an H200
}
VARIANTS = {
    "reference": REFERENCE,
    "+resident": replace(REFERENCE, reload=False),
    "+images_only": replace(REFERENCE, teacher_grads=False),
    "+episode_backward": replace(REFERENCE, summed_backward=False),
    "+episode_vmap": replace(REFERENCE, summed_backward=False, episode_vmap=True),
    "+channels_last": replace(REFERENCE, channels_last=True),
    "+bf16": replace(REFERENCE, precision="bf16"),
    "+conv_bf16_math": replace(REFERENCE, conv_fp32_precision="bf16"),
    "+vmap": replace(REFERENCE, batching="vmap"),
    "+subsample4": replace(REFERENCE, teachers_per_step=4),
    "+1thread": replace(REFERENCE, threads=1),
    "+resident+compile": replace(REFERENCE, reload=False, compile=True),
    "+fused_bn_stats": replace(REFERENCE, authors_hooks=False),
    "+retain_malloc": replace(REFERENCE, retain_malloc=True),  # purer's recording instead of copy + hooks
    "trainer-fp32": TRAINER,
    "trainer-bf16": replace(TRAINER, precision="bf16"),  # eager bf16 (the GPU table's comparison)
    "optimised": None,  # BEST[device type]
    "optimised-fp32": None,  # BEST in fp32 (the accuracy baseline of bf16)
    "optimised-bf16": None,  # BEST in bf16 (emulated, and slow, on CPUs without native bf16)
    "optimised-no_compile": None,  # BEST with compile: false
    "optimised-loop": None,  # BEST with teacher_batching: loop
    "optimised-vmap": None,  # BEST with teacher_batching: vmap
    "optimised+compile": None,  # BEST with compile: true (GPU)
    "optimised+subsample4": None,  # BEST with teachers_per_step: 4 (changes the algorithm)
}
PRESETS = {
    "main": [("t13", v) for v in ("reference", "+resident", "+images_only", "+episode_backward", "+channels_last",
                                  "+bf16", "+conv_bf16_math", "+fused_bn_stats", "+retain_malloc", "+resident+compile", "+vmap",
                                  "+subsample4", "+1thread", "trainer-fp32", "optimised-no_compile", "optimised-fp32",
                                  "optimised", "optimised-vmap", "optimised+subsample4")],
    "extra": [("t13", v) for v in ("+episode_vmap",)],
    # Most telling first: a run stopped by its time limit keeps what it measured.
    "gpu": [("t13", v) for v in ("reference", "trainer-fp32", "trainer-bf16", "+resident",
                                 "+episode_backward", "+vmap")]
    + [("t13_84px", v) for v in ("reference", "trainer-fp32", "trainer-bf16")]
    + [("mixed", "reference"), ("mixed", "trainer-fp32"), ("t32", "trainer-fp32"), ("t100", "trainer-fp32")]
    + [("t13", "optimised"), ("t13_84px", "optimised"), ("t13", "optimised-bf16"),
       ("t13", "optimised-loop")],  # compiled ones last, the loop's slow compilation last of all
    "scaling": [(s, "optimised") for s in ("t4", "t13", "t32", "t100")] + [("t4", "reference")],
    "mixed": [("mixed", "reference"), ("mixed", "optimised")],
    "84px": [("t13_84px", "reference"), ("t13_84px", "optimised")],
}
FIELDS = [
    "device", "scenario", "variant", "teachers", "architectures", "size", "images", "threads", "iters",
    "median_s", "p10_s", "p90_s", "data_s", "meta_s", "images_per_s", "data_s_per_teacher",
    "useful_gflop", "achieved_gflops", "meta_gflop", "meta_gflops", "peak_mem_mb", "first_iter_s", "load_before", "load_after",
    "cpu_model", "cpu_flags", "precision", "channels_last", "compile",
]  # fmt: skip
N_WAY, N_SHOT, N_QUERY, SPC, META_BATCH = 5, 1, 15, 16, 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iters", type=int, default=50, help="timed meta-iterations (median reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    parser.add_argument("--configs", default="main",
                        help=f"comma-separated presets {sorted(PRESETS)} or scenario:variant pairs")
    parser.add_argument("--limits", action="store_true", help="also measure the practical FLOP rate")
    parser.add_argument("--limits-only", action="store_true",
                        help="measure only the practical FLOP rate (no meta-iterations; CSV <tag>_limits)")
    parser.add_argument("--limit-batch", type=int, default=1024, help="batch of the --limits measurement")
    parser.add_argument("--limit-sizes", default="32,84", type=_sizes, help="image sizes of the --limits measurement")
    parser.add_argument("--limit-precisions", default="fp32,bf16", type=_precisions,
                        help="precisions of the --limits measurement (bf16 is emulated, and slow, without "
                             "AVX-512 BF16 or AMX)")
    parser.add_argument("--tag", default=None, help="CSV name part (default: the --configs value)")
    parser.add_argument("--out", type=Path, default=None, help="CSV path (overrides --tag)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _sizes(text: str) -> list[int]:
    """``--limit-sizes``: comma-separated positive integers."""
    if not all(size.isdigit() and int(size) > 0 for size in text.split(",")):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return [int(size) for size in text.split(",")]


def _precisions(text: str) -> list[str]:
    """``--limit-precisions``: a comma-separated subset of fp32, bf16."""
    if not set(text.split(",")) <= {"fp32", "bf16"}:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of fp32,bf16, got {text!r}")
    return text.split(",")


def resolve_configs(spec: str) -> list[tuple[str, str]]:
    """Presets and ``scenario:variant`` pairs, in order, without duplicates."""
    pairs: list[tuple[str, str]] = []
    for item in spec.split(","):
        item = item.strip()
        if item in PRESETS:
            new = PRESETS[item]
        elif ":" in item and item.split(":")[0] in SCENARIOS and item.split(":")[1] in VARIANTS:
            new = [tuple(item.split(":", 1))]
        else:
            raise SystemExit(f"--configs: unknown {item!r} (presets {sorted(PRESETS)}, scenarios "
                             f"{sorted(SCENARIOS)}, variants {list(VARIANTS)})")
        pairs += [p for p in new if p not in pairs]
    return pairs


def auto_best(device: str) -> Variant:
    """``optimised``: the trainer's code path with the settings ``auto`` picks here (purer/runtime.py).

    On CPU: bf16 only where the CPU computes it natively, compile (and channels-last with it) where
    a C++ compiler exists; on CUDA: fp32 (bf16 was no faster there), channels-last and compile.
    A benchmark stands for a long run, so the run-length rule is not applied.
    """
    machine = describe_machine(device)
    if machine.device_type != "cpu":
        return BEST["cuda"]
    return replace(BEST["cpu"], precision="bf16" if machine.native_bf16 else "fp32",
                   channels_last=machine.can_compile, compile=machine.can_compile)


def machine_columns(variant: Variant) -> dict[str, object]:
    """The CPU model, its speed-relevant flags and the variant's settings, for every CSV row."""
    return {"cpu_model": cpu_model(), "cpu_flags": speed_flags(),
            "precision": variant.precision, "channels_last": variant.channels_last, "compile": variant.compile}


def variant_for(name: str, device: str) -> Variant:
    best = auto_best(device)
    derived = {
        "optimised": best,
        "optimised-loop": replace(best, batching="loop"),
        "optimised-vmap": replace(best, batching="vmap"),
        "optimised-fp32": replace(best, precision="fp32"),
        "optimised-bf16": replace(best, precision="bf16"),
        "optimised-no_compile": replace(best, compile=False),
        "optimised+compile": replace(best, compile=True),
        "optimised+subsample4": replace(best, teachers_per_step=4),
    }
    return derived[name] if name in derived else VARIANTS[name]


# --------------------------------------------------------------------------------------------
# Set-up: random teachers saved to a temporary folder, the trainer's Run and State
# --------------------------------------------------------------------------------------------


def make_entries(scenario: Scenario, folder: Path, device: str) -> list:
    """Random teachers (seeded), written as checkpoints under ``folder``; their manifest entries."""
    import torch

    from purer.models.backbones import build_backbone
    from purer.models.manifest import TeacherEntry

    classes = list(range(scenario.classes))
    blocks = [classes[i : i + 5] for i in range(0, len(classes), 5)][: scenario.teachers]
    entries = []
    for index, block in enumerate(blocks):
        arch = scenario.architectures[index % len(scenario.architectures)]
        kwargs = {"width": 32} if arch == "conv4" else {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(index)
            model = build_backbone(arch, len(block), 3, scenario.size, running_stats=True, **kwargs)
        path = folder / f"teacher_{index:03d}.pt"
        torch.save({"state_dict": model.state_dict()}, path)
        entries.append(TeacherEntry(
            index=index, architecture=arch, arch_kwargs=kwargs, checkpoint=path, dataset="bench",
            classes=tuple(block), local_classes=tuple(block), num_outputs=len(block), image_size=scenario.size,
            channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, val_accuracy=None,
        ))  # fmt: skip
    return entries


def make_run(scenario: Scenario, variant: Variant, entries: list, folder: Path, device: str):
    """The trainer's MetaTrainRun (method ``ei``, random init) for this pool; validation is never used."""
    from purer.config import ExperimentConfig, InversionConfig, LearnerConfig, MetaTrainConfig
    from purer.meta.init import MetaModelSpec
    from purer.meta.state import MetaTrainRun
    from purer.models.manifest import Manifest
    from purer.runtime import resolve_device

    inversion = InversionConfig(images_per_class=SPC, teacher_batching=variant.batching,
                                teachers_per_step=variant.teachers_per_step)
    mt = MetaTrainConfig(init="random", n_way=N_WAY, n_query=N_QUERY, meta_batch_size=META_BATCH,
                         learner=LearnerConfig(), inversion=inversion)
    config = ExperimentConfig(device=device, precision=variant.precision, channels_last=variant.channels_last,
                              compile=variant.compile, meta_train=mt)
    spec = MetaModelSpec("conv4", {"width": 32, "adaptive_pool": False}, N_WAY, scenario.size, 3)
    manifest = Manifest(folder / "manifest.yaml", (), tuple(entries))
    return MetaTrainRun(config, "ei", N_SHOT, 0, folder / "run", resolve_device(device), manifest, spec, None, None, {}, {})


class Bench:
    """One (scenario, variant): builds the trainer state and runs timed meta-iterations."""

    def __init__(self, scenario: Scenario, variant: Variant, device: str, folder: Path) -> None:
        import torch

        from purer.meta import engine, train

        self.torch, self.train = torch, engine
        self.scenario, self.variant, self.device = scenario, variant, torch.device(device)
        self.entries = make_entries(scenario, folder, device)
        self.run = make_run(scenario, variant, self.entries, folder, device)
        self.state = train.build_state(self.run)
        self.modules = list(self.state.pool.modules)
        self.plain_modules = list(self.modules)  # never compiled (FLOP counting)
        if variant.teacher_grads and not variant.reload:
            for module in self.modules:
                module.requires_grad_(True)
        self.images = sum(d.images.shape[0] for d in self.state.data.domains.values())

    # ------------------------------------------------------------- one iteration

    def iteration(self, index: int) -> tuple[float, float]:
        """Run meta-iteration ``index``; return (data-step seconds, meta-step seconds)."""
        start = time.perf_counter()
        if self.variant.trainer:
            terms, _ = self.train.data_step(self.run, self.state, index)
        else:
            terms = self.reference_data_step()
        self._sync()
        middle = time.perf_counter()
        if self.variant.trainer:
            loss, accuracy = self.train.meta_step(self.run, self.state)
        else:
            loss, accuracy = self.reference_meta_step()
        self.torch.stack([loss, accuracy, terms["total"]]).tolist()  # the iteration's host sync
        return middle - start, time.perf_counter() - middle

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    # ------------------------------------------------------------- the reference family

    def teacher(self, position: int):
        """A resident module, or (``reload``) one rebuilt from its checkpoint on disk."""
        if not self.variant.reload:
            return self.modules[position]
        from purer.models.manifest import load_teacher

        module = load_teacher(self.entries[position], self.device)
        if self.variant.teacher_grads:
            module.requires_grad_(True)
        if self.variant.channels_last:
            module.to(memory_format=self.torch.channels_last)
        return module

    def reference_loss(self, order: list[int]):
        """Σ_j w_j L_inv,j over ``order`` by a per-teacher loop, or one vmapped pool."""
        from purer.inversion.teacher_pool import ResidentPool

        v, st, config = self.variant, self.state, self.run.mt.inversion
        if v.batching == "vmap":
            pool, teachers = st.pool, order
            if v.reload:
                pool = ResidentPool(device=self.device, precision=v.precision,
                                    loaded=[(self.entries[p], self.teacher(p)) for p in order])
                teachers = None
                if v.teacher_grads:
                    for group in pool.groups:
                        for tensor in group.params.values():
                            tensor.requires_grad_(True)
            return pool.inversion_loss(st.data, st.generators["jitter"], config, teachers)[0]
        return self.loop_loss(order, config)

    def loop_loss(self, order: list[int], config):
        """The per-teacher loop of ``ResidentPool.reference_inversion_loss`` over ``self.teacher``."""
        from purer.inversion.losses import draw_shifts, inversion_terms, roll
        from purer.inversion.teacher_pool import teacher_weights
        from purer.models.backbones import record_bn_stats

        torch, v, st = self.torch, self.variant, self.state
        shifts = draw_shifts(len(order), config.jitter, st.generators["jitter"])
        weights = teacher_weights(len(order), config.teacher_weighting)
        tables = st.pool.tables(st.data)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if v.precision == "bf16" else None
        total = 0.0
        for j, position in enumerate(order):
            x = roll(tables.domains[position].images[tables.rows[position]], shifts[j])
            if v.compile:  # the pool's compiled per-teacher graph (resident modules)
                terms = st.pool.teacher_terms(position, x, tables.targets[position], config)
                total = total + weights[j] * terms["total"]
                continue
            module = self.teacher(position)
            if v.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with contextlib.ExitStack() as stack:
                if autocast is not None:
                    stack.enter_context(autocast)
                if v.authors_hooks:
                    logits, stats = authors_hooked_forward(module, x)
                else:
                    stats = stack.enter_context(record_bn_stats())
                    logits = module(x)
            total = total + weights[j] * inversion_terms(logits, tables.targets[position], x, stats, config)["total"]
        return total

    def reference_data_step(self) -> dict:
        st = self.state
        subset = self.train.teacher_subset(self.run, st)
        order = list(range(len(self.entries))) if subset is None else subset
        total = self.reference_loss(order)
        images = st.data.parameters()
        if self.variant.teacher_grads:  # gradients reach the teacher weights too (and are never used)
            total.backward()
        else:
            for image, grad in zip(images, self.torch.autograd.grad(total, images), strict=True):
                image.grad = grad
        st.data.optimizer.step()
        st.data.optimizer.zero_grad(set_to_none=True)
        return {"total": total.detach()}

    def reference_meta_step(self):
        from purer.meta.learners import episode_loss

        torch, st, mt = self.torch, self.state, self.run.mt
        st.optimizer.zero_grad(set_to_none=True)
        episodes = [st.data.sample_episode(N_WAY, N_SHOT, N_QUERY, st.generators["episodes"], detach=True)
                    for _ in range(META_BATCH)]
        if self.variant.episode_vmap:
            losses, accuracies = vmapped_episode_losses(st.meta_model, st.params, episodes, st.learner.inner_lr,
                                                        mt.learner.inner_steps)
            losses.sum().backward()
        else:
            losses, accuracies = [], []
            for episode in episodes:
                if self.variant.compile:
                    loss, accuracy = st.episode_fn(st.params, episode.support_x, episode.support_y, episode.query_x,
                                                   episode.query_y)
                else:
                    loss, accuracy = episode_loss(st.learner, st.meta_model, st.params, episode,
                                                  mt.learner.inner_steps)
                if not self.variant.summed_backward:
                    loss.backward()
                    loss = loss.detach()
                losses.append(loss)
                accuracies.append(accuracy)
            losses, accuracies = torch.stack(losses), torch.stack(accuracies)
            if self.variant.summed_backward:
                losses.sum().backward()
        st.optimizer.step()
        return losses.detach().mean(), accuracies.mean() * 100.0


def authors_hooked_forward(module, x):
    """The authors' teacher call (docs/method.md §8.2): deep-copy the teacher, register a forward hook
    on every BatchNorm layer that takes its input statistics as DeepInversion's hook does
    (``mean = x.mean([0, 2, 3])``, ``var = x.permute(1, 0, 2, 3).contiguous().view(C, -1).var(1,
    unbiased=False)``), run it. Returns (logits, [BNStats])."""
    import copy

    from torch import nn

    from purer.models.backbones import BNStats

    teacher, stats = copy.deepcopy(module), []

    def hook(layer, inputs, _output):
        x = inputs[0]
        var = x.permute(1, 0, 2, 3).contiguous().view(x.shape[1], -1).var(1, unbiased=False)
        stats.append(BNStats(x.mean(dim=(0, 2, 3)).float(), var.float(), layer.running_mean, layer.running_var))

    for layer in teacher.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.register_forward_hook(hook)
    return teacher(x), stats


def vmapped_episode_losses(model, params: dict, episodes: list, inner_lr: float, steps: int):
    """Second-order MAML outer losses [E] and accuracies [E] of E episodes in one ``vmap``.

    The inner gradient is ``torch.func.grad`` (create-graph semantics with respect to ``params``
    outside the transform), so ``losses.sum().backward()`` gives the same meta-gradient as the
    per-episode loop.
    """
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    def one(support_x, support_y, query_x, query_y):
        fast = dict(params)
        for _ in range(steps):
            inner = grad(lambda p: F.cross_entropy(functional_call(model, p, (support_x,)), support_y))(fast)
            fast = {k: fast[k] - inner_lr * inner[k] for k in fast}
        logits = functional_call(model, fast, (query_x,))
        return F.cross_entropy(logits, query_y), (logits.argmax(dim=1) == query_y).float().mean()

    stacked = [torch.stack([getattr(e, f) for e in episodes]) for f in ("support_x", "support_y", "query_x", "query_y")]
    losses, accuracies = vmap(one)(*stacked)
    return losses, accuracies.detach()


# --------------------------------------------------------------------------------------------
# FLOPs: useful work of a data step, and the practical rate of the same layers
# --------------------------------------------------------------------------------------------


def useful_flops(bench: Bench) -> float:
    """Conv/linear FLOPs of every teacher's forward + input-backward (what the step needs), fp32."""
    from torch.utils.flop_counter import FlopCounterMode

    from purer.inversion.teacher_pool import group_key

    st, counted, total = bench.state, {}, 0.0
    tables = st.pool.tables(st.data)
    for position, entry in enumerate(bench.entries):
        key = group_key(entry)
        if key not in counted:
            module = bench.plain_modules[position]
            x = tables.domains[position].images[tables.rows[position]].detach().float().contiguous()
            x.requires_grad_(True)
            with FlopCounterMode(display=False) as counter:
                module(x).sum().backward(inputs=[x])
            counted[key] = counter.get_total_flops()
        total += counted[key]
    return total


def meta_useful_flops(bench: Bench) -> float:
    """Conv/linear FLOPs of one meta step: ``META_BATCH`` second-order MAML episodes, forward and
    backward to the meta parameters (eager, uncompiled: the same work as every variant's step)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from purer.meta.learners import episode_loss_fn

    st, mt = bench.state, bench.run.mt
    fn = episode_loss_fn(st.learner, st.meta_model, mt.learner.inner_steps)
    generator = torch.Generator(device=st.generators["episodes"].device).manual_seed(0)  # not the benchmark's draws
    episode = st.data.sample_episode(mt.n_way, bench.run.n_shot, mt.n_query, generator, detach=True,
                                     size=bench.run.spec.input_size, channels=bench.run.spec.channels)
    params = list(st.params.values())
    with FlopCounterMode(display=False) as counter:
        loss, _ = fn(st.params, episode.support_x, episode.support_y, episode.query_x, episode.query_y)
        torch.autograd.grad(loss, params)
    return counter.get_total_flops() * mt.meta_batch_size


def conv_limits(args: argparse.Namespace) -> list[dict]:
    """Forward + input-backward GFLOP/s of Conv4 at a large batch (the practical limit).

    Two rows per (size, precision, memory format): ``layers: conv4 blocks`` is one whole teacher
    (convolutions, BatchNorm, ReLU, max-pool), ``layers: conv4 convs`` the four convolutions alone,
    each on an input of its shape, times summed.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from purer.models.backbones import build_backbone

    torch.set_num_threads(args.threads)
    repeats = min(60, max(6, 6 * 1024 // args.limit_batch))  # about the same work per timing at any batch
    rows = []
    for size in args.limit_sizes:
        for precision, channels_last in ((p, cl) for p in args.limit_precisions for cl in (False, True)):
            model = build_backbone("conv4", 5, 3, size, running_stats=True, width=32).to(args.device).eval()
            model.requires_grad_(False)
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            model.to(memory_format=fmt)
            bf16 = precision == "bf16"
            x = torch.randn(args.limit_batch, 3, size, size, device=args.device).contiguous(memory_format=fmt).requires_grad_(True)

            def step(model=model, x=x, bf16=bf16):
                with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = model(x)
                x.grad = None
                out.float().sum().backward(inputs=[x])  # the input gradient only

            with FlopCounterMode(display=False) as counter:
                step()
            gflop = counter.get_total_flops() / 1e9
            seconds = _repeat(step, 2, repeats, args.device)
            conv_seconds = 0.0
            side = size
            for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
                dtype = torch.bfloat16 if bf16 else torch.float32
                weight = conv.weight.detach().to(dtype).contiguous(memory_format=fmt)
                xl = torch.randn(args.limit_batch, conv.in_channels, side, side, device=args.device, dtype=dtype)
                xl = xl.contiguous(memory_format=fmt).requires_grad_(True)

                def conv_step(xl=xl, weight=weight):
                    out = F.conv2d(xl, weight, padding=1)
                    xl.grad = None
                    out.backward(torch.ones_like(out), inputs=[xl])

                conv_seconds += _repeat(conv_step, 2, repeats, args.device)
                side //= 2
            for layers, t in (("conv4 blocks", seconds), ("conv4 convs", conv_seconds)):
                rows.append({"size": size, "layers": layers, "precision": precision, "channels_last": channels_last,
                             "batch": args.limit_batch, "gflop": round(gflop, 2), "median_s": round(t, 4),
                             "gflops": round(gflop / t, 1)})
    rows += matmul_limits(args)
    return rows


def matmul_limits(args: argparse.Namespace) -> list[dict]:
    """GFLOP/s of a 2048³ matmul per ``--limit-precisions`` (the machine's arithmetic peak, roughly)."""
    import torch

    rows = []
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    for precision in args.limit_precisions:
        dtype = dtypes[precision]
        a = torch.randn(2048, 2048, device=args.device, dtype=dtype)
        seconds = _repeat(lambda a=a: a @ a, 2, 10, args.device)
        rows.append({"size": "", "layers": "matmul 2048", "precision": precision, "channels_last": "", "batch": "",
                     "gflop": round(2 * 2048**3 / 1e9, 2), "median_s": round(seconds, 4),
                     "gflops": round(2 * 2048**3 / 1e9 / seconds, 1)})
    return rows


def _repeat(fn, warmup: int, iters: int, device: str) -> float:
    import torch

    times = []
    for i in range(warmup + iters):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------
# Worker and driver
# --------------------------------------------------------------------------------------------


def time_config(args: argparse.Namespace, scenario_name: str, variant_name: str) -> dict:
    """Warm-up + timed meta-iterations of one configuration in this process."""
    import torch

    scenario, variant = SCENARIOS[scenario_name], variant_for(variant_name, args.device)
    threads = variant.threads or args.threads
    torch.set_num_threads(threads)
    if variant.retain_malloc:
        from purer.hostmem import retain_freed_memory

        if not retain_freed_memory():
            print("warning: retain_freed_memory refused (no glibc?)", file=sys.stderr)
    if variant.conv_fp32_precision is not None:
        torch.backends.mkldnn.conv.fp32_precision = variant.conv_fp32_precision
    cuda = args.device.startswith("cuda")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="purer-bench-") as tmp:
        bench = Bench(scenario, variant, args.device, Path(tmp))
        flops, meta_flops = useful_flops(bench), meta_useful_flops(bench)
        data_times, meta_times, first_s = [], [], None
        for index in range(1, args.warmup + args.iters + 1):
            data_s, meta_s = bench.iteration(index)
            first_s = data_s + meta_s if first_s is None else first_s  # includes any compilation
            if index > args.warmup:
                data_times.append(data_s)
                meta_times.append(meta_s)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024  # KiB on Linux
    used = variant.teachers_per_step or len(bench.entries)
    flops *= min(used, len(bench.entries)) / len(bench.entries)
    row = summarise(args, scenario_name, variant_name, bench, threads, data_times, meta_times, flops, used, peak,
                    load_before)
    meta_s = statistics.median(meta_times)
    return row | {"first_iter_s": round(first_s, 2), "meta_gflop": round(meta_flops / 1e9, 2),
                  "meta_gflops": round(meta_flops / 1e9 / meta_s, 1)}


def summarise(args, scenario_name, variant_name, bench, threads, data_times, meta_times, flops, used, peak,
              load_before) -> dict:
    totals = sorted(d + m for d, m in zip(data_times, meta_times, strict=True))
    median, data_s = statistics.median(totals), statistics.median(data_times)
    return {
        "device": args.device, "scenario": scenario_name, "variant": variant_name,
        "teachers": len(bench.entries), "architectures": "/".join(bench.scenario.architectures),
        "size": bench.scenario.size, "images": bench.images, "threads": threads, "iters": len(totals),
        "median_s": round(median, 4), "p10_s": round(totals[int(0.1 * (len(totals) - 1))], 4),
        "p90_s": round(totals[math.ceil(0.9 * (len(totals) - 1))], 4), "data_s": round(data_s, 4),
        "meta_s": round(statistics.median(meta_times), 4), "images_per_s": round(bench.images / median, 1),
        "data_s_per_teacher": round(data_s / used, 5), "useful_gflop": round(flops / 1e9, 2),
        "achieved_gflops": round(flops / 1e9 / data_s, 1), "peak_mem_mb": round(peak, 1),
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
    }  # fmt: skip


def run_worker(argv: list[str], pair: tuple[str, str] | str) -> dict | list | None:
    """Run one configuration (or the limits) in a fresh interpreter; parse its JSON line.

    A configuration that fails is reported on stderr and gives ``None``: the others still run.
    """
    name = pair if isinstance(pair, str) else ":".join(pair)
    command = [sys.executable, __file__, *argv, "--worker", name]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"configuration {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], reference: dict[str, float]) -> str:
    head = ("| scenario | variant | s/iter (median) | p10–p90 | data s | meta s | speed-up | images/s | "
            "data s/teacher | GFLOP/s | meta GFLOP/s | peak MB | load |")
    gpu = [describe_machine(r["device"]).name for r in rows[:1] if r["device"].startswith("cuda")]
    lines = [f"CPU: {cpu_model()}; flags: {machine_columns(REFERENCE)['cpu_flags']}", *(f"GPU: {g}" for g in gpu),
             "", head, "|" + "---|" * 13]
    for r in rows:
        ref = reference.get(r["scenario"])
        speedup = f"{ref / r['median_s']:.2f}×" if ref else "–"
        lines.append(
            f"| {r['scenario']} | {r['variant']} | {r['median_s']:.3f} | {r['p10_s']:.3f}–{r['p90_s']:.3f} | "
            f"{r['data_s']:.3f} | {r['meta_s']:.3f} | {speedup} | {r['images_per_s']:.0f} | "
            f"{r['data_s_per_teacher']:.4f} | {r['achieved_gflops']:.1f} | {r['meta_gflops']:.1f} | {r['peak_mem_mb']:.0f} | "
            f"{r['load_before']:.1f}/{r['load_after']:.1f} |"
        )
    return "\n".join(lines)


def report_limits(argv: list[str], args: argparse.Namespace, rows: list[dict], out: Path) -> None:
    limits = run_worker(argv, "limits")
    if not limits:
        raise SystemExit("the --limits measurement failed (see stderr)")
    write_csv(out.with_name(out.stem + "_limits.csv"), limits, list(limits[0]))
    print("\n| size | layers | precision | channels_last | batch | GFLOP | s (median) | GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in limits:
        print(f"| {r['size']} | {r['layers']} | {r['precision']} | {r['channels_last']} | {r['batch']} | "
              f"{r['gflop']} | {r['median_s']} | {r['gflops']} |")
    for layers in ("conv4 blocks", "conv4 convs"):
        sizes = {r["size"] for r in limits if r["layers"] == layers}
        best = {s: max(r["gflops"] for r in limits if r["size"] == s and r["layers"] == layers) for s in sizes}
        for r in rows:
            limit = best.get(r["size"])
            if limit and r["architectures"] == "conv4":
                print(f"{r['scenario']} {r['variant']}: {r['achieved_gflops']} GFLOP/s = "
                      f"{100 * r['achieved_gflops'] / limit:.0f}% of the {limit} GFLOP/s limit of {layers}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker == "limits":
        print(json.dumps(conv_limits(args)))
        return
    if args.worker is not None:
        print(json.dumps(time_config(args, *args.worker.split(":", 1))))
        return
    tag = args.tag or args.configs.replace(",", "+").replace(":", "-")
    out = args.out or Path(__file__).parent / "results" / f"meta_iteration_{tag}_{args.device.replace(':', '')}.csv"
    if args.limits_only:
        report_limits(argv, args, [], out)
        return
    rows, failed = [], []
    for pair in resolve_configs(args.configs):
        row = run_worker(argv, pair)
        if row is None:
            failed.append(":".join(pair))
            continue
        rows.append(row | machine_columns(variant_for(pair[1], args.device)))
        write_csv(out, rows, FIELDS)  # after every configuration: a stopped run keeps what it measured
        print(f"done {pair}: {rows[-1]['median_s']} s/iteration", file=sys.stderr, flush=True)
    if not rows:
        raise SystemExit(f"every configuration failed: {', '.join(failed)}")
    reference = {r["scenario"]: r["median_s"] for r in rows if r["variant"] == "reference"}
    print(f"device {args.device}, {args.threads} threads, median of {args.iters} meta-iterations after "
          f"{args.warmup} warm-up; torch {__import__('torch').__version__}")
    print(markdown(rows, reference))
    if args.limits:
        report_limits(argv, args, rows, out)
    if failed:
        print(f"failed (see stderr): {', '.join(failed)}")
    print(f"CSV: {out}")


if __name__ == "__main__":
    main()
