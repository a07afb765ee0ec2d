"""The resident teacher pool and the inversion loss of all teachers (docs/method.md §2.3, §2.7, §8.1-8.4).

Every teacher is loaded once, frozen and in eval mode, and stays on the device. Teachers that share
(architecture, arch_kwargs, num_outputs, image_size, channels, block length) form a *group*: their
parameters and buffers are stacked with ``torch.func.stack_module_state`` and one
``vmap(functional_call)`` runs the whole group. The BatchNorm statistics are recorded by
:func:`purer.models.backbones.record_bn_stats` *inside* the vmapped function, which also computes the
loss terms, so only per-teacher terms [T] leave the vmap. A short last block (fewer classes) has
another batch size, hence its own group.

Jitter: one shift per teacher per call (as the reference), drawn for all teachers up front with
:func:`purer.inversion.losses.draw_shifts` in the order of the ``teachers`` argument. Each teacher's
slice is rolled before the vmap (one gather of all the group's rows, one roll per teacher, one
stack). :meth:`ResidentPool.reference_inversion_loss` is the plain per-teacher loop over the
resident modules with the *same* shifts, so both are equal up to float rounding.

Teacher weighting (docs/method.md §2.7): ``equal`` sums the teachers' totals; ``triangular``
reproduces the reference code, teacher at position j of K (in the ``teachers`` order) weighs K − j.
``teachers`` (a subset, PURER-Plus ``teachers_per_step``) is drawn by the caller.

Precision and memory format: see :class:`ResidentPool` (bf16 is an explicit cast under ``vmap``,
autocast in the loop; channels-last applies to the loop only).

Compilation (``compile=True``, the loop only): each group gets one ``torch.compile``-d graph of a
teacher's whole loss (forward with BN-statistic recording, the four terms), called with that
teacher's parameters and buffers through ``functional_call``; its backward is compiled with it. On
CPU this fuses the memory-bound work around the convolutions (BatchNorm, ReLU, pooling, statistics
and their backward), which is most of the data step (benchmarks/README.md).

The stacked tensors are the storage: after stacking, each resident module's parameters and buffers
are re-pointed to views of them, so the pool is held in memory once.
"""

from __future__ import annotations

import copy
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from purer.compiler import compile_graph
from purer.config import InversionConfig
from purer.errors import ConfigError
from purer.inversion.dataset import Domain, DynamicDataset
from purer.inversion.losses import TERM_NAMES, draw_shifts, inversion_terms, roll
from purer.models.backbones import record_bn_stats
from purer.models.manifest import Manifest, TeacherEntry, load_pool

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
Terms = dict[str, torch.Tensor]


@dataclass
class _Group:
    """Teachers run by one vmap.

    Attributes:
        members: positions in the pool.
        base: the shared module structure (on the 'meta' device; weights come from the stack).
        params, buffers: stacked [T, ...] (the modules' storage).
        forward_params, forward_buffers: what the vmap uses: ``params``/``buffers``, or for bf16
            copies with every floating tensor in bf16 (autocast does not reach inside ``vmap``,
            and batch norm under ``vmap`` needs one dtype, so the whole forward is cast).
        slot: pool position -> index in the stack.
    """

    members: list[int]
    base: nn.Module
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    forward_params: dict[str, torch.Tensor]
    forward_buffers: dict[str, torch.Tensor]
    slot: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Tables:
    """Per-data index tables: each teacher's domain, rows [B], relative targets [B], and its rows as
    a (start, length) span when they are consecutive (class-major data: a teacher's block of classes)."""

    domains: list[Domain]
    rows: list[torch.Tensor]
    targets: list[torch.Tensor]
    spans: list[tuple[int, int] | None]


def group_key(entry: TeacherEntry) -> tuple:
    """Teachers with equal keys share a vmap (same module structure and batch size)."""
    kwargs = tuple(sorted((str(k), repr(v)) for k, v in dict(entry.arch_kwargs).items()))
    return (entry.architecture, kwargs, int(entry.num_outputs), int(entry.image_size), int(entry.channels), len(entry.classes))


def teacher_weights(n: int, weighting: str) -> list[float]:
    """Weights of the teachers at positions 0..n−1: all 1 (``equal``) or n − j (``triangular``)."""
    if weighting == "equal":
        return [1.0] * n
    if weighting == "triangular":
        return [float(n - j) for j in range(n)]
    raise ConfigError(f"meta_train.inversion.teacher_weighting: unknown {weighting!r} (valid: ['equal', 'triangular'])")


