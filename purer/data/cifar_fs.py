"""``cifar-fs``: CIFAR-100 with the Bertinetto et al. (ICLR 2019) few-shot class split (64/16/20).

Reads the official python archive ``cifar-100-python.tar.gz`` in place (``path`` = the archive, or
a folder holding it). Each CIFAR-FS class uses all 600 of its images: the official train set's
500, then the official test set's 100, in archive order. The class lists are
``purer/data/splits/{train,val,test}.txt`` (CIFAR-100 fine-label names; MIT, from the
Bertinetto split).

Integrity: a file named ``cifar-100-python.tar.gz`` (the official name) must match the official
md5; an archive under any other name is taken as a user-made archive in the same format and only
its structure is checked (a warning is logged). Pickles are read with an unpickler that only
accepts numpy arrays, never arbitrary objects. Split classes missing from a user-made archive are
skipped with a warning; a split left with no class is an error.

``download: true`` fetches the official archive (md5-checked, written atomically) when it is
missing; nothing is downloaded otherwise. Normalisation defaults to the CIFAR-100 statistics
used by the released code, (0.5071, 0.4867, 0.4408) / (0.2675, 0.2565, 0.2761).
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import tarfile
import urllib.request
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from purer.config import DatasetConfig
from purer.data.cache import SplitData
from purer.data.images import normalisation, pil_mode, resize_array
from purer.errors import DataError
from purer.io import atomic_path
from purer.tracking import progress

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
OFFICIAL_NAME = "cifar-100-python.tar.gz"
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
OFFICIAL_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR_FS_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR_FS_STD = (0.2675, 0.2565, 0.2761)
NATIVE_SIZE = 32
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }
)


def split_classes() -> dict[str, tuple[str, ...]]:
    """The embedded CIFAR-FS class names of each split, in file order."""
    folder = resources.files("purer.data") / "splits"
    return {
        split: tuple(line.strip() for line in (folder / f"{split}.txt").read_text().splitlines() if line.strip())
        for split in SPLITS
    }


def archive_path(config: DatasetConfig) -> Path:
    """The archive to read: ``path`` itself, or ``path/cifar-100-python.tar.gz``; downloaded if asked."""
    if config.path is None:
        raise DataError(f"no `path` set: put {OFFICIAL_NAME} ({OFFICIAL_URL}) in a folder and set `path` to it")
    path = Path(config.path).expanduser()
    if path.is_file():
        return path
    target = path if path.name.endswith((".tar.gz", ".tgz")) else path / OFFICIAL_NAME
    if target.is_file():
        return target
    if config.download:
        download(target)
        return target
    raise DataError(
        f"CIFAR-100 archive not found at {target}: download {OFFICIAL_URL} and put it there "
        "(or set `download: true`)"
    )


def expected_md5(archive: Path) -> str | None:
    """The official md5 for a file with the official name; None (structure checks only) otherwise."""
    return OFFICIAL_MD5 if archive.name == OFFICIAL_NAME else None


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(target: Path, url: str = OFFICIAL_URL) -> None:
    """Fetch the official archive to ``target`` atomically, checking its md5 before it is moved in place."""
    log.info("downloading %s to %s", url, target)
    try:
        with atomic_path(target) as tmp, urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with progress(total=total, desc="cifar-100 download") as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
            out.close()
            if file_md5(tmp) != OFFICIAL_MD5:
                raise DataError(f"downloaded {url} does not match the official md5 {OFFICIAL_MD5}")
    except OSError as exc:
        raise DataError(f"download of {url} failed ({exc}); download it by hand and put it at {target}") from None


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays only (the CIFAR pickles need nothing else)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict[str, object]:
    try:
        raw = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # pickle raises many types for foreign or damaged data
        raise DataError(f"{where} is not a CIFAR-100 python pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a pickled dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in raw.items()}


def read_members(archive: Path) -> dict[str, dict[str, object]]:
    """The ``train``, ``test`` and ``meta`` pickles of the archive, unpickled."""
    wanted = {f"cifar-100-python/{name}": name for name in ("train", "test", "meta")}
    found: dict[str, dict[str, object]] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    data = tar.extractfile(member).read()
                    found[wanted[member.name]] = _unpickle(data, f"{member.name!r} inside {archive}")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{archive} is truncated or not a tar.gz archive ({type(exc).__name__}: {exc})") from None
    missing = sorted(set(wanted) - {f"cifar-100-python/{n}" for n in found})
    if missing:
        raise DataError(f"{archive} lacks {missing}: expected the official cifar-100-python layout")
    return found


def _field(table: dict[str, object], key: str, where: str) -> object:
    if key not in table:
        raise DataError(f"{where}: missing key {key!r} (expected the official CIFAR-100 python format)")
    return table[key]


def load_archive(archive: Path, md5: str | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read train + test of a CIFAR-100 python archive.

    Args:
        archive: the ``.tar.gz`` file.
        md5: required md5 of the file, or None to skip the check.

    Returns:
        images uint8 [N, 3, 32, 32] (official train then test), fine labels int64 [N], fine label names.
    """
    if md5 is not None and file_md5(archive) != md5:
        raise DataError(f"{archive} does not match the official md5 {md5}: the file is damaged or not the official archive")
    if md5 is None:
        log.warning("%s is not named %s: md5 not checked, only its structure", archive, OFFICIAL_NAME)
    tables = read_members(archive)
    names = [str(n) for n in _field(tables["meta"], "fine_label_names", f"meta inside {archive}")]
    images, labels = [], []
    for part in ("train", "test"):
        where = f"{part} inside {archive}"
        data = np.asarray(_field(tables[part], "data", where))
        fine = np.asarray(_field(tables[part], "fine_labels", where), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * NATIVE_SIZE**2 or len(fine) != len(data):
            raise DataError(f"{where}: expected uint8 data [N, 3072] and N fine_labels, got {data.dtype} {data.shape}")
        if len(fine) and (fine.min() < 0 or fine.max() >= len(names)):
            raise DataError(f"{where}: fine_labels outside [0, {len(names)})")
        images.append(data.reshape(-1, 3, NATIVE_SIZE, NATIVE_SIZE))
        labels.append(fine)
    return np.concatenate(images), np.concatenate(labels), names


def select_split(images: np.ndarray, labels: np.ndarray, names: list[str], wanted: tuple[str, ...], split: str):
    """The images of the split's classes present in the archive; labels re-indexed to sorted names.

    Returns:
        images uint8 [n, 3, 32, 32], labels int64 [n], sorted class names.
    """
    present = sorted(n for n in wanted if n in names)
    if len(present) < len(wanted):
        log.warning("cifar-fs %s: %d of %d classes missing from the archive", split, len(wanted) - len(present), len(wanted))
    if not present:
        raise DataError(f"cifar-fs {split}: none of its {len(wanted)} classes is in the archive")
    to_local = np.full(len(names), -1, dtype=np.int64)
    for local, name in enumerate(present):
        to_local[names.index(name)] = local
    keep = np.flatnonzero(to_local[labels] >= 0)
    return images[keep], to_local[labels[keep]], tuple(present)


def to_size(images: np.ndarray, channels: int, size: int) -> torch.Tensor:
    """uint8 [N, 3, 32, 32] -> uint8 [N, channels, size, size] (PIL conversion and bilinear resize)."""
    if channels == 3 and size == NATIVE_SIZE:
        return torch.from_numpy(np.ascontiguousarray(images))
    mode = pil_mode(channels)
    out = [resize_array(Image.fromarray(img.transpose(1, 2, 0)), mode, size) for img in progress(images, desc="cifar-fs resize")]
    return torch.from_numpy(np.stack(out))


def build(config: DatasetConfig) -> dict[str, SplitData]:
    """Read the archive and cut the three CIFAR-FS splits (see the module docstring)."""
    archive = archive_path(config)
    images, labels, names = load_archive(archive, expected_md5(archive))
    unused = set(names) - {n for split in split_classes().values() for n in split}
    if unused:
        log.warning("cifar-fs: archive classes in no CIFAR-FS split are ignored: %s", sorted(unused))
    channels = config.channels or 3
    decoded = {}
    for split, wanted in split_classes().items():
        split_images, split_labels, class_names = select_split(images, labels, names, wanted, split)
        decoded[split] = (to_size(split_images, channels, config.image_size), torch.from_numpy(split_labels), class_names)
        log.info("cifar-fs %s: %d images, %d classes", split, len(split_labels), len(class_names))
    mean, std = normalisation(decoded["train"][0], config.mean, config.std, native=(CIFAR_FS_MEAN, CIFAR_FS_STD))
    return {split: SplitData(images, labels, names, mean, std) for split, (images, labels, names) in decoded.items()}


def count_train_classes(config: DatasetConfig) -> int:
    """Number of meta-train classes: the length of the embedded train list (64), without reading data."""
    return len(split_classes()["train"])
