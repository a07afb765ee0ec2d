"""Every bad input through the command line: exit status 2, one line on stderr naming the file or key
and what was expected, no traceback, and nothing written by the failing step.

The catalogue of these messages is docs/errors.md.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pool_helpers import fake_checkpoint, synthetic_split

from purer import paths
from purer.cli.main import main
from purer.config import load_config
from purer.data.cache import save_split
from purer.models.pool import teacher_specs

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) ")


def fails(capsys, argv: list[str], match: str, *absent: Path) -> str:
    """Run ``purer ARGV``; assert exit 2, one ``purer <step>: error: ...`` line matching ``match``
    beside the log lines, no traceback, and that no path in ``absent`` exists. Returns the line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"purer {argv[0]}: error: "), lines[0]
    assert re.search(match, lines[0]), lines[0]
    for path in absent:
        assert not Path(path).exists(), f"{path} was left behind"
    return lines[0]


# --------------------------------------------------------------------------------------------
# A tiny trained setup: synthetic caches, two Conv4 teachers (untrained weights), a manifest
# --------------------------------------------------------------------------------------------


def _raw(root: Path, **sections) -> dict:
    raw = {
        "experiment": "bad",
        "seed": 0,
        "data_dir": str(root / "data"),
        "results_dir": str(root / "results"),
        "datasets": {"toy": {"source": "folder", "path": str(root / "raw"), "image_size": 16}},
        "pool": {"datasets": ["toy"], "n_way": 3, "epochs": 1, "batch_size": 8, "conv4_width": 4},
        "meta_train": {"meta_model_width": 4, "n_way": 3, "n_query": 2, "meta_batch_size": 1, "iterations": 2,
                       "val_interval": 2, "val_episodes": 2, "checkpoint_interval": 2, "grid_snapshots": 1,
                       "init": "random"},
        "meta_test": {"n_way": 3, "n_query": 2, "episodes": 2},
    }
    for key, value in sections.items():
        raw[key] = raw.get(key, {}) | value
    return raw


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    """Config, caches (test split: 10 classes), two teachers, manifest and a 2-iteration purer run."""
    root = tmp_path_factory.mktemp("setup")
    config_file = _write(root / "config.yaml", _raw(root))
    config = load_config(config_file)
    for split, n_classes, seed in (("train", 6, 0), ("val", 4, 1), ("test", 10, 2)):
        save_split(paths.dataset_cache(config, "toy", split), synthetic_split(n_classes, 6, 16, 1, seed))
    for spec in teacher_specs(config):
        fake_checkpoint(spec, paths.teacher_path(config, spec.index), channels=1, seed=spec.index)
    assert main(["pool", "manifest", "-c", str(config_file)]) == 0
    assert main(["meta-train", "-c", str(config_file), "--method", "purer", "--n-shot", "1", "--seed", "0"]) == 0
    return config_file


@pytest.fixture
def copy(setup, tmp_path) -> Path:
    """A private copy of the setup (its config points into the copy), for tests that damage files."""
    root = tmp_path / "copy"
    for folder in ("data", "results"):
        shutil.copytree(setup.parent / folder, root / folder)
    return _write(root / "config.yaml", _raw(root))


def _pool(config_file: Path) -> Path:
    return paths.pool_dir(load_config(config_file))


def _run(config_file: Path, seed: int = 0, method: str = "purer") -> Path:
    return paths.run_dir(load_config(config_file), method, 1, seed)


def _train(config_file: Path, *extra: str, seed: int = 5, method: str = "purer") -> list[str]:
    return ["meta-train", "-c", str(config_file), "--method", method, "--n-shot", "1", "--seed", str(seed), *extra]


def _test(config_file: Path, out: Path, *extra: str) -> list[str]:
    return ["meta-test", "-c", config_file, "--method", "purer", "--n-shot", "1", "--seed", "0", "--out", out, *extra]


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def test_unknown_key_in_the_config_file(setup, capsys, tmp_path):
    raw = _raw(setup.parent)
    raw["meta_train"]["outer_lrr"] = 0.001
    bad = _write(tmp_path / "bad.yaml", raw)
    fails(capsys, _train(bad), rf"{re.escape(str(bad))}: unknown key meta_train\.outer_lrr \(valid keys in "
          r"meta_train: \[.*'outer_lr'", _run(setup, 5))


def test_mistyped_key_in_an_override(setup, capsys):
    fails(capsys, ["pool", "train", "-c", setup, "--teacher", "0", "--out", setup.parent / "new_pool",
                   "--set", "pool.n_wya=3"], r"unknown key pool\.n_wya \(valid keys in pool: ", setup.parent / "new_pool")


def test_wrong_type(setup, capsys):
    fails(capsys, _train(setup, "--set", "meta_train.iterations=many"),
          r"meta_train\.iterations: expected an integer, got 'many'", _run(setup, 5))