class ResidentPool:
    """All teachers of a pool, resident on ``device``, and their inversion loss.

    Args:
        manifest: a :class:`purer.models.manifest.Manifest`; loaded with
            :func:`purer.models.manifest.load_pool` unless ``loaded`` is given.
        device: where the teachers live.
        precision: ``"fp32"`` or ``"bf16"``. With bf16 the loop runs the teacher forwards under
            autocast; the vmapped groups (autocast does not reach inside ``vmap``) run with bf16
            copies of every floating weight and buffer, so their BN term matches bf16-rounded
            running statistics. The loss terms are computed in fp32 either way.
        channels_last: run the per-teacher loop in channels-last memory format (inputs and conv
            weights, which then stop sharing the stacked storage). Vmapped groups stay contiguous:
            batch norm under ``vmap`` supports no other format (on CUDA: "NYI: querying
            is_contiguous inside of vmap").
        loaded: already loaded ``(entry, module)`` pairs (frozen, eval mode), instead of loading.
        compile: run each teacher of the per-teacher loop through its group's compiled loss graph
            (``torch.compile``, built at the first call; the vmapped path stays eager).

    Attributes:
        teachers: the teacher entries, in pool order.
        modules: the frozen teacher modules, in pool order.
    """

    def __init__(
        self,
        manifest: Manifest | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
        loaded: Sequence[tuple[TeacherEntry, nn.Module]] | None = None,
        compile: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"precision: unknown {precision!r} (valid: {list(PRECISIONS)})")
        if loaded is None:
            loaded = load_pool(manifest, device)
        if not loaded:
            raise ConfigError("the teacher pool is empty")
        self.device = torch.device(device)
        self.precision = precision
        self.channels_last = channels_last
        self.teachers = [entry for entry, _ in loaded]
        self.modules = [module.to(self.device).eval().requires_grad_(False) for _, module in loaded]
        self.groups = self._build_groups()
        if channels_last:
            for module in self.modules:
                module.to(memory_format=torch.channels_last)
        self.compile = compile
        self._compiled: dict[tuple[int, InversionConfig], Any] = {}
        self._tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        logger.info("resident pool: %d teachers in %d vmapped groups", self.n_teachers, len(self.groups))

    @property
    def n_teachers(self) -> int:
        return len(self.teachers)

    # ---------------------------------------------------------------- set-up

    def _build_groups(self) -> list[_Group]:
        members: dict[tuple, list[int]] = {}
        for position, entry in enumerate(self.teachers):
            members.setdefault(group_key(entry), []).append(position)
        return [self._stack(positions) for positions in members.values()]

    def _stack(self, positions: list[int]) -> _Group:
        """Stack a group's weights; re-point the modules to views of the stack (held once)."""
        modules = [self.modules[p] for p in positions]
        params, buffers = stack_module_state(modules)
        base = copy.deepcopy(modules[0]).to("meta")
        for t, module in enumerate(modules):
            _share_storage(module, params, buffers, t)
        forward = (params, buffers)
        if self.precision == "bf16":
            forward = tuple({k: _to_bf16(v) for k, v in d.items()} for d in forward)
        return _Group(positions, base, params, buffers, *forward, {p: t for t, p in enumerate(positions)})

    def tables(self, data: DynamicDataset) -> _Tables:
        """Index tables of ``data`` for every teacher (built once per data object)."""
        tables = self._tables.get(data)
        if tables is None:
            domains, rows, targets = [], [], []
            for entry in self.teachers:
                domain = data.domain_of(entry.classes)
                domains.append(domain)
                rows.append(domain.rows(entry.classes))
                spc = domain.images_per_class
                targets.append(torch.arange(len(entry.classes), device=domain.device).repeat_interleave(spc))
            tables = _Tables(domains, rows, targets, [_span(r) for r in rows])  # one host read, once
            self._tables[data] = tables
        return tables

    # ---------------------------------------------------------------- shared pieces

    def _order(self, teachers: Sequence[int] | None) -> list[int]:
        order = list(range(self.n_teachers)) if teachers is None else [int(t) for t in teachers]
        if not order or len(set(order)) != len(order) or not all(0 <= t < self.n_teachers for t in order):
            raise ConfigError(f"teachers: expected distinct positions in 0..{self.n_teachers - 1}, got {list(order)}")
        return order

    def _jittered(self, tables: _Tables, positions: list[int], shifts: list[tuple[int, int]]) -> torch.Tensor:
        """The teachers' slices, each rolled by its own shift, stacked: [T, B, C, H, W]."""
        images = tables.domains[positions[0]].images
        rows = torch.stack([tables.rows[p] for p in positions])
        batch = images[rows.reshape(-1)].view(len(positions), rows.shape[1], *images.shape[1:])
        return torch.stack([roll(batch[t], shift) for t, shift in enumerate(shifts)])

    # ---------------------------------------------------------------- the loss

    def inversion_loss(
        self,
        data: DynamicDataset,
        generator: torch.Generator,
        config: InversionConfig,
        teachers: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, Terms]:
        """Σ_j w_j · L_inv,j over the teachers, vmapped per group (docs/method.md §2.3, §2.7).

        Args:
            data: the dynamic dataset (gradients flow to its images only).
            generator: draws one jitter shift per teacher.
            config: loss weights, ``jitter`` and ``teacher_weighting``.
            teachers: pool positions to use, in weighting order (None = all, pool order).

        Returns:
            The total (0-d, differentiable w.r.t. the images) and detached logging terms:
            ``ce``, ``tv``, ``bn``, ``l2`` averaged over the teachers, ``total`` = the total (0-d),
            and ``ce_per_teacher`` [n_teachers] (pool order; NaN for a teacher not in ``teachers``).
        """
        order = self._order(teachers)
        shifts = draw_shifts(len(order), config.jitter, generator)
        weights = teacher_weights(len(order), config.teacher_weighting)
        tables = self.tables(data)
        sums = dict.fromkeys(TERM_NAMES, 0.0)
        total = 0.0
        positions, ces = [], []
        for group in self.groups:
            picked = [j for j, p in enumerate(order) if p in group.slot]
            if not picked:
                continue
            terms = self._group_terms(group, tables, [order[j] for j in picked], [shifts[j] for j in picked], config)
            w = _to_device([weights[j] for j in picked], torch.float32, terms["total"].device)
            total = total + (w * terms["total"]).sum()
            sums = {k: sums[k] + terms[k].detach().sum() for k in TERM_NAMES}
            positions += [order[j] for j in picked]
            ces.append(terms["ce"].detach())
        return total, _log_terms(sums, total, len(order)) | {"ce_per_teacher": self._per_teacher(positions, ces)}

    def _group_terms(
        self,
        group: _Group,
        tables: _Tables,
        positions: list[int],
        shifts: list[tuple[int, int]],
        config: InversionConfig,
    ) -> Terms:
        """Per-teacher terms [T] of ``positions`` (all in ``group``) from one vmap."""
        x = self._jittered(tables, positions, shifts)
        targets = torch.stack([tables.targets[p] for p in positions])
        params, buffers = group.forward_params, group.forward_buffers
        if positions != group.members:  # a subset, or another order: gather the stacked weights
            index = _to_device([group.slot[p] for p in positions], torch.int64, self.device)
            params = {k: v.index_select(0, index) for k, v in params.items()}
            buffers = {k: v.index_select(0, index) for k, v in buffers.items()}
        dtype = torch.bfloat16 if self.precision == "bf16" else None
        fn = partial(_teacher_terms, group.base, config, dtype)
        return vmap(fn)(params, buffers, x, targets)

    def reference_inversion_loss(
        self,
        data: DynamicDataset,
        generator: torch.Generator,
        config: InversionConfig,
        teachers: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor, Terms]:
        """The same loss as :meth:`inversion_loss` from a plain per-teacher loop (the oracle).

        Draws the same shifts from ``generator`` and uses the resident modules directly.
        """
        order = self._order(teachers)
        shifts = draw_shifts(len(order), config.jitter, generator)
        weights = teacher_weights(len(order), config.teacher_weighting)
        tables = self.tables(data)
        slices = _gathered(tables, order)
        sums = dict.fromkeys(TERM_NAMES, 0.0)
        total = 0.0
        ces = []
        for j, position in enumerate(order):
            terms = self.teacher_terms(position, roll(slices[j], shifts[j]), tables.targets[position], config)
            total = total + weights[j] * terms["total"]
            sums = {k: sums[k] + terms[k].detach() for k in TERM_NAMES}
            ces.append(terms["ce"].detach().reshape(1))
        return total, _log_terms(sums, total, len(order)) | {"ce_per_teacher": self._per_teacher(order, ces)}

    def _per_teacher(self, positions: list[int], values: list[torch.Tensor]) -> torch.Tensor:
        """float32 [n_teachers] in pool order: ``values`` (concatenated) at ``positions``, NaN elsewhere."""
        flat = torch.cat(values).float()
        if positions == list(range(self.n_teachers)):
            return flat
        out = torch.full((self.n_teachers,), float("nan"), device=flat.device)
        return out.index_copy(0, _to_device(positions, torch.int64, flat.device), flat)

    def teacher_terms(
        self, position: int, x: torch.Tensor, targets: torch.Tensor, config: InversionConfig
    ) -> Terms:
        """One teacher's inversion terms on its jittered slice x [B, C, H, W] (targets [B]).

        Eager, or (``compile``) through the compiled graph of the teacher's group.
        """
        if not self.compile:
            return _loop_terms(self.modules[position], config, self.precision, self.channels_last, x, targets)
        slot = next(index for index, group in enumerate(self.groups) if position in group.slot)
        key = (slot, config)
        if key not in self._compiled:
            base = self.modules[self.groups[slot].members[0]]
            self._compiled[key] = compile_graph(
                partial(_functional_loop_terms, base, config, self.precision, self.channels_last)
            )
            logger.info("compiling the inversion loss of teacher group %d (once per run)", slot)
        module = self.modules[position]
        return self._compiled[key](dict(module.named_parameters()), dict(module.named_buffers()), x, targets)


