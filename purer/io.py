"""Atomic file output, checkpoints with clear errors, and run-directory naming.

Every output is written to a temporary file in the destination folder and renamed into place,
so a killed job never leaves a half-written file that a later step could read. A file system
fault while writing (read-only folder, full disk, a folder where a file should be) is one
:class:`~purer.errors.OutputError` naming the output, never a traceback.

Torch files are data, never code: :func:`load_torch` unpickles with ``weights_only=True``
(tensors, dicts, lists, tuples, str/int/float/bool/None), so a shared teacher, meta model,
checkpoint or cached split that holds any other pickled object is refused before it can run.
:func:`save_torch` converts what it writes to those types, so every file purer writes loads that way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import secrets
import shutil
import socket
import tempfile
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from purer.errors import CheckpointError, OutputError, PurerError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get the usual mode
        os.replace(tmp_path, path)
    except OSError as exc:  # full disk, quota, a folder in the way of ``path``, ...
        raise write_error(path, exc) from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink(missing_ok=True)


def write_error(path: str | Path, exc: OSError) -> OutputError:
    """One-line error for a failed write: the output named, the system's reason (no temporary names)."""
    return OutputError(f"cannot write {path}: {exc.strerror or type(exc).__name__}")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; swap it in for ``path`` only if the block succeeds.

    The previous ``path`` (if any) is renamed aside, the new folder renamed onto ``path``, then the
    previous one deleted: a reader finds the old folder or the new one, never a mix of both (between
    the two renames ``path`` is briefly absent, which reads as "not built"). A Python exception
    removes the temporary folder and leaves ``path`` untouched. The folders of a killed process
    (``.<name>.<host>-<pid>.<random>.tmp``) are deleted by the next call for ``path`` on the same host
    once that process is gone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_dirs(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700; outputs get the usual mode
        _swap_in(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _owner() -> str:
    """``<host>-<pid>`` of this process, as written into temporary folder names."""
    return f"{re.sub(r'[^A-Za-z0-9.-]', '_', socket.gethostname())}-{os.getpid()}"


def _swap_in(new: Path, path: Path) -> None:
    """Rename ``new`` onto ``path``, moving an existing ``path`` aside first and deleting it after."""
    if not (path.exists() or path.is_symlink()):
        os.rename(new, path)
        return
    old = path.parent / f".{path.name}.{_owner()}.{secrets.token_hex(4)}.tmp"
    os.rename(path, old)
    os.rename(new, path)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)


def remove_stale_dirs(path: str | Path) -> int:
    """Delete the temporary folders of :func:`atomic_dir` for ``path`` whose process is gone.

    Only folders written on this host are considered (a process id means nothing on another
    host of a shared file system); a live process's folder is kept. Returns the number removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return 0
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?P<host>.+)-(?P<pid>\d+)\.[^.]+\.tmp$")
    host = _owner().rsplit("-", 1)[0]
    removed = 0
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name)
        if match is None or match["host"] != host or not entry.is_dir() or _alive(int(match["pid"])):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


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
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
    except OSError as exc:
        raise write_error(path, exc) from None


def plain_data(obj: Any) -> Any:
    """``obj`` with every value a type ``torch.load(weights_only=True)`` accepts.

    Tensors, ``torch.Size``, dtypes, str/int/float/bool/None/bytes and dicts (also ``OrderedDict``,
    ``Counter``: LR schedulers keep milestones in one), lists, tuples and sets of them are kept;
    numpy scalars and arrays become Python numbers and tensors, paths become strings.

    Raises:
        TypeError: for any other object (a programming error: it could not be loaded back).
    """
    if type(obj).__module__ == "numpy":  # before the numbers: numpy.float64 is a float subclass
        return torch.from_numpy(obj.copy()) if hasattr(obj, "shape") and obj.shape else obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.Size, torch.dtype)):
        return obj
    if type(obj) in (dict, OrderedDict, Counter):
        return type(obj)({plain_data(key): plain_data(value) for key, value in obj.items()})
    if isinstance(obj, Mapping):
        return {plain_data(key): plain_data(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [plain_data(value) for value in obj]
    if isinstance(obj, (set, frozenset)):
        return {plain_data(value) for value in obj}
    if isinstance(obj, tuple):
        return tuple(plain_data(value) for value in obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"save_torch: {type(obj).__qualname__} is not plain data (tensors, containers, numbers, str)")


def save_torch(path: str | Path, obj: Any) -> None:
    """Atomically ``torch.save`` ``obj`` (made :func:`plain_data`) to ``path`` (byte-identical for identical ``obj``)."""
    obj = plain_data(obj)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)  # a file object: the archive's inner folder is not named after ``tmp``


_FORBIDDEN_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_torch(
    path: str | Path,
    what: str = "checkpoint",
    *,
    mmap: bool = False,
    error: type[PurerError] = CheckpointError,
    advice: str = "",
) -> Any:
    """``torch.load(weights_only=True)`` on CPU, with one clear error for a missing, truncated,
    corrupt or unsafe file.

    Only tensors and plain containers of str/int/float/bool/None are unpickled: a file holding any
    other pickled object (which could run code when loaded) is refused and nothing in it runs.

    Args:
        path: the file to read.
        what: a noun for the message, e.g. ``"teacher checkpoint"``.
        mmap: memory-map the file (tensors are read only when touched).
        error: the :class:`PurerError` subclass raised.
        advice: appended to the message of a missing, truncated or corrupt file.
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a folder, expected a torch file")
    if not path.is_file():
        raise error(f"{what} not found: {path}{advice}")
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):  # a damaged pickle, not a refused one
            raise error(f"{what} {path} is truncated or not a torch file (UnpicklingError: {str(exc)[:200]}){advice}") from None
        found = _FORBIDDEN_GLOBAL.search(str(exc))  # the restricted unpickler's refusal: name what it met
        detail = f"global {found.group(1)}" if found else (str(exc).strip().splitlines() or ["?"])[-1][:200]
        raise error(f"{what} {path} holds a pickled object that is not plain data ({detail}): refusing to load it") from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        detail = (str(exc).strip().splitlines() or [""])[0].split(". ")[0]  # not torch's advice paragraph
        raise error(f"{what} {path} is truncated or not a torch file ({type(exc).__name__}: {detail}){advice}") from None


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """Read a YAML file with one clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{what} {path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Read a JSON file with one clear error for a missing, truncated or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except ValueError as exc:
        raise CheckpointError(f"{what} {path} is truncated or not valid JSON ({exc})") from None


def file_digest(path: str | Path) -> str:
    """SHA-256 (first 16 hex digits) of a file's bytes: a retrained teacher changes it."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()[:16]
