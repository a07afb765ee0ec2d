"""``purer prepare``'s cache: built in a temporary folder and swapped in whole, rebuilt when its record
is missing or unreadable, and invalidated by a change of the source data (path or content)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import purer.io
from purer.cli import main as cli
from purer.config import DatasetConfig, ExperimentConfig, PoolConfig
from purer.data import folder, glyphs, registry
from purer.data.cache import load_split
from purer.data.registry import DATASETS, prepare_dataset, source_signature
from purer.errors import DataError
from purer.io import atomic_dir, remove_stale_dirs

REPO_ROOT = Path(__file__).resolve().parents[1]
GLYPHS = DatasetConfig(train_classes=4, val_classes=3, test_classes=2, images_per_class=3, image_size=16)
CHANGED = DatasetConfig(train_classes=5, val_classes=4, test_classes=3, images_per_class=3, image_size=16)
CLASS_COUNTS = {"old": (4, 3, 2), "new": (5, 4, 3)}


def experiment(tmp_path: Path, dataset: DatasetConfig) -> ExperimentConfig:
    return ExperimentConfig(data_dir=str(tmp_path / "data"), datasets={"ds": dataset}, pool=PoolConfig(datasets=("ds",)))


def cache_folder(tmp_path: Path, size: int = 16) -> Path:
    return tmp_path / "data" / "ds" / f"{size}px"


def class_counts(folder_: Path) -> tuple[int, ...]:
    return tuple(load_split(folder_ / f"{split}.pt").n_classes for split in ("train", "val", "test"))


def snapshot(folder_: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder_.iterdir())}


def temporaries(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def builds(monkeypatch) -> list[str]:
    """Every builder call, by source name."""
    calls: list[str] = []
    for name, build in (("glyphs", glyphs.build), ("folder", folder.build)):
        monkeypatch.setitem(DATASETS, name, lambda c, name=name, build=build: calls.append(name) or build(c))
    return calls


def test_interrupted_prepare_keeps_the_old_cache_and_the_rerun_rebuilds(tmp_path, monkeypatch, builds):
    prepare_dataset(experiment(tmp_path, GLYPHS), "ds")
    cache = cache_folder(tmp_path)
    before = snapshot(cache)
    written = []

    def disk_full_after_one_split(path, split):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        save_split(path, split)

    save_split = registry.save_split
    monkeypatch.setattr(registry, "save_split", disk_full_after_one_split)
    with pytest.raises(OSError, match="No space left"):
        prepare_dataset(experiment(tmp_path, CHANGED), "ds")
    assert len(written) == 1  # one new split was written (into the temporary folder) before the fault
    assert snapshot(cache) == before  # the old cache, byte for byte: no new train.pt beside old val/test
    assert class_counts(cache) == CLASS_COUNTS["old"]
    assert temporaries(cache.parent) == []  # the temporary folder went with the exception

    monkeypatch.setattr(registry, "save_split", save_split)
    prepare_dataset(experiment(tmp_path, CHANGED), "ds")  # the config changed: rebuilt
    assert class_counts(cache) == CLASS_COUNTS["new"]
    assert json.loads((cache / "dataset.json").read_text())["splits"]["train"]["n_classes"] == 5
    assert builds == ["glyphs", "glyphs", "glyphs"]


KILL_AFTER_ONE_SPLIT = """
import os, signal, sys
import purer.io
from purer.cli import main as cli
from purer.data import registry
save_split = registry.save_split
def save_then_die(path, split):
    save_split(path, split)
    os.kill(os.getpid(), signal.SIGKILL)  # a kill between two split writes
