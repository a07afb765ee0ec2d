"""Dataset sources and the split cache: glyphs, mini-ImageNet, CIFAR-FS, image folders, prepare_dataset."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from purer.config import DatasetConfig, ExperimentConfig, PoolConfig
from purer.data import cifar_fs, folder, glyphs, images, mini_imagenet
from purer.data.cache import load_split
from purer.data.registry import DATASETS, n_train_classes, prepare_dataset
from purer.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def solid(colour, size=(12, 10), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def colour_of(index: int) -> tuple[int, int, int]:
    """A distinct solid colour per image, so decoded pixels identify the file they came from."""
    return (10 * index % 250, 255 - 7 * index % 250, 40 + 3 * index)


MINI_SPLITS = {"train": ["n01", "n02", "n03"], "val": ["n04", "n05"], "test": ["n06", "n07"]}


def mini_rows():
    """CSV rows per split, 3 images per class, interleaving nothing (class-grouped like Ravi's CSVs)."""
    rows, index = {}, 0
    for split, labels in MINI_SPLITS.items():
        rows[split] = []
        for label in labels:
            for k in range(3):
                rows[split].append((f"{label}{k:08d}.jpg", label, index))
                index += 1
    return rows


def csv_text(rows) -> str:
    return "filename,label\n" + "".join(f"{f},{label}\n" for f, label, _ in rows)


def write_mini_zip(path: Path, prefix="mini-imagenet/", drop=None, corrupt=None) -> dict:
    """A Ravi-layout zip; images are PNG (lossless) under .jpg names, like any PIL-readable file."""
    rows = mini_rows()
    with zipfile.ZipFile(path, "w") as archive:
        for split, split_rows in rows.items():
            archive.writestr(f"{prefix}{split}.csv", csv_text(split_rows))
            for filename, _, index in split_rows:
                if filename == drop:
                    continue
                data = encode(solid(colour_of(index)), "PNG")
                archive.writestr(f"{prefix}images/{filename}", data[:40] if filename == corrupt else data)
    return rows


def write_mini_folder(root: Path) -> dict:
    rows = mini_rows()
    (root / "images").mkdir(parents=True)
    for split, split_rows in rows.items():
        (root / f"{split}.csv").write_text(csv_text(split_rows))
        for filename, _, index in split_rows:
            solid(colour_of(index)).save(root / "images" / filename, format="PNG")
    return rows


def cifar_pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


CIFAR_NAMES = ["train", "skyscraper", "turtle", "otter", "motorcycle", "baby", "bed", "apple_not_in_split"]


def write_cifar(path: Path, n_train=5, n_test=2) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-100 python archive with 8 classes: 3 train, 2 val, 2 test (CIFAR-FS names) + 1 unused."""
    rng = np.random.default_rng(0)
    parts = {}
    for part, per_class in (("train", n_train), ("test", n_test)):
        labels = np.tile(np.arange(len(CIFAR_NAMES)), per_class)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        parts[part] = (data, labels)
    members = {
        "train": cifar_pickle({"data": parts["train"][0], "fine_labels": parts["train"][1].tolist()}),
        "test": cifar_pickle({"data": parts["test"][0], "fine_labels": parts["test"][1].tolist()}),
        "meta": cifar_pickle({"fine_label_names": CIFAR_NAMES, "coarse_label_names": ["x"]}),
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return parts


def experiment(tmp_path, **datasets) -> ExperimentConfig:
    return ExperimentConfig(data_dir=str(tmp_path / "data"), datasets=datasets, pool=PoolConfig(datasets=(next(iter(datasets)),)))


# --------------------------------------------------------------------------------------------
# glyphs
# --------------------------------------------------------------------------------------------

SMALL_GLYPHS = DatasetConfig(train_classes=4, val_classes=3, test_classes=2, images_per_class=6, image_size=16)


def test_glyphs_shapes_counts_and_disjoint_classes():
    splits = glyphs.build(SMALL_GLYPHS)
    expected = {"train": 4, "val": 3, "test": 2}
    for split, n_classes in expected.items():
        data = splits[split]
        assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
        assert tuple(data.images.shape) == (n_classes * 6, 1, 16, 16)
        assert data.n_classes == n_classes
        assert torch.bincount(data.labels).tolist() == [6] * n_classes
        assert list(data.class_names) == sorted(data.class_names)
        assert all(name.startswith("U+") and "/" not in name for name in data.class_names)
    names = [set(splits[s].class_names) for s in expected]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    # ink on black: the glyph covers a minority of pixels, yet every image has some ink
    per_image_max = splits["train"].images.flatten(1).max(dim=1).values
    assert (per_image_max > 128).all()


def test_glyphs_deterministic_and_prefix_stable():
    first, second = glyphs.build(SMALL_GLYPHS), glyphs.build(SMALL_GLYPHS)
    for split in ("train", "val", "test"):
        assert torch.equal(first[split].images, second[split].images)
        assert first[split].class_names == second[split].class_names
    assert first["train"].mean == second["train"].mean
    # more test classes leave the train classes (and their images) unchanged
    more = glyphs.build(DatasetConfig(train_classes=4, val_classes=3, test_classes=5, images_per_class=6, image_size=16))
    assert more["train"].class_names == first["train"].class_names
    assert torch.equal(more["train"].images, first["train"].images)


def test_glyphs_mean_std_from_train_split_and_rgb_replication():
    splits = glyphs.build(SMALL_GLYPHS)
    pixels = splits["train"].images.double() / 255
    assert splits["train"].mean[0] == pytest.approx(pixels.mean().item(), abs=1e-6)
    assert splits["train"].std[0] == pytest.approx(pixels.std(unbiased=False).item(), abs=1e-6)
    assert splits["test"].mean == splits["train"].mean  # one normalisation for all splits
    rgb = glyphs.build(DatasetConfig(**{**SMALL_GLYPHS.__dict__, "channels": 3, "mean": (0.1,) * 3, "std": (0.2,) * 3}))
    assert rgb["val"].images.shape[1] == 3
    assert torch.equal(rgb["val"].images[:, 0], splits["val"].images[:, 0])
    assert torch.equal(rgb["val"].images[:, 2], splits["val"].images[:, 0])
    assert rgb["val"].mean == (0.1, 0.1, 0.1) and rgb["val"].std == (0.2, 0.2, 0.2)


def test_glyph_candidates_cover_many_faces_and_near_duplicates_are_merged():
    candidates = glyphs.candidate_characters()
    assert len(candidates) > 500
    assert all(len(faces) >= glyphs.MIN_FACES for faces in candidates.values())
    assert ord("A") in candidates and 0x0391 in candidates  # Latin A and Greek Alpha both qualify ...
    reference = glyphs.ImageFont.truetype(str(glyphs.face_paths()[glyphs.REFERENCE_FACE]), 64)
    latin, greek, zhe = (glyphs.shape_signature(glyphs.crop_glyph(reference, cp)) for cp in (0x41, 0x391, 0x416))
    assert glyphs.shape_distance(latin, greek) < glyphs.MIN_SHAPE_DISTANCE  # ... but look the same
    assert glyphs.shape_distance(latin, zhe) > glyphs.MIN_SHAPE_DISTANCE
    chosen = glyphs.choose_classes(200)
    assert len(set(chosen)) == 200
    assert not {0x41, 0x391} <= set(chosen) and not {0x6C, 0x49} <= set(chosen)  # A/Alpha, l/I never both


def test_glyphs_class_name_and_too_many_classes(monkeypatch):
    assert glyphs.class_name(0x41) == "U+0041_LATIN-CAPITAL-LETTER-A"
    few = dict(list(glyphs.candidate_characters().items())[:30])
    monkeypatch.setattr(glyphs, "candidate_characters", lambda: few)
    with pytest.raises(DataError, match=r"= 31, but only \d+ distinct characters are available"):
        glyphs.choose_classes(31)


def test_affine_inverse_maps_output_centre_to_crop_centre():
    u = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5])  # no rotation/shear/aspect/shift, scale 0.925
    a, b, c, d, e, f = glyphs.affine_inverse((40, 20), 100, u)
    assert (a * 50 + b * 50 + c, d * 50 + e * 50 + f) == pytest.approx((20, 10))
    # the longer side (40 px) fills FILL * 0.925 of the canvas: one output pixel = 40 / 64.75 crop pixels
    assert a == pytest.approx(40 / (glyphs.FILL * 100 * 0.925)) and b == pytest.approx(0) and d == pytest.approx(0)


# --------------------------------------------------------------------------------------------
# shared image helpers
# --------------------------------------------------------------------------------------------


def test_resize_is_plain_square_resize_and_mode_conversion():
    image = Image.new("RGB", (8, 4), (200, 100, 50))
    image.paste((0, 0, 0), (0, 0, 4, 4))  # left half black
    out = images.resize_array(image, "RGB", 4)
    assert out.shape == (3, 4, 4) and out.dtype == np.uint8
    assert (out[:, :, 0] == 0).all() and (out[:, :, 3] == [[200], [100], [50]]).all()  # no crop: both halves kept
    grey = images.resize_array(Image.new("RGB", (3, 3), (255, 0, 0)), "L", 3)
    assert grey.shape == (1, 3, 3) and (grey == round(0.299 * 255)).all()  # ITU-R 601 luma


def test_channel_stats_match_definition():
    data = torch.tensor([[[[0, 255]], [[51, 51]]]], dtype=torch.uint8)  # [1, 2, 1, 2]
    mean, std = images.channel_stats(data, chunk=1)
    assert mean == pytest.approx((0.5, 0.2)) and std == pytest.approx((0.5, 1e-6))


def test_normalisation_precedence_and_channel_check():
    train = torch.full((2, 3, 2, 2), 255, dtype=torch.uint8)
    native = ((0.4, 0.4, 0.4), (0.2, 0.2, 0.2))
    assert images.normalisation(train, native=native) == native
    assert images.normalisation(train, (0.1,) * 3, (0.3,) * 3, native) == ((0.1,) * 3, (0.3,) * 3)
    assert images.normalisation(train[:, :1], native=native)[0] == (1.0,)  # grey: native RGB stats do not apply
    with pytest.raises(DataError, match="expected 3 value"):
        images.normalisation(train, (0.1,), (0.3,))


def test_decode_all_parallel_equals_serial(tmp_path, monkeypatch):
    refs = []
    for i in range(6):
        solid(colour_of(i), (5, 7)).save(tmp_path / f"{i}.png")
        refs.append(images.ImageRef(str(tmp_path / f"{i}.png")))
    monkeypatch.setattr(images, "CHUNK", 2)
    monkeypatch.setattr(images, "SERIAL_BELOW", 0)
    parallel = images.decode_all(refs, 3, 4, "test", workers=2)
    serial = images.decode_all(refs, 3, 4, "test", workers=1)
    assert torch.equal(parallel, serial)
    assert parallel[:, :, 0, 0].tolist() == [list(colour_of(i)) for i in range(6)]


# --------------------------------------------------------------------------------------------
# mini-imagenet
# --------------------------------------------------------------------------------------------


def check_mini(splits, rows, size):
    for split, split_rows in rows.items():
        data = splits[split]
        assert data.class_names == tuple(MINI_SPLITS[split])
        assert tuple(data.images.shape) == (len(split_rows), 3, size, size)
        assert data.labels.tolist() == [MINI_SPLITS[split].index(label) for _, label, _ in split_rows]
        # CSV order kept: image k is the solid colour of row k (solid colours survive resizing exactly)
        assert data.images[:, :, 0, 0].tolist() == [list(colour_of(i)) for _, _, i in split_rows]
        assert data.mean == mini_imagenet.IMAGENET_MEAN and data.std == mini_imagenet.IMAGENET_STD


def test_mini_imagenet_zip_and_folder(tmp_path):
    rows = write_mini_zip(tmp_path / "mini.zip")
    check_mini(mini_imagenet.build(DatasetConfig(source="mini-imagenet", path=str(tmp_path / "mini.zip"), image_size=8)), rows, 8)
    write_mini_folder(tmp_path / "folder")
    check_mini(mini_imagenet.build(DatasetConfig(source="mini-imagenet", path=str(tmp_path / "folder"), image_size=8)), rows, 8)
    flat = tmp_path / "flat.zip"  # CSVs at the zip's top level
    write_mini_zip(flat, prefix="")
    assert mini_imagenet.locate(str(flat)).prefix == ""
    assert mini_imagenet.count_train_classes(DatasetConfig(source="mini-imagenet", path=str(flat))) == 3


def test_mini_imagenet_resize_bilinear(tmp_path):
    rows = write_mini_folder(tmp_path / "mini")
    noise = np.random.default_rng(0).integers(0, 256, size=(10, 12, 3), dtype=np.uint8)  # not square
    image = Image.fromarray(noise)
    image.save(tmp_path / "mini" / "images" / rows["train"][0][0], format="PNG")
    splits = mini_imagenet.build(DatasetConfig(source="mini-imagenet", path=str(tmp_path / "mini"), image_size=8, channels=1))
    expected = np.array(image.convert("L").resize((8, 8), Image.Resampling.BILINEAR))
    assert splits["train"].images.shape == (9, 1, 8, 8)
    assert torch.equal(splits["train"].images[0, 0], torch.from_numpy(expected))
    assert len(splits["train"].mean) == 1  # grey: statistics of the train split, not ImageNet's RGB values


def test_mini_imagenet_errors(tmp_path):
    def build(path):
        return mini_imagenet.build(DatasetConfig(source="mini-imagenet", path=str(path)))

    with pytest.raises(DataError, match="not found at .*nowhere.*images/ and train.csv"):
        build(tmp_path / "nowhere")
    write_mini_zip(tmp_path / "missing.zip", drop="n0200000001.jpg")
    with pytest.raises(DataError, match=r"train.csv.* lists n0200000001.jpg \(label n02\).*does not exist"):
        build(tmp_path / "missing.zip")
    write_mini_zip(tmp_path / "corrupt.zip", corrupt="n0500000002.jpg")
    with pytest.raises(DataError, match=r"cannot decode image 'mini-imagenet/images/n0500000002.jpg' inside .*corrupt.zip"):
        build(tmp_path / "corrupt.zip")
    (tmp_path / "notzip.zip").write_bytes(b"hello")
    with pytest.raises(DataError, match="not a readable zip"):
        build(tmp_path / "notzip.zip")


def test_mini_imagenet_csv_problems(tmp_path):
    root = tmp_path / "mini"
    write_mini_folder(root)
    (root / "val.csv").write_text("filename,label\nn0100000000.jpg,n01\n")  # n01 is a train class
    with pytest.raises(DataError, match="label n01 is in both train.csv and val.csv"):
        mini_imagenet.build(DatasetConfig(source="mini-imagenet", path=str(root)))
    (root / "val.csv").write_text("file,class\n")
    with pytest.raises(DataError, match="val.csv: expected the header 'filename,label'"):
        mini_imagenet.build(DatasetConfig(source="mini-imagenet", path=str(root)))
    (root / "val.csv").write_text("filename,label\nn0400000000.jpg\n")
    with pytest.raises(DataError, match="val.csv line 2: expected 'filename,label'"):
        mini_imagenet.build(DatasetConfig(source="mini-imagenet", path=str(root)))


def test_real_mini_imagenet_zip_entries(shared_data):
    archive = shared_data / "mini-imagenet" / "mini-imagenet.zip"
    if not archive.is_file():
        pytest.skip("mini-imagenet.zip not in the shared data folder")
    layout = mini_imagenet.locate(str(archive))
    assert layout.prefix == "mini-imagenet/"
    tables = {split: mini_imagenet.read_split(layout, split) for split in mini_imagenet.SPLITS}
    assert [len({label for _, label in rows}) for rows in tables.values()] == [64, 16, 20]
    assert [len(rows) for rows in tables.values()] == [38400, 9600, 12000]
    refs = mini_imagenet.image_refs(layout, tables["test"][:3], "test")
    decoded = images.decode_all(refs, 3, 32, "test")
    assert decoded.shape == (3, 3, 32, 32) and decoded.float().std() > 10
    assert mini_imagenet.count_train_classes(DatasetConfig(source="mini-imagenet", path=str(archive))) == 64


# --------------------------------------------------------------------------------------------
# cifar-fs
# --------------------------------------------------------------------------------------------


def test_embedded_cifar_fs_split_lists():
    lists = cifar_fs.split_classes()
    assert [len(lists[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert len(set().union(*lists.values())) == 100


def test_cifar_fs_builds_splits_from_train_and_test(tmp_path):
    parts = write_cifar(tmp_path / "small-cifar.tar.gz")
    splits = cifar_fs.build(DatasetConfig(source="cifar-fs", path=str(tmp_path / "small-cifar.tar.gz")))
    assert splits["train"].class_names == ("skyscraper", "train", "turtle")
    assert splits["val"].class_names == ("motorcycle", "otter")
    assert splits["test"].class_names == ("baby", "bed")
    train = splits["train"]
    assert train.images.shape == (3 * 7, 3, 32, 32) and torch.bincount(train.labels).tolist() == [7, 7, 7]
    # first image of "train" (fine label 0, local id 1): official train image 0, row-major CHW layout
    first = int((train.labels == 1).nonzero()[0])
    assert torch.equal(train.images[first], torch.from_numpy(parts["train"][0][0].reshape(3, 32, 32)))
    # its last image comes from the official test set
    last = int((train.labels == 1).nonzero()[-1])
    assert torch.equal(train.images[last], torch.from_numpy(parts["test"][0][len(CIFAR_NAMES)].reshape(3, 32, 32)))
    assert train.mean == cifar_fs.CIFAR_FS_MEAN and train.std == cifar_fs.CIFAR_FS_STD


def test_cifar_fs_resize_grey_and_folder_path(tmp_path):
    write_cifar(tmp_path / "cifar-mine.tar.gz")
    splits = cifar_fs.build(DatasetConfig(source="cifar-fs", path=str(tmp_path / "cifar-mine.tar.gz"), image_size=16, channels=1))
    assert splits["val"].images.shape == (2 * 7, 1, 16, 16) and len(splits["val"].mean) == 1


def test_cifar_fs_md5_checked_for_official_name(tmp_path):
    folder_path = tmp_path / "cifar"
    folder_path.mkdir()
    write_cifar(folder_path / cifar_fs.OFFICIAL_NAME)
    with pytest.raises(DataError, match="does not match the official md5"):
        cifar_fs.build(DatasetConfig(source="cifar-fs", path=str(folder_path)))
    md5 = hashlib.md5((folder_path / cifar_fs.OFFICIAL_NAME).read_bytes()).hexdigest()
    images_, labels, names = cifar_fs.load_archive(folder_path / cifar_fs.OFFICIAL_NAME, md5)
    assert images_.shape == (8 * 7, 3, 32, 32) and names == CIFAR_NAMES


def test_cifar_fs_errors(tmp_path):
    with pytest.raises(DataError, match=r"not found at .*cifar-100-python.tar.gz: download https://www.cs.toronto.edu"):
        cifar_fs.build(DatasetConfig(source="cifar-fs", path=str(tmp_path)))
    broken = tmp_path / "broken.tar.gz"
    write_cifar(broken)
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(DataError, match="truncated or not a tar.gz"):
        cifar_fs.build(DatasetConfig(source="cifar-fs", path=str(broken)))
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        for name in ("train", "test", "meta"):
            data = pickle.dumps({"data": Path("x")})
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="not a CIFAR-100 python pickle.*refusing to load pathlib"):
        cifar_fs.build(DatasetConfig(source="cifar-fs", path=str(evil)))


def test_cifar_fs_download_is_md5_checked_and_atomic(tmp_path, monkeypatch):
    payload = tmp_path / "served.tar.gz"
    write_cifar(payload)

    class Response(io.BytesIO):
        headers = {"Content-Length": str(payload.stat().st_size)}

    monkeypatch.setattr(cifar_fs.urllib.request, "urlopen", lambda url, timeout: Response(payload.read_bytes()))
    target = tmp_path / "dl"
    with pytest.raises(DataError, match="does not match the official md5"):
        cifar_fs.build(DatasetConfig(source="cifar-fs", path=str(target), download=True))
    assert not target.exists() or list(target.iterdir()) == []  # nothing half-written left behind
    monkeypatch.setattr(cifar_fs, "OFFICIAL_MD5", hashlib.md5(payload.read_bytes()).hexdigest())
    splits = cifar_fs.build(DatasetConfig(source="cifar-fs", path=str(target), download=True))
    assert (target / cifar_fs.OFFICIAL_NAME).is_file() and splits["test"].n_classes == 2


# --------------------------------------------------------------------------------------------
# folder
# --------------------------------------------------------------------------------------------


def write_tree(root: Path, mode="RGB", classes=None) -> None:
    classes = classes or {"train": ["b", "a"], "val": ["c"], "test": ["d"]}
    for split, names in classes.items():
        for c, name in enumerate(names):
            (root / split / name).mkdir(parents=True)
            for k in range(2):
                value = 30 * c + 100 * k
                solid(value if mode == "L" else (value, 0, 0), (6, 6), mode).save(root / split / name / f"{k}.png")


def test_folder_rgb_and_grey(tmp_path):
    write_tree(tmp_path / "rgb")
    splits = folder.build(DatasetConfig(source="folder", path=str(tmp_path / "rgb"), image_size=8))
    train = splits["train"]
    assert train.class_names == ("a", "b") and train.images.shape == (4, 3, 8, 8)
    assert train.labels.tolist() == [0, 0, 1, 1]
    assert train.images[:, 0, 0, 0].tolist() == [30, 130, 0, 100]  # "a" was the 2nd folder written
    red = train.images[:, 0].double() / 255
    assert train.mean[0] == pytest.approx(red.mean().item(), abs=1e-6)  # train-split statistics
    write_tree(tmp_path / "grey", mode="L")
    grey = folder.build(DatasetConfig(source="folder", path=str(tmp_path / "grey"), image_size=8))
    assert grey["val"].images.shape == (2, 1, 8, 8) and len(grey["val"].mean) == 1
    forced = folder.build(DatasetConfig(source="folder", path=str(tmp_path / "grey"), image_size=8, channels=3))
    assert forced["test"].images.shape == (2, 3, 8, 8)
    assert folder.count_train_classes(DatasetConfig(source="folder", path=str(tmp_path / "grey"))) == 2


def test_folder_errors(tmp_path):
    def build(root):
        return folder.build(DatasetConfig(source="folder", path=str(root), image_size=8))

    write_tree(tmp_path / "nosplit", classes={"train": ["a"], "val": ["b"]})
    with pytest.raises(DataError, match=r"split folder missing: .*nosplit/test"):
        build(tmp_path / "nosplit")
    write_tree(tmp_path / "empty")
    (tmp_path / "empty" / "val" / "e").mkdir()
    with pytest.raises(DataError, match=r"class folder .*empty/val/e has no images"):
        build(tmp_path / "empty")
    write_tree(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "test" / "d" / "2.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot (read|decode) image .*corrupt/test/d/2.png"):
        build(tmp_path / "corrupt")
    with pytest.raises(DataError, match="image folder not found"):
        build(tmp_path / "absent")


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def test_registry_names():
    assert set(DATASETS) == {"glyphs", "mini-imagenet", "cifar-fs", "folder"}


def test_prepare_dataset_skips_current_cache_and_rebuilds_stale(tmp_path, monkeypatch):
    config = experiment(tmp_path, tiny=SMALL_GLYPHS)
    paths = prepare_dataset(config, "tiny")
    assert set(paths) == {"train", "val", "test"}
    assert paths["train"] == tmp_path / "data" / "tiny" / "16px" / "train.pt"
    split = load_split(paths["val"])
    assert split.n_classes == 3 and split.images.shape == (18, 1, 16, 16)
    stamps = {k: p.stat().st_mtime_ns for k, p in paths.items()}

    calls = []
    monkeypatch.setitem(DATASETS, "glyphs", lambda c: calls.append(c) or glyphs.build(c))
    prepare_dataset(config, "tiny")
    assert calls == [] and {k: p.stat().st_mtime_ns for k, p in paths.items()} == stamps
    prepare_dataset(config, "tiny", force=True)
    assert len(calls) == 1
    changed = experiment(tmp_path, tiny=DatasetConfig(**{**SMALL_GLYPHS.__dict__, "train_classes": 5}))
    prepare_dataset(changed, "tiny")  # the cache no longer matches the dataset config
    assert len(calls) == 2 and load_split(paths["train"]).n_classes == 5


def test_prepare_dataset_leaves_nothing_on_error(tmp_path):
    config = experiment(tmp_path, mini=DatasetConfig(source="mini-imagenet", path=str(tmp_path / "absent")))
    with pytest.raises(DataError, match="dataset 'mini' \\(mini-imagenet\\): mini-ImageNet not found"):
        prepare_dataset(config, "mini")
    assert not (tmp_path / "data").exists()
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        prepare_dataset(config, "nope")


def test_n_train_classes_without_and_with_cache(tmp_path):
    write_tree(tmp_path / "tree")
    write_cifar(tmp_path / "c.tar.gz")
    config = experiment(
        tmp_path,
        g=SMALL_GLYPHS,
        f=DatasetConfig(source="folder", path=str(tmp_path / "tree"), image_size=8),
        c=DatasetConfig(source="cifar-fs", path=str(tmp_path / "c.tar.gz")),
    )
    assert [n_train_classes(config, name) for name in ("g", "f", "c")] == [4, 2, 64]
    prepare_dataset(config, "c")  # the small archive has only 3 train classes: the cache is authoritative
    assert n_train_classes(config, "c") == 3
    (tmp_path / "data" / "c" / "32px" / "dataset.json").unlink()  # a cache without its record
    assert n_train_classes(config, "c") == 3
