"""Runtime settings for the machine at hand: device, precision, memory format and compilation.

:func:`resolve_device` turns ``config.device`` into a ``torch.device``; :func:`require_compiler`
checks that ``compile: true`` can work on the device.

The top-level keys ``precision``, ``channels_last`` and ``compile`` each accept ``auto``. Every step
resolves them once, when it loads its config (:func:`resolve_speed_settings`), so the library only
ever sees concrete values and ``config.resolved.yaml`` records what ran. The rules follow the
measurements in benchmarks/README.md:

- ``precision: auto`` is ``bf16`` only where the hardware computes bf16 natively and it paid off
  there. On a CPU that means AVX-512 BF16 or AMX (elsewhere, e.g. an AVX2-only CPU, bf16 is emulated and
  was 2.5x *slower* than fp32). On a CUDA GPU it is teacher pre-training only (``step="pool"``): on
  an H200 the meta-iteration's small Conv4 kernels ran no faster in bf16 (compiled; 20% slower
  eager), so meta-training and meta-testing stay in the exact fp32, while ResNet-18 teachers at
  84 px trained 27% faster in bf16.
- ``compile: auto`` is ``true`` when the run is long enough to repay the compilation (about 30-45 s
  on a 2-core CPU for the first job; later jobs with the same shapes load most of it from the shared
  compile cache below, about 7x cheaper) and the device can compile: a C++ compiler on CPU, or CUDA.
  A meta-test job (``step="meta_test"``) compiles when its meta-training would, or when it scores
  300 or more test episodes: its own graphs pay off within one such test.
- ``channels_last: auto`` follows ``compile``: on CPU the channels-last format paid off only inside
  compiled graphs (eager, it was slightly slower); on CUDA it is always on. Teacher pre-training
  (``step="pool"``) is the exception: its eager ``nn.Module`` teachers train faster channels-last on
  CPU too (benchmarks/README.md, "Pipeline wall time"), so there ``auto`` is always on.

Results depend on these settings only up to floating-point rounding (benchmarks/accuracy_precision.py).

Every step also calls :func:`configure_process` before it computes:

- **Threads.** torch's intra-op threads (and inductor's compile workers) follow the job's thread count:
  ``$PURER_THREADS`` if set, else ``$OMP_NUM_THREADS`` (Snakemake sets it to the rule's ``threads``,
  and a SLURM profile's ``set-threads``), else torch's default. So ``snakemake --cores 2`` never runs
  more busy threads than cores, compilation included.
- **Compile cache.** TorchInductor's on-disk caches (FX graph, AOT autograd and kernel caches) live in one
  folder per machine and user, shared by every job: ``$TORCHINDUCTOR_CACHE_DIR`` if set, else
  ``$XDG_CACHE_HOME/purer/torchinductor/<torch version>-<CPU hash>`` (``~/.cache/...``; one folder per
  kind of CPU, so cluster nodes with a shared home never load kernels built for another CPU). The first job with given
  shapes pays the compilation; later jobs (the other teachers, shots, seeds, runs) load the compiled
  code and pay only tracing (benchmarks/README.md). torch's own default (``/tmp/torchinductor_<user>``)
  is often private to a job on clusters and wiped on reboots.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from purer.config import ExperimentConfig
from purer.errors import ConfigError

log = logging.getLogger(__name__)

AUTO = "auto"
# compile: auto only pays off past this many meta-iterations (~30-45 s of compilation, saving
# ~0.3-0.7 s per CPU meta-iteration at the 13-teacher benchmark settings). Measured to pay at 300 on
# a cold compile cache, 1- and 5-shot (benchmarks/README.md, "Compile cache shared by all jobs").
MIN_ITERATIONS_TO_COMPILE = 300
# ... and a meta-test job past this many test episodes (its own graphs: the plain episode and ICFIL's
# inversion step; ~20-40 s of compilation against 0.3-0.4 s saved per ICFIL episode and 2.7x per
# plain episode, which best-on-test scores on every snapshot).
MIN_EPISODES_TO_COMPILE = 300
META_TEST_STEP = "meta_test"
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
POOL_STEP = "pool"  # teacher pre-training: eager teachers, channels-last pays off on CPU too
THREADS_ENV = "PURER_THREADS"  # the job's threads; else OMP_NUM_THREADS (set by Snakemake from `threads`)
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # torch's own variable; honoured when set


@dataclass(frozen=True)
class Machine:
    """What the speed rules need to know about the device a step runs on."""

    device_type: str  # "cpu" or "cuda"
    native_bf16: bool  # bf16 arithmetic in hardware (not emulated)
    can_compile: bool  # torch.compile can build kernels (C++ compiler on CPU; CUDA)
    name: str  # CPU model or GPU name, for the log


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo``, or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def has_cxx_compiler() -> bool:
    """A C++ compiler on PATH (``$CXX``, ``g++``, ``c++`` or ``clang++``): what inductor needs on CPU."""
    return any(name and shutil.which(name) for name in (os.environ.get("CXX", ""), "g++", "c++", "clang++"))


def describe_machine(device: str) -> Machine:
    """Probe the device named by the config's ``device`` setting."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return Machine("cuda", torch.cuda.is_bf16_supported(including_emulation=False), True,
                       torch.cuda.get_device_name(index))
    if torch.device(device).type == "cuda":  # no GPU here: the config is checked, nothing will run on it
        return Machine("cuda", False, False, "CUDA device (not available here)")
    return Machine("cpu", bool(NATIVE_BF16_CPU_FLAGS & cpu_flags()), has_cxx_compiler(), cpu_model())


