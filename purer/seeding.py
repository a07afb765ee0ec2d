"""Deterministic seeding.

Library code never touches global RNG state: every random draw takes an explicit
``torch.Generator`` derived from ``(seed, stage, index)`` with :func:`derive_seed`, so re-running
one stage (or one teacher) never shifts the random stream of any other.
"""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch


def derive_seed(seed: int, *names: object) -> int:
    """Derive a 63-bit seed from a base seed and a path of names.

    Args:
        seed: the base seed of the run.
        *names: stage names and indices, e.g. ``("pool", 3)``.

    Returns:
        A non-negative int, stable across platforms and Python versions (SHA-256 based).
    """
    key = "/".join([str(int(seed))] + [str(n) for n in names]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def make_generator(seed: int, *names: object, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``derive_seed(seed, *names)``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, *names))
    return generator


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch once in a CLI entry point (library code uses generators)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
