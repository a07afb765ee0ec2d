"""Data that would otherwise be silently wrong: 16-bit greyscale scaled to 8 bits, overlapping splits
refused, images above Pillow's decompression-bomb limit refused with one line naming the file."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from purer.cli import main as cli
from purer.config import DatasetConfig
from purer.data import folder
from purer.data.images import resize_array

# 16-bit values and their 8-bit images: round(v * 255 / 65535), worked by hand
# (257 * k -> k; 32768 -> 127.502 -> 128; 1000 -> 3.891 -> 4; 40000 -> 155.64 -> 156; 12345 -> 48.03 -> 48)
WIDE = [0, 257, 25700, 32768, 65535, 1000, 40000, 12345]
EIGHT_BIT = [0, 1, 100, 128, 255, 4, 156, 48]


@pytest.fixture(autouse=True)
def _only_prepare(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"prepare": cli.COMMANDS["prepare"]})


def prepare_config(write_config, path: Path, **extra) -> Path:
    dataset = {"source": "folder", "path": str(path), "image_size": 8, **extra}
    return write_config({"datasets": {"ds": dataset}, "pool": {"datasets": ["ds"]}})


def fails(capsys, argv: list[str], message: str, absent: Path) -> None:
    """The step exits 2 with one line ``purer prepare: error: <message>`` (after log lines only) and writes nothing."""
    assert cli.main([str(a) for a in argv]) == 2
    *logs, last = capsys.readouterr().err.strip().splitlines()
    assert last == f"purer prepare: error: {message}", last
    assert all(re.match(r"\d{4}-\d\d-\d\d [\d:,]+ (INFO|WARNING) ", line) for line in logs), logs
    assert not absent.exists()


def grey_tree(root: Path, classes: dict[str, str], size: int = 8) -> None:
    """Two random 8-bit grey PNGs per class: ``classes`` maps split -> class names (one letter each)."""
    generator = np.random.default_rng(1)
    for split, names in classes.items():
        for name in names:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.fromarray(generator.integers(0, 256, (size, size), dtype=np.uint8)).save(root / split / name / f"{i}.png")


DISJOINT = {"train": "ab", "val": "cd", "test": "ef"}

# --------------------------------------------------------------------------------------------
# 16-bit greyscale
# --------------------------------------------------------------------------------------------


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path, write_config):
    root = tmp_path / "scans"
    grey_tree(root, DISJOINT)
    wide = np.array([WIDE] * 8, dtype=np.uint16)  # 8 x 8, one value per column
    target = root / "train" / "a" / "0.png"
    Image.fromarray(wide).save(target)
    assert target.read_bytes()[24] == 16  # the PNG header's bit depth: a real 16-bit greyscale PNG
    with Image.open(target) as image:
        assert image.mode == "I;16"
        assert np.asarray(image.convert("L"))[0].tolist() == [0] + [255] * 7  # what plain Pillow makes of it

    assert cli.main(["prepare", "-c", str(prepare_config(write_config, root))]) == 0
    from purer.data.cache import load_split

    train = load_split(tmp_path / "data" / "ds" / "8px" / "train.pt")
    assert train.channels == 1  # 16-bit greyscale counts as greyscale
    assert train.images[0, 0].tolist() == [EIGHT_BIT] * 8

    rgb = folder.build(DatasetConfig(source="folder", path=str(root), image_size=8, channels=3))
    assert rgb["train"].images[0, :, 0].tolist() == [EIGHT_BIT] * 3


def test_other_wide_greyscale_modes():
    big_endian = Image.frombytes("I;16B", (len(WIDE), 1), np.array(WIDE, dtype=">u2").tobytes())
    assert big_endian.mode == "I;16B"
    assert resize_array(big_endian, "L", 8)[0, 0].tolist() == EIGHT_BIT  # 8 x 1 stretched to 8 x 8
    as_int32 = Image.fromarray(np.array([WIDE] * 8, dtype=np.int32))  # how some readers return 16-bit data
    assert as_int32.mode == "I"
    assert resize_array(as_int32, "L", 8)[0, 0].tolist() == EIGHT_BIT
    # beyond 16 bits: the signed 32-bit range, linearly (-2^31 -> 0, 0 -> 127.5 -> 128, 2^31 - 1 -> 255)
    full = Image.fromarray(np.array([[-(2**31), 0, 2**31 - 1, 65536]] * 4, dtype=np.int32))
    assert resize_array(full, "L", 4)[0, 0].tolist() == [0, 128, 255, 128]
    eight = Image.fromarray(np.array([[0, 100, 255]] * 3, dtype=np.uint8))
    assert resize_array(eight, "L", 3)[0, 0].tolist() == [0, 100, 255]  # 8-bit images unchanged


# --------------------------------------------------------------------------------------------
# overlapping splits
# --------------------------------------------------------------------------------------------


def test_folder_class_in_two_splits_is_refused(tmp_path, write_config, capsys):
    root = tmp_path / "images"
    grey_tree(root, {"train": "ab", "val": "cd", "test": "eb"})
    fails(capsys, ["prepare", "-c", prepare_config(write_config, root)],
          f"dataset 'ds' (folder): class 'b' is in both {root / 'train'} and {root / 'test'}: "
          "the splits must have disjoint classes", tmp_path / "data")


def test_folder_identical_image_in_two_splits_is_reported(tmp_path, caplog):
    root = tmp_path / "images"
    grey_tree(root, DISJOINT)
    copy = root / "test" / "f" / "1.png"
    copy.write_bytes((root / "train" / "b" / "0.png").read_bytes())
    with caplog.at_level(logging.WARNING, logger="purer.data.folder"):
        folder.build(DatasetConfig(source="folder", path=str(root), image_size=8))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"folder: 1 image(s) appear in two splits with identical bytes, e.g. {root / 'train' / 'b' / '0.png'} "
        f"and {copy}: check that no image was copied into two splits"
    ]
    caplog.clear()
    copy.unlink()
    grey_tree(tmp_path / "clean", DISJOINT)
    with caplog.at_level(logging.WARNING, logger="purer.data.folder"):
        folder.build(DatasetConfig(source="folder", path=str(tmp_path / "clean"), image_size=8))
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def ravi(root: Path, extra: dict[str, list[str]]) -> None:
    """A mini-ImageNet folder layout (two images per class) plus ``extra`` CSV rows per split."""
    (root / "images").mkdir(parents=True)
    for split, labels in (("train", ["n01", "n02"]), ("val", ["n03"]), ("test", ["n04"])):
        rows = ["filename,label"]
        for label in labels:
            for i in range(2):
                rows.append(f"{label}_{i}.jpg,{label}")
                Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(root / "images" / f"{label}_{i}.jpg", format="PNG")
        (root / f"{split}.csv").write_text("\n".join(rows + extra.get(split, [])) + "\n")


def test_mini_imagenet_image_listed_in_two_splits_is_refused(tmp_path, write_config, capsys):
    root = tmp_path / "mini"
    ravi(root, {"test": ["n01_1.jpg,n04"]})  # a train image, under a test label
    config = prepare_config(write_config, root, source="mini-imagenet")
    fails(capsys, ["prepare", "-c", config],
          f"dataset 'ds' (mini-imagenet): {root / 'images' / 'n01_1.jpg'} is listed in both train.csv and test.csv "
          f"of {root}: the splits must not share images", tmp_path / "data")


def test_mini_imagenet_normalises_file_names_before_comparing(tmp_path, write_config, capsys):
    root = tmp_path / "mini"
    ravi(root, {"val": ["./n02_0.jpg,n03"]})
    fails(capsys, ["prepare", "-c", prepare_config(write_config, root, source="mini-imagenet")],
          f"dataset 'ds' (mini-imagenet): {root / 'images' / './n02_0.jpg'} is listed in both train.csv and val.csv "
          f"of {root}: the splits must not share images", tmp_path / "data")


# --------------------------------------------------------------------------------------------
# images too large to decode
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [None, 1], ids=["header-scan", "decode"])
@pytest.mark.parametrize(
    ("side", "detail"),
    [(12, "144 pixels) exceeds limit of 100 pixels"), (16, "256 pixels) exceeds limit of 200 pixels")],
    ids=["warning-level", "error-level"],
)
def test_image_too_large_to_decode_is_one_line_naming_the_file(tmp_path, write_config, capsys, monkeypatch, channels, side, detail):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 8 x 8 images pass; Pillow errors above twice the limit
    root = tmp_path / "images"
    grey_tree(root, DISJOINT)
    big = root / "val" / "d" / "1.png"
    Image.fromarray(np.zeros((side, side), dtype=np.uint8)).save(big)
    fails(capsys, ["prepare", "-c", prepare_config(write_config, root, channels=channels)],
          f"dataset 'ds' (folder): image {big} is too large to decode (Image size ({detail}; "
          "Pillow refuses it as a possible decompression bomb)", tmp_path / "data")