def resolve_speed_settings(
    config: ExperimentConfig, machine: Machine | None = None, step: str | None = None
) -> ExperimentConfig:
    """``config`` with every ``auto`` speed setting replaced by the value chosen for ``machine``.

    Args:
        config: the loaded config; settings that are not ``auto`` are kept as written.
        machine: the device to choose for (default: probe ``config.device``).
        step: the step that will run (``"pool"``: teacher pre-training, channels-last on every device;
            ``"meta_test"``: compiles for a long test as well as for a long meta-training).
    """
    auto = [key for key in ("precision", "channels_last", "compile") if getattr(config, key) == AUTO]
    if not auto:
        return config
    machine = machine or describe_machine(config.device)
    compile_ = config.compile
    if compile_ == AUTO:
        long_run = config.meta_train.iterations >= MIN_ITERATIONS_TO_COMPILE or (
            step == META_TEST_STEP and config.meta_test.episodes >= MIN_EPISODES_TO_COMPILE)
        compile_ = machine.can_compile and long_run
    bf16_pays = machine.native_bf16 and (machine.device_type == "cpu" or step == POOL_STEP)
    chosen = {
        "precision": "bf16" if bf16_pays else "fp32",
        "compile": compile_,
        "channels_last": machine.device_type == "cuda" or bool(compile_) or step == POOL_STEP,
    }
    resolved = dataclasses.replace(config, **{key: chosen[key] for key in auto})
    log.info(
        "speed settings for %s (%s bf16): %s",
        machine.name,
        "native" if machine.native_bf16 else "no native",
        ", ".join(f"{key}: auto -> {getattr(resolved, key)}" for key in auto),
    )
    return resolved


def resolve_device(name: str) -> torch.device:
    """``config.device`` as a ``torch.device``; ConfigError if CUDA is asked for but absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available (use device: cpu)")
    return device


def require_compiler(compile: bool, device: torch.device) -> None:
    """``compile: true`` on CPU needs a C++ compiler (torch's inductor builds kernels with it).

    Raises:
        ConfigError: naming the key, when no ``$CXX``, ``g++``, ``c++`` or ``clang++`` is on PATH.
    """
    if not compile or torch.device(device).type != "cpu":
        return
    candidates = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
    if not any(name and shutil.which(name) for name in candidates):
        raise ConfigError("compile: true needs a C++ compiler on CPU (none of $CXX, g++, c++, clang++ is on PATH); "
                          "install one or set compile: false")


# --------------------------------------------------------------------------------------------
# Threads and the compile cache (per process, before any computation)
# --------------------------------------------------------------------------------------------


def job_threads(environ: dict[str, str] | None = None) -> int | None:
    """The job's thread count: ``$PURER_THREADS``, else ``$OMP_NUM_THREADS``; None when neither is set.

    Raises:
        ConfigError: a set variable that is not a whole number of at least 1.
    """
    environ = os.environ if environ is None else environ
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = environ.get(name, "").strip()
        if not value:
            continue
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"environment variable {name}: expected a whole number of threads, at least 1, got {value!r}")
        return int(value)
    return None


def machine_tag() -> str:
    """``<torch version>-<12 hex digits>``: the digits hash the CPU model and feature flags.

    Compiled CPU kernels are built with ``-march=native``; a home folder shared by cluster nodes of
    different CPUs must not hand one node's kernels to another, so each kind of CPU (and torch
    version) gets its own cache folder, while identical nodes share one.
    """
    digest = hashlib.sha256("\n".join([cpu_model(), *sorted(cpu_flags())]).encode()).hexdigest()[:12]
    return f"{torch.__version__.replace('+', '_')}-{digest}"


def compile_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """The machine-wide folder of TorchInductor's caches: ``$TORCHINDUCTOR_CACHE_DIR`` as given, else
    ``$XDG_CACHE_HOME/purer/torchinductor/<machine_tag()>`` (``~/.cache/...`` without XDG_CACHE_HOME)."""
    environ = os.environ if environ is None else environ
    if environ.get(INDUCTOR_CACHE_ENV):
        return Path(environ[INDUCTOR_CACHE_ENV]).expanduser()
    base = Path(environ["XDG_CACHE_HOME"]).expanduser() if environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "purer" / "torchinductor" / machine_tag()


def configure_process(config: ExperimentConfig | None = None) -> tuple[int, Path]:
    """Set torch's threads from the job's (:func:`job_threads`) and point the compile cache at
    :func:`compile_cache_dir`; called by every step once, before it computes.

    The cache folder goes into ``$TORCHINDUCTOR_CACHE_DIR`` (read by inductor whenever it opens its
    caches) and is created on first use by inductor. A cache inside ``config.results_dir`` is refused:
    compiled code is not a result.

    Returns:
        (torch's intra-op threads now, the cache folder).

    Raises:
        ConfigError: a bad thread variable, or a cache folder inside the results folder.
    """
    threads = job_threads()
    # first: importing inductor's config below fills in torch's default cache folder when none is set
    cache = compile_cache_dir()
    if config is not None:
        results = Path(config.results_dir).expanduser().resolve()
        if cache.resolve() == results or results in cache.resolve().parents:
            raise ConfigError(f"{INDUCTOR_CACHE_ENV}={cache} is inside results_dir ({config.results_dir}); "
                              "compiled code is not a result: choose a folder outside it")
    os.environ[INDUCTOR_CACHE_ENV] = str(cache)
    if threads is not None:
        torch.set_num_threads(threads)
        # inductor compiles in a pool of worker processes, one per CPU by default: as many as the job's threads
        os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = str(threads)
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = threads
    log.debug("threads: %d (%s); compile cache: %s", torch.get_num_threads(),
             "job" if threads is not None else "torch default", cache)
    return torch.get_num_threads(), cache
