"""Runtime settings for the machine at hand: device, precision, memory format and compilation.

:func:`resolve_device` turns ``config.device`` into a ``torch.device``; :func:`require_compiler`
checks that ``compile: true`` can work on the device.

The top-level keys ``precision``, ``channels_last`` and ``compile`` each accept ``auto``. Every step
resolves them once, when it loads its config (:func:`resolve_speed_settings`), so the library only
ever sees concrete values and ``config.resolved.yaml`` records what ran. The rules follow the
measurements in benchmarks/README.md:

- ``precision: auto`` is ``bf16`` only where the hardware computes bf16 natively: a CUDA GPU that
  supports it, or a CPU with AVX-512 BF16 or AMX. Elsewhere (e.g. an AVX2-only CPU) bf16 is emulated
  and was 2.5x *slower* than fp32, so ``auto`` is ``fp32``.
- ``compile: auto`` is ``true`` when the run is long enough to repay the compilation (about 30-45 s
  on a 2-core CPU, paid once per job) and the device can compile: a C++ compiler on CPU, or CUDA.
- ``channels_last: auto`` follows ``compile``: on CPU the channels-last format paid off only inside
  compiled graphs (eager, it was slightly slower); on CUDA it is always on.

Results depend on these settings only up to floating-point rounding (benchmarks/accuracy_precision.py).
"""

from __future__ import annotations

import dataclasses
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
# ~0.3-0.7 s per CPU meta-iteration at the 13-teacher benchmark settings).
MIN_ITERATIONS_TO_COMPILE = 500
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


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


def resolve_speed_settings(config: ExperimentConfig, machine: Machine | None = None) -> ExperimentConfig:
    """``config`` with every ``auto`` speed setting replaced by the value chosen for ``machine``.

    Args:
        config: the loaded config; settings that are not ``auto`` are kept as written.
        machine: the device to choose for (default: probe ``config.device``).
    """
    auto = [key for key in ("precision", "channels_last", "compile") if getattr(config, key) == AUTO]
    if not auto:
        return config
    machine = machine or describe_machine(config.device)
    compile_ = config.compile
    if compile_ == AUTO:
        compile_ = machine.can_compile and config.meta_train.iterations >= MIN_ITERATIONS_TO_COMPILE
    chosen = {
        "precision": "bf16" if machine.native_bf16 else "fp32",
        "compile": compile_,
        "channels_last": machine.device_type == "cuda" or bool(compile_),
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