def _loop_terms(
    forward: Any,
    config: InversionConfig,
    precision: str,
    channels_last: bool,
    x: torch.Tensor,
    targets: torch.Tensor,
) -> Terms:
    """One teacher's terms in the loop: ``forward`` (a module or a functional call) under autocast
    (bf16) and channels-last as configured, BN statistics recorded; the image terms use x itself."""
    x_in = x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
    with (
        record_bn_stats() as stats,
        torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"),
    ):
        logits = forward(x_in)
    return inversion_terms(logits, targets, x, stats, config)


def _functional_loop_terms(
    base: nn.Module,
    config: InversionConfig,
    precision: str,
    channels_last: bool,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    x: torch.Tensor,
    targets: torch.Tensor,
) -> Terms:
    """:func:`_loop_terms` of ``base`` run with a teacher's ``params``/``buffers`` (what is compiled)."""
    return _loop_terms(
        partial(functional_call, base, (params, buffers)), config, precision, channels_last, x, targets
    )


def _span(rows: torch.Tensor) -> tuple[int, int] | None:
    """(start, length) if ``rows`` [B] is start, start+1, ..., else None."""
    values = rows.tolist()
    return (values[0], len(values)) if values == list(range(values[0], values[0] + len(values))) else None


def _gathered(tables: _Tables, order: list[int]) -> list[torch.Tensor]:
    """The slices [B_j, C, H, W] of the teachers in ``order``, from one gather per domain.

    Same values as gathering each teacher's rows separately; the backward then fills one zero
    gradient of a domain's image tensor (and accumulates into it once) instead of one per teacher.
    When the picked teachers' spans follow each other (all teachers of class-major data, in pool
    order), the slices are views of one narrow instead: no gather, and a cheap backward (the
    accumulating scatter of a gather's backward is the slower kernel on CPU).
    """
    slices: list[torch.Tensor | None] = [None] * len(order)
    by_domain: dict[int, list[int]] = {}
    for j, position in enumerate(order):
        by_domain.setdefault(id(tables.domains[position]), []).append(j)
    for picked in by_domain.values():
        rows = [tables.rows[order[j]] for j in picked]
        images = tables.domains[order[picked[0]]].images
        spans = [tables.spans[order[j]] for j in picked]
        if all(spans) and all(a[0] + a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False)):
            parts = images.narrow(0, spans[0][0], sum(length for _, length in spans)).split([n for _, n in spans])
        else:
            parts = images[torch.cat(rows)].split([len(r) for r in rows])
        for j, part in zip(picked, parts, strict=True):
            slices[j] = part
    return slices


