"""Image decoding shared by the dataset sources: decode + resize, parallel decoding, channel statistics.

Every source ends with the same preprocessing (docs/method.md §1.4): a plain resize of the whole image
to a square (no crop, antialiased bilinear), in greyscale (``L``) or RGB, stored as uint8
``[C, H, W]``. Normalisation is not applied here; it is stored with the split.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from purer.errors import DataError
from purer.tracking import progress

log = logging.getLogger(__name__)

GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# integer greyscale modes wider than 8 bits, scaled to 8 bits by their type's range (not clipped)
WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
UINT16_MAX = 65535
CHUNK = 512  # images per worker task
SERIAL_BELOW = 2048  # fewer images than this are decoded in-process


@dataclass(frozen=True)
class ImageRef:
    """Where one image lives: a file on disk (``archive`` None) or a member of a zip archive."""

    name: str  # file path, or member name inside ``archive``
    archive: str | None = None

    def describe(self) -> str:
        return f"{self.name!r} inside {self.archive}" if self.archive else str(self.name)


def pil_mode(channels: int) -> str:
    """PIL mode for a channel count: 1 -> ``L``, 3 -> ``RGB``."""
    return {1: "L", 3: "RGB"}[channels]


def resize_array(image: Image.Image, mode: str, size: int) -> np.ndarray:
    """Convert ``image`` to ``mode`` and resize it to ``size`` x ``size``.

    Returns:
        uint8 [C, size, size] (C = 1 for ``L``, 3 for ``RGB``).
    """
    image = to_8bit(image).convert(mode)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def to_8bit(image: Image.Image) -> Image.Image:
    """An 8-bit ``L`` image for a 16- or 32-bit integer greyscale image; any other image unchanged.

    Pillow's own conversion clips such values at 255 (a 16-bit image turns solid white). Here they
    are scaled by the range of their type: ``I;16*`` by 65535; ``I`` (32-bit, which is how some
    readers return 16-bit data) by 65535 when every value lies in [0, 65535], else linearly from the
    signed 32-bit range. 8-bit value = round(value / range * 255).
    """
    if image.mode not in WIDE_MODES:
        return image
    values = np.asarray(image).astype(np.float64)
    if image.mode != "I" or (values.size and values.min() >= 0 and values.max() <= UINT16_MAX):
        scaled = values / UINT16_MAX
    else:
        info = np.iinfo(np.int32)
        scaled = (values - info.min) / (float(info.max) - info.min)
    return Image.fromarray(np.rint(scaled * 255).astype(np.uint8), mode="L")


def decode(data: bytes | str | Path, mode: str, size: int, where: str) -> np.ndarray:
    """Decode one image (bytes or a path) fully and resize it.

    Args:
        data: encoded bytes, or a path to an image file.
        mode: ``L`` or ``RGB``.
        size: output side in pixels.
        where: how to name the image in an error message.

    Returns:
        uint8 [C, size, size].

    Raises:
        DataError: the image is truncated, corrupt or not an image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # too large: refused, not decoded
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
                image.load()
                return resize_array(image, mode, size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(too_large_message(where, exc)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"cannot decode image {where}: {type(exc).__name__}: {exc}") from None


def too_large_message(where: str, exc: Exception) -> str:
    """The one-line error for an image above Pillow's decompression-bomb limit."""
    detail = str(exc).split(", could be")[0]  # "Image size (N pixels) exceeds limit of M pixels"
    return f"image {where} is too large to decode ({detail}; Pillow refuses it as a possible decompression bomb)"


_ZIPS: dict[tuple, zipfile.ZipFile] = {}


def open_zip(archive: str | Path) -> zipfile.ZipFile:
    """A shared, open ZipFile for ``archive`` (its member index is parsed once).

    One handle per process and file version: forked workers must not share a file offset, and a
    rewritten archive gets a fresh handle.

    Raises:
        DataError: the file is missing or not a zip archive.
    """
    try:
        stat = os.stat(archive)
        key = (os.getpid(), str(archive), stat.st_mtime_ns, stat.st_size)
        if key not in _ZIPS:
            _ZIPS[key] = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{archive} is not a readable zip archive ({exc})") from None
    return _ZIPS[key]


def read_ref(ref: ImageRef, mode: str, size: int) -> np.ndarray:
    """Decode the image ``ref`` points at; uint8 [C, size, size]."""
    if ref.archive is None:
        return decode(ref.name, mode, size, ref.describe())
    try:
        data = open_zip(ref.archive).read(ref.name)
    except (KeyError, OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {ref.describe()}: {exc}") from None
    return decode(data, mode, size, ref.describe())


def _decode_chunk(task: tuple[int, Sequence[ImageRef], str, int]) -> tuple[int, np.ndarray]:
    start, refs, mode, size = task
    return start, np.stack([read_ref(ref, mode, size) for ref in refs])


def default_workers() -> int:
    """Worker processes for decoding: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def decode_all(refs: Sequence[ImageRef], channels: int, size: int, desc: str, workers: int | None = None) -> torch.Tensor:
    """Decode and resize many images, in parallel worker processes when there are many.

    Args:
        refs: the images, in output order.
        channels: 1 (greyscale) or 3 (RGB).
        size: output side in pixels.
        desc: progress-bar label.
        workers: processes; None = :func:`default_workers`.

    Returns:
        uint8 [N, channels, size, size] in the order of ``refs``.
    """
    mode = pil_mode(channels)
    out = torch.empty((len(refs), channels, size, size), dtype=torch.uint8)
    tasks = [(start, refs[start : start + CHUNK], mode, size) for start in range(0, len(refs), CHUNK)]
    workers = default_workers() if workers is None else workers
    with progress(total=len(refs), desc=desc) as bar:
        if workers <= 1 or len(refs) < SERIAL_BELOW:
            results = map(_decode_chunk, tasks)
            _fill(out, results, bar)
        else:
            with _pool_context().Pool(workers) as pool:
                _fill(out, pool.imap_unordered(_decode_chunk, tasks), bar)
    return out


def _fill(out: torch.Tensor, results, bar) -> None:
    for start, block in results:
        out[start : start + len(block)] = torch.from_numpy(block)
        bar.update(len(block))


def _pool_context():
    # fork starts workers without re-importing torch; fall back to the platform default elsewhere
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else None)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation in [0, 1] pixel units.

    Args:
        images: uint8 [N, C, H, W].

    Returns:
        ``(mean, std)``, each a tuple of C floats rounded to 6 decimals.
    """
    if images.shape[0] == 0:
        raise DataError("cannot compute mean/std of an empty split")
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].to(torch.float64) / 255.0
        total += block.sum(dim=(0, 2, 3))
        squares += (block * block).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return tuple(round(float(m), 6) for m in mean), tuple(round(max(float(s), 1e-6), 6) for s in std)


def normalisation(
    train_images: torch.Tensor,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    native: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std stored with every split of a dataset.

    Precedence: the config's ``mean``/``std``; else the source's ``native`` values when their channel
    count matches the images; else statistics of the train split (:func:`channel_stats`).

    Args:
        train_images: uint8 [N, C, H, W] of the train split.
        mean, std: the config's values (both None or both set).
        native: the source's default ``(mean, std)``, or None.
    """
    channels = int(train_images.shape[1])
    if mean is not None and std is not None:
        if len(mean) != channels or len(std) != channels:
            raise DataError(
                f"mean/std: expected {channels} value(s) each (one per image channel), got {len(mean)} and {len(std)}"
            )
        return tuple(mean), tuple(std)
    if native is not None and len(native[0]) == channels:
        return native
    return channel_stats(train_images)