def test_negative_learning_rate(setup, capsys):
    fails(capsys, ["pool", "train", "-c", setup, "--teacher", "0", "--out", setup.parent / "new_pool",
                   "--set", "pool.lr=-0.1"], r"pool\.lr: expected a positive number, got -0\.1",
          setup.parent / "new_pool")
    fails(capsys, _train(setup, "--set", "meta_train.outer_lr=-0.001"),
          r"meta_train\.outer_lr: expected a positive number, got -0\.001", _run(setup, 5))


def test_zero_shots_on_the_command_line(setup, capsys, tmp_path):
    fails(capsys, ["meta-train", "-c", setup, "--method", "purer", "--n-shot", "0", "--seed", "5"],
          r"n_shot: expected at least 1, got 0", paths.run_dir(load_config(setup), "purer", 0, 5))
    fails(capsys, ["meta-test", "-c", setup, "--method", "purer", "--n-shot", "0", "--seed", "0",
                   "--run", _run(setup), "--out", tmp_path / "out"], r"n_shot: expected at least 1, got 0", tmp_path / "out")


def test_zero_shots_in_the_grid(setup, capsys):
    fails(capsys, _train(setup, "--set", "grid.shots=[1, 0]"),
          r"grid\.shots: expected values of at least 1, got \(1, 0\)", _run(setup, 5))


def test_more_ways_than_test_classes(setup, capsys, tmp_path):
    fails(capsys, _test(setup, tmp_path / "out", "--set", "meta_test.n_way=50"),
          r"toy/test: n_way=50 but the split has only 10 classes", tmp_path / "out")


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


def _prepare(tmp_path: Path, source: str, path: Path, **extra) -> Path:
    raw = _raw(tmp_path, datasets={})
    raw["datasets"] = {"ds": {"source": source, "path": str(path), "image_size": 16, **extra}}
    raw["pool"]["datasets"] = ["ds"]
    return _write(tmp_path / "prepare.yaml", raw)


def _cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "data" / "ds"


def _image_tree(root: Path, splits=("train", "val", "test"), classes=("a", "b", "c"), size: int = 8) -> None:
    """Two random grey PNGs per class in ``<root>/<split>/<class>/`` (``<split>_<class>`` outside train:
    the splits have disjoint classes)."""
    generator = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            folder = root / split / (name if split == "train" else f"{split}_{name}")
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(2):
                pixels = generator.integers(0, 256, (size, size), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_missing_mini_imagenet(capsys, tmp_path):
    config = _prepare(tmp_path, "mini-imagenet", tmp_path / "nowhere")
    fails(capsys, ["prepare", "-c", config],
          rf"dataset 'ds' \(mini-imagenet\): mini-ImageNet not found at {re.escape(str(tmp_path / 'nowhere'))}: "
          r"expected a folder with images/ and train\.csv, val\.csv, test\.csv", _cache_dir(tmp_path))


def test_mini_imagenet_zip_that_is_not_a_zip(capsys, tmp_path):
    archive = tmp_path / "mini-imagenet.zip"
    archive.write_bytes(b"not a zip archive\n" * 10)
    fails(capsys, ["prepare", "-c", _prepare(tmp_path, "mini-imagenet", archive)],
          rf"{re.escape(str(archive))} is not a readable zip archive \(File is not a zip file\)",
          _cache_dir(tmp_path))


def test_mini_imagenet_zip_without_the_csvs(capsys, tmp_path):
    archive = tmp_path / "mini-imagenet.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("mini-imagenet/images/x.jpg", b"")
    fails(capsys, ["prepare", "-c", _prepare(tmp_path, "mini-imagenet", archive)],
          rf"zip {re.escape(str(archive))} has no train\.csv, val\.csv and test\.csv side by side",
          _cache_dir(tmp_path))


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("cifar-100-python.tar.gz", r"does not match the official md5 eb9058c3a382ffc7106e4002c42a8d85: "
                                    r"the file is damaged or not the official archive"),
        ("my-cifar.tar.gz", r"is truncated or not a tar\.gz archive \(ReadError: not a gzip file\)"),
    ],
)
def test_cifar_archive_that_is_garbage(capsys, tmp_path, name, match):
    archive = tmp_path / name
    archive.write_bytes(bytes(range(256)) * 20)
    fails(capsys, ["prepare", "-c", _prepare(tmp_path, "cifar-fs", archive)],
          rf"dataset 'ds' \(cifar-fs\): {re.escape(str(archive))} {match}", _cache_dir(tmp_path))


