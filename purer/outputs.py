"""Output folders: recognised as purer's before anything is written, and written by one process at a time.

A folder is a *purer output folder* when it holds the marker file ``.purer-output`` (written by
:func:`claim_output` before any other output), the lock file ``.purer.lock``, or, for folders
written before the marker existed, an ``env.json`` with a ``purer`` version (a pool folder also
when it holds teacher checkpoints or a manifest: people assemble pools by hand). A step refuses to
write into a non-empty folder that is none of these, and into a path that is a file: ``--out``
never deletes or overwrites what purer did not write.

:func:`lock_folder` (and :func:`claim_output`) holds an exclusive ``fcntl.flock`` on a lock file in
the folder for the life of the step (one per run folder; one per teacher in a pool folder, so
parallel teacher jobs share it). A second writer fails at once, naming the folder and the holder's
pid. The kernel releases the lock when its process ends, however it ends, so the lock of a killed
job never blocks a rerun; lock files are left in place (removing one would race with a new
holder). Where the file system does not support ``flock`` the step logs a warning and runs
unlocked (docs/errors.md, "One writer per folder").
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from purer.errors import OutputError
from purer.io import write_error, write_text

logger = logging.getLogger(__name__)

MARKER = ".purer-output"
LOCK = ".purer.lock"
POOL_FILES = ("teacher_*.pt", "manifest.yaml", ".teacher_*.lock")  # a pool folder assembled by hand, or one a teacher job has just claimed
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}


def is_purer_output(folder: str | Path, known: tuple[str, ...] = ()) -> bool:
    """``folder`` holds the marker, the lock file, a file matching a ``known`` pattern, or a legacy
    ``env.json`` of purer."""
    folder = Path(folder)
    if (folder / MARKER).is_file() or (folder / LOCK).is_file():
        return True
    if any(next(folder.glob(pattern), None) is not None for pattern in known):
        return True
    try:
        env = json.loads((folder / "env.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(env, dict) and "purer" in env


def check_output_folder(folder: str | Path, what: str, known: tuple[str, ...] = ()) -> None:
    """Refuse ``folder`` (without writing anything) when it or a parent is a file, or when it is a
    non-empty folder that purer did not write.

    Args:
        folder: the folder a step is about to write into.
        what: a noun for the message, e.g. ``"run folder"``.
        known: glob patterns of inputs that mark the folder as purer's (a pool folder assembled
            by hand holds ``teacher_*.pt``).
    """
    folder = Path(folder)
    for path in (folder, *folder.parents):
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                raise OutputError(f"{what} {folder}: {path} is an existing file, not a folder")
            break
    if folder.is_dir() and any(folder.iterdir()) and not is_purer_output(folder, known):
        raise OutputError(
            f"{what} {folder} is a non-empty folder that purer did not write (no {MARKER}): refusing to write "
            "into it; give an empty or new folder"
        )


@contextlib.contextmanager
def claim_output(folder: str | Path, what: str, known: tuple[str, ...] = ()) -> Iterator[Path]:
    """Check ``folder`` (:func:`check_output_folder`), lock it for this process (:func:`lock_folder`)
    and mark it as purer's, before any output is written.

    Raises:
        OutputError: a file in the way, a foreign non-empty folder, an unwritable folder, or a
            lock held by another process (its pid named).
    """
    folder = Path(folder)
    check_output_folder(folder, what, known)
    with lock_folder(folder, what):
        if not (folder / MARKER).is_file():
            write_text(folder / MARKER, "purer output folder: written by purer; safe for purer to overwrite\n")
        yield folder


@contextlib.contextmanager
def lock_folder(folder: str | Path, what: str, lock_name: str = LOCK) -> Iterator[Path]:
    """Create ``folder`` and hold an exclusive lock on ``folder/lock_name`` until the block ends.

    Also the writability check before the work starts: the folder is created and the lock file
    written first, so a read-only or full disk fails here, naming the file.

    Args:
        folder: the output folder.
        what: a noun for messages, e.g. ``"meta-train run folder"``.
        lock_name: the lock file (one per folder; ``.teacher_03.lock`` etc. for writers that share
            a folder).

    Raises:
        OutputError: an unwritable folder, or a lock held by another process (its pid named).
    """
    folder = Path(folder)
    lock = folder / lock_name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise write_error(lock, exc) from None
    try:
        _lock(fd, lock, folder, what)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:
            raise write_error(lock, exc) from None
        yield folder
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int, lock: Path, folder: Path, what: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputError(
            f"{what} {folder} is being written by another purer process (pid {_holder(lock)}, lock file "
            f"{lock.name}); wait for it to finish or stop it"
        ) from None
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise write_error(lock, exc) from None
        logger.warning("%s: file locks are not supported here (%s); writing %s without a lock", lock,
                       exc.strerror, folder)


def _holder(lock: Path) -> str:
    """The pid written into ``lock`` by its holder (``unknown`` in the instant before it is written)."""
    try:
        text = lock.read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return "unknown"
    return text if text.isdigit() else "unknown"