def _teacher_terms(
    base: nn.Module,
    config: InversionConfig,
    dtype: torch.dtype | None,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    x: torch.Tensor,
    targets: torch.Tensor,
) -> Terms:
    """One teacher's terms (runs inside vmap): forward with recorded BN statistics, then the loss.

    ``dtype`` (bf16) casts the input of the forward (no autocast inside vmap); the terms use the
    fp32 ``x``. The same pieces as the loop's :func:`_loop_terms`, without autocast or formats.
    """

    def forward(x_in: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (params, buffers), (x_in if dtype is None else x_in.to(dtype),))

    return _loop_terms(forward, config, "fp32", False, x, targets)


def _to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host list as a tensor on ``device`` without a host-device synchronisation.

    ``torch.tensor(values, device="cuda")`` waits for the device's queue (a blocking copy);
    a non-blocking copy of a host tensor only stages it, so the iteration keeps its one sync.
    """
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def _to_bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16) if t.is_floating_point() else t


def _log_terms(sums: dict[str, Any], total: torch.Tensor, n: int) -> Terms:
    terms = {k: torch.as_tensor(v).detach() / n for k, v in sums.items()}
    terms["total"] = total.detach()
    return terms


def _share_storage(module: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], t: int) -> None:
    """Point ``module``'s parameters and buffers at slice ``t`` of the stacked tensors."""
    for name, param in module.named_parameters():
        param.data = params[name][t]
    for name, _ in module.named_buffers():
        owner, _, attr = name.rpartition(".")
        setattr(module.get_submodule(owner) if owner else module, attr, buffers[name][t])