def test_missing_cifar_archive(capsys, tmp_path):
    fails(capsys, ["prepare", "-c", _prepare(tmp_path, "cifar-fs", tmp_path / "cifar")],
          r"CIFAR-100 archive not found at .*cifar-100-python\.tar\.gz: download https://", _cache_dir(tmp_path))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda data: data[: len(data) // 2], r"cannot decode image {}: OSError: image file is truncated"),
        (lambda data: b"not an image", r"cannot read image {}: UnidentifiedImageError: cannot identify image file"),
    ],
    ids=["truncated", "not-an-image"],
)
def test_corrupt_image_in_a_folder_dataset(capsys, tmp_path, damage, match):
    _image_tree(tmp_path / "images", size=32)
    image = tmp_path / "images" / "train" / "b" / "1.png"
    image.write_bytes(damage(image.read_bytes()))
    fails(capsys, ["prepare", "-c", _prepare(tmp_path, "folder", tmp_path / "images")],
          r"dataset 'ds' \(folder\): " + match.format(re.escape(str(image))), _cache_dir(tmp_path))


def test_folder_dataset_without_a_split_folder(capsys, tmp_path):
    _image_tree(tmp_path / "images", splits=("train", "test"))
    fails(capsys, ["prepare", "-c", _prepare(tmp_path, "folder", tmp_path / "images")],
          rf"split folder missing: {re.escape(str(tmp_path / 'images' / 'val'))} "
          r"\(expected <path>/\{train,val,test\}/<class>/<image>\)", _cache_dir(tmp_path))


def test_empty_class_folder(capsys, tmp_path):
    _image_tree(tmp_path / "images")
    (tmp_path / "images" / "val" / "empty").mkdir()
    fails(capsys, ["prepare", "-c", _prepare(tmp_path, "folder", tmp_path / "images")],
          rf"class folder {re.escape(str(tmp_path / 'images' / 'val' / 'empty'))} has no images",
          _cache_dir(tmp_path))


def _ravi(root: Path) -> None:
    """A valid mini-ImageNet folder layout: images/ and three CSVs, two images per class."""
    (root / "images").mkdir(parents=True)
    for split, labels in (("train", ["n01", "n02"]), ("val", ["n03"]), ("test", ["n04"])):
        rows = ["filename,label"]
        for label in labels:
            for i in range(2):
                rows.append(f"{label}_{i}.jpg,{label}")
                Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(root / "images" / f"{label}_{i}.jpg")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize(
    ("split", "row", "match"),
    [
        ("train", "n09_0.jpg,n09",
         r"train\.csv lists n09_0\.jpg \(label n09\), but .*images/n09_0\.jpg does not exist"),
        ("test", "n01_0.jpg,n01", r"label n01 is in both train\.csv and test\.csv of .*: "
                                  r"the splits must have disjoint classes"),
        ("val", "n03_1.jpg", r"val\.csv line 4: expected 'filename,label', got 'n03_1\.jpg'"),
    ],
    ids=["missing-image", "label-in-two-splits", "row-without-label"],
)
def test_mini_imagenet_csv_errors(capsys, tmp_path, split, row, match):
    _ravi(tmp_path / "mini")
    with open(tmp_path / "mini" / f"{split}.csv", "a") as handle:
        handle.write(row + "\n")
    fails(capsys, ["prepare", "-c", _prepare(tmp_path, "mini-imagenet", tmp_path / "mini")],
          rf"dataset 'ds' \(mini-imagenet\): .*{match}", _cache_dir(tmp_path))


# --------------------------------------------------------------------------------------------
# Checkpoints and the pool manifest
# --------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def test_truncated_teacher_checkpoint(copy, capsys):
    teacher = _pool(copy) / "teacher_00.pt"
    _truncate(teacher)
    message = rf"teacher checkpoint {re.escape(str(teacher))} is truncated or not a torch file \(RuntimeError: "
    fails(capsys, _train(copy), message + r"PytorchStreamReader failed reading zip archive: "
          r"failed finding central directory\)$", _run(copy, 5))
    (_pool(copy) / "manifest.yaml").unlink()
    fails(capsys, ["pool", "manifest", "-c", copy], message, _pool(copy) / "manifest.yaml")


def test_truncated_meta_model(copy, capsys, tmp_path):
    model = _run(copy) / "meta_model.pt"
    _truncate(model)
    fails(capsys, _test(copy, tmp_path / "out"),
          rf"meta model {re.escape(str(model))} is truncated or not a torch file \(RuntimeError: ", tmp_path / "out")


def test_missing_meta_model(setup, capsys, tmp_path):
    fails(capsys, _test(setup, tmp_path / "out", "--run", tmp_path / "no_run"),
          rf"meta model not found: {re.escape(str(tmp_path / 'no_run' / 'meta_model.pt'))}", tmp_path / "out")


