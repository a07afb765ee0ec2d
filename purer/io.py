"""Atomic file output, checkpoints with clear errors, and run-directory naming.

Every output is written to a temporary file in the destination folder and renamed into place,
so a killed job never leaves a half-written file that a later step could read.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from purer.errors import CheckpointError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temporaries(folder: str | Path, prefix: str = "") -> int:
    """Delete the temporary files (``.<prefix>*.tmp``) that killed writers left in ``folder``.

    Only for a folder, or a ``prefix`` of file names, that one process writes at a time: a live
    writer's temporary file would be removed too. Returns the number of files removed.
    """
    stale = sorted(Path(folder).glob(f".{prefix}*.tmp")) if Path(folder).is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return len(stale)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_yaml(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as block-style YAML."""
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON record as a line (used for per-iteration curves; flushed at once)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def save_torch(path: str | Path, obj: Any) -> None:
    """Atomically ``torch.save`` ``obj`` to ``path`` (byte-identical for identical ``obj``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)  # a file object: the archive's inner folder is not named after ``tmp``


def load_torch(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` on CPU with one clear error for a missing, truncated or corrupt file.

    Args:
        path: the file to read.
        what: a noun for the message, e.g. ``"teacher checkpoint"``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for truncated or foreign files
        detail = (str(exc).strip().splitlines() or [""])[0].split(". ")[0]  # not torch's advice paragraph
        raise CheckpointError(
            f"{what} {path} is truncated or not a torch file ({type(exc).__name__}: {detail})"
        ) from None


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """Read a YAML file with one clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{what} {path} is not valid YAML: {exc}") from None