registry.save_split = save_then_die
sys.exit(cli.main(["prepare", "-c", sys.argv[1]]))
"""


def test_prepare_killed_between_split_writes_leaves_the_old_cache_and_the_rerun_rebuilds(write_config, tmp_path):
    pool = {"datasets": ["ds"]}
    old = write_config({"datasets": {"ds": GLYPHS.__dict__}, "pool": pool}, name="old.yaml")
    new = write_config({"datasets": {"ds": CHANGED.__dict__}, "pool": pool}, name="new.yaml")
    assert cli.main(["prepare", "-c", str(old)]) == 0
    cache = cache_folder(tmp_path)
    before = snapshot(cache)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PURER_NO_PROGRESS": "1"}
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL_AFTER_ONE_SPLIT), str(new)], env=env, timeout=300)
    assert killed.returncode == -9
    assert snapshot(cache) == before and class_counts(cache) == CLASS_COUNTS["old"]
    (left,) = temporaries(cache.parent)  # the killed build's folder, holding one split and no record
    assert left.startswith(".16px.") and os.listdir(cache.parent / left) == ["train.pt"]

    assert cli.main(["prepare", "-c", str(new)]) == 0
    assert class_counts(cache) == CLASS_COUNTS["new"]
    assert temporaries(cache.parent) == []  # the dead process's folder was removed
    assert cli.main(["prepare", "-c", str(old)]) == 0  # and back: rebuilt again, never mixed
    assert class_counts(cache) == CLASS_COUNTS["old"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda record: record.unlink(),
        lambda record: record.write_text("{not json"),
        lambda record: record.write_text(record.read_text()[: len(record.read_text()) // 2]),
        lambda record: record.write_text(json.dumps({"format": "purer-dataset/1", "config": {}})),
    ],
    ids=["missing", "garbage", "truncated", "no-splits"],
)
def test_a_missing_or_unreadable_record_means_incomplete(tmp_path, builds, damage, caplog):
    config = experiment(tmp_path, GLYPHS)
    prepare_dataset(config, "ds")
    prepare_dataset(config, "ds")
    assert builds == ["glyphs"]  # complete and current: kept
    damage(cache_folder(tmp_path) / "dataset.json")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="purer.data.registry"):
        prepare_dataset(config, "ds")
    assert builds == ["glyphs", "glyphs"]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"ds: the cache in {cache_folder(tmp_path)} has no readable dataset.json (incomplete); rebuilding"
    ]
    assert json.loads((cache_folder(tmp_path) / "dataset.json").read_text())["name"] == "ds"


def test_a_mixed_cache_without_a_record_is_rebuilt_whole(tmp_path, builds):
    """The state an interrupted build of earlier versions left: a new train.pt beside old val/test, no record."""
    prepare_dataset(experiment(tmp_path, GLYPHS), "ds")
    cache = cache_folder(tmp_path)
    registry.save_split(cache / "train.pt", glyphs.build(CHANGED)["train"])
    (cache / "dataset.json").unlink()
    assert class_counts(cache) == (5, 3, 2)  # mixed
    prepare_dataset(experiment(tmp_path, CHANGED), "ds")
    assert class_counts(cache) == CLASS_COUNTS["new"]


def write_tree(root: Path, seed: int = 0) -> None:
    """Two random grey PNGs per class; disjoint class names per split."""
    generator = np.random.default_rng(seed)
    for split, classes in (("train", "ab"), ("val", "cd"), ("test", "ef")):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(2):
                pixels = generator.integers(0, 256, (8, 8), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def folder_experiment(tmp_path: Path, path: Path) -> ExperimentConfig:
    return experiment(tmp_path, DatasetConfig(source="folder", path=str(path), image_size=8))


def test_changing_the_path_or_the_source_files_invalidates_the_cache(tmp_path, builds, caplog):
    write_tree(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # same names, sizes and times, another place
    prepare_dataset(folder_experiment(tmp_path, tmp_path / "a"), "ds")
    prepare_dataset(folder_experiment(tmp_path, tmp_path / "a"), "ds")
    assert len(builds) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="purer.data.registry"):
        prepare_dataset(folder_experiment(tmp_path, tmp_path / "b"), "ds")
    assert len(builds) == 2  # another path: rebuilt
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "ds: cached splits were built from a different dataset config or source data; rebuilding"
    ]
    record = json.loads((cache_folder(tmp_path, 8) / "dataset.json").read_text())
    assert record["data"]["path"] == str((tmp_path / "b").resolve())

    image = tmp_path / "b" / "val" / "c" / "1.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(image)
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later time even on coarse clocks
    prepare_dataset(folder_experiment(tmp_path, tmp_path / "b"), "ds")
    assert len(builds) == 3  # a changed image: rebuilt
    assert int(load_split(cache_folder(tmp_path, 8) / "val.pt").images[1].max()) == 0  # c/1.png, now black

    (tmp_path / "b" / "test" / "f" / "2.png").write_bytes((tmp_path / "b" / "test" / "f" / "1.png").read_bytes())
    prepare_dataset(folder_experiment(tmp_path, tmp_path / "b"), "ds")
    assert len(builds) == 4  # an added image: rebuilt
    (tmp_path / "b" / "train" / ".DS_Store").write_bytes(b"finder")
    prepare_dataset(folder_experiment(tmp_path, tmp_path / "b"), "ds")
    assert len(builds) == 4  # a hidden file, which the source skips too: kept


def test_a_cache_whose_source_is_gone_is_kept_but_another_path_is_not(tmp_path, builds, caplog):
    """A cache fetched without its raw data (``dvc pull``) stays usable; a new ``path`` still invalidates it."""
    write_tree(tmp_path / "a")
    prepare_dataset(folder_experiment(tmp_path, tmp_path / "a"), "ds")
    (tmp_path / "a").rename(tmp_path / "moved")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="purer.data.registry"):
        prepare_dataset(folder_experiment(tmp_path, tmp_path / "a"), "ds")
    assert len(builds) == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"ds: no source data at {(tmp_path / 'a').resolve()}; keeping the cached splits built from it"
    ]
    assert registry.n_train_classes(folder_experiment(tmp_path, tmp_path / "a"), "ds") == 2
    with pytest.raises(DataError, match="image folder not found"):
        prepare_dataset(folder_experiment(tmp_path, tmp_path / "a"), "ds", force=True)
    with pytest.raises(DataError, match="image folder not found"):
        prepare_dataset(folder_experiment(tmp_path, tmp_path / "elsewhere"), "ds")
    assert class_counts(cache_folder(tmp_path, 8)) == (2, 2, 2)  # the failed rebuild left the cache alone


def test_source_signature_of_a_file_a_folder_and_no_path(tmp_path):
    archive = tmp_path / "data.zip"
    archive.write_bytes(b"12345")
    first = source_signature(DatasetConfig(source="mini-imagenet", path=str(archive)))
    assert first["path"] == str(archive.resolve()) and len(first["signature"]) == 64
    archive.write_bytes(b"123456")
    assert source_signature(DatasetConfig(source="mini-imagenet", path=str(archive))) != first
    assert source_signature(DatasetConfig(source="glyphs")) is None
    assert source_signature(DatasetConfig(source="folder", path=str(tmp_path / "absent")))["signature"] is None
    write_tree(tmp_path / "tree")
    os.symlink(tmp_path / "tree", tmp_path / "tree" / "train" / "loop")  # a symlink loop ends the walk
    assert len(source_signature(DatasetConfig(source="folder", path=str(tmp_path / "tree")))["signature"]) == 64


def test_a_cifar_folder_is_signed_by_its_archive_only(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "cifar-100-python.tar.gz").write_bytes(b"archive")
    (raw / "notes.txt").write_text("unrelated")
    dataset = DatasetConfig(source="cifar-fs", path=str(raw))
    first = source_signature(dataset)
    (raw / "notes.txt").write_text("unrelated, edited")
    (raw / "other-dataset").mkdir()
    assert source_signature(dataset) == first
    (raw / "cifar-100-python.tar.gz").write_bytes(b"another archive")
    assert source_signature(dataset)["signature"] != first["signature"]
    assert first["path"] == str(raw.resolve())


def test_atomic_dir_swaps_whole_folders_and_removes_what_dead_writers_left(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
        (tmp / "b.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("interrupted")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.txt": "first", "b.txt": "first"}
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("third")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a.txt": "third"}  # b.txt is gone
    assert temporaries(tmp_path) == []

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = purer.io._owner().rsplit("-", 1)[0]
    live_dir = tmp_path / f".out.{host}-{os.getpid()}.abc123.tmp"
    dead_dir = tmp_path / f".out.{host}-{int(dead.stdout)}.abc123.tmp"
    other_host = tmp_path / f".out.elsewhere-{int(dead.stdout)}.abc123.tmp"
    for folder_ in (live_dir, dead_dir, other_host):
        folder_.mkdir()
    assert remove_stale_dirs(target) == 1
    assert temporaries(tmp_path) == sorted([live_dir.name, other_host.name])