def _edit_manifest(config_file: Path, edit) -> Path:
    path = _pool(config_file) / "manifest.yaml"
    raw = yaml.safe_load(path.read_text())
    edit(raw)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_manifest_naming_a_missing_checkpoint(copy, capsys):
    manifest = _edit_manifest(copy, lambda raw: raw["teachers"][1].update(checkpoint="teacher_09.pt"))
    fails(capsys, _train(copy), rf"pool manifest {re.escape(str(manifest))}: teachers\[1\]\.checkpoint: "
          rf"file not found: {re.escape(str(manifest.parent / 'teacher_09.pt'))}", _run(copy, 5))


def test_checkpoint_of_another_architecture(copy, capsys):
    teacher = _pool(copy) / "teacher_00.pt"
    _edit_manifest(copy, lambda raw: raw["teachers"][0].update(architecture="resnet10", arch_kwargs={}))
    fails(capsys, _train(copy), rf"checkpoint {re.escape(str(teacher))} does not match architecture resnet10: "
          r"Error\(s\) in loading state_dict for ResNet: Missing key\(s\) in state_dict: .* \.\.\.$", _run(copy, 5))


def test_manifest_class_ids_out_of_range(copy, capsys):
    manifest = _edit_manifest(copy, lambda raw: raw["teachers"][1].update(classes=[3, 4, 9]))
    fails(capsys, _train(copy), rf"pool manifest {re.escape(str(manifest))}: teachers\[1\]\.classes: class id 9 "
          r"out of range \(dataset 'toy' holds global ids 0\.\.5; 6 classes in all\)", _run(copy, 5))


def test_average_of_a_mixed_pool(tmp_path, capsys):
    raw = _raw(tmp_path, pool={"architectures": ["conv4", "resnet10"]})
    config_file = _write(tmp_path / "mixed.yaml", raw)
    config = load_config(config_file)
    for split, n_classes, seed in (("train", 6, 0), ("val", 4, 1), ("test", 4, 2)):
        save_split(paths.dataset_cache(config, "toy", split), synthetic_split(n_classes, 6, 16, 1, seed))
    for spec in teacher_specs(config):
        fake_checkpoint(spec, paths.teacher_path(config, spec.index), channels=1)
    assert main(["pool", "manifest", "-c", str(config_file)]) == 0
    capsys.readouterr()
    fails(capsys, _train(config_file, method="average", seed=0),
          r"average needs a pool of one architecture matching the meta model \(conv4\); "
          r"this pool has conv4 ×1, resnet10 ×1", paths.run_dir(config, "average", 1, 0))


# --------------------------------------------------------------------------------------------
# Non-finite inversion losses
# --------------------------------------------------------------------------------------------


def _poison_teacher(config_file: Path) -> None:
    """NaN head weights in teacher 0: its logits, hence the data loss's CE term, are NaN."""
    teacher = _pool(config_file) / "teacher_00.pt"
    payload = torch.load(teacher, weights_only=False)
    for name in ("head.weight", "head.bias"):
        payload["state_dict"][name] = torch.full_like(payload["state_dict"][name], float("nan"))
    torch.save(payload, teacher)


def test_nonfinite_data_loss_stops(copy, capsys):
    _poison_teacher(copy)
    run = _run(copy, 5)
    fails(capsys, _train(copy), rf"meta-training {re.escape(str(run))}: the data loss is not finite at "
          r"meta-iteration 1 \(term ce\); check meta_train\.inversion\.data_lr, meta_train\.inversion\.ce_weight, "
          r"the teachers' weights; or set meta_train\.inversion\.on_nonfinite: skip to skip such steps$",
          run / "meta_model.pt", run / "last.pt", run / "summary.json", run / "checkpoint.pt")


def test_nonfinite_data_loss_can_be_skipped(copy, capsys):
    _poison_teacher(copy)
    assert main(_train(copy, "--set", "meta_train.inversion.on_nonfinite=skip", "--out", str(_run(copy, 5)))) == 0
    err = capsys.readouterr().err
    assert "not finite at meta-iteration 1 (term ce): skipping this data step" in err
    curve = [json.loads(line) for line in (_run(copy, 5) / "curve.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in curve] == [1, 2]
    assert all(r["loss_ce"] is None and r["loss_outer"] is not None for r in curve)
    assert (_run(copy, 5) / "summary.json").is_file()


def test_errors_never_print_a_traceback_in_a_subprocess(setup):
    """The ``python -m purer`` entry point behaves like ``main``: exit 2, one line."""
    result = subprocess.run([sys.executable, "-m", "purer", "meta-train", "-c", str(setup), "--method", "purer",
                             "--n-shot", "1", "--set", "meta_train.outer_lrr=1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1
    assert lines[0].startswith(f"purer meta-train: error: {setup}: unknown key meta_train.outer_lrr (valid keys")
