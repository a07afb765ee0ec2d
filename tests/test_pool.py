"""Class partition, teacher specs, global class ids, the pool manifest and the pool CLI."""

from pathlib import Path

import pytest
import torch
import yaml
from pool_helpers import fake_checkpoint, setup_pool

from purer import paths
from purer.cli.main import main
from purer.config import load_config
from purer.errors import CheckpointError, ConfigError
from purer.manual import manual_config
from purer.models.backbones import build_backbone
from purer.models.manifest import load_manifest, load_pool, load_teacher, write_manifest
from purer.models.pool import n_teachers, partition_classes, teacher_spec, teacher_specs

# ---------------------------------------------------------------- partition (docs/method.md §1.1)


def test_disjoint_blocks_short_last():
    assert partition_classes(13, 5) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12]]
    assert partition_classes(10, 5, "disjoint") == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


@pytest.mark.parametrize(("n_classes", "n_way", "k"), [(64, 5, 13), (100, 5, 20), (71, 5, 15), (3, 5, 1)])
def test_disjoint_blocks_cover_once(n_classes, n_way, k):
    blocks = partition_classes(n_classes, n_way)
    assert len(blocks) == k
    assert sorted(c for b in blocks for c in b) == list(range(n_classes))
    assert all(len(b) == n_way for b in blocks[:-1])
    assert blocks == partition_classes(n_classes, n_way)


def test_overlapping_sets():
    sets = partition_classes(20, 5, "overlapping", 30, torch.Generator().manual_seed(1))
    assert len(sets) == 30
    assert all(len(s) == 5 == len(set(s)) and all(0 <= c < 20 for c in s) for s in sets)
    assert len({tuple(sorted(s)) for s in sets}) > 1
    again = partition_classes(20, 5, "overlapping", 30, torch.Generator().manual_seed(1))
    other = partition_classes(20, 5, "overlapping", 30, torch.Generator().manual_seed(2))
    assert sets == again and sets != other
    assert any(s != sorted(s) for s in sets)  # drawn order is kept (= logit order)


def test_partition_errors():
    with pytest.raises(ConfigError, match="generator"):
        partition_classes(20, 5, "overlapping", 3)
    with pytest.raises(ConfigError, match="only 4"):
        partition_classes(4, 5, "overlapping", 3, torch.Generator())
    with pytest.raises(ConfigError, match="unknown mode 'random'"):
        partition_classes(20, 5, "random")


# ---------------------------------------------------------------- specs and global ids


def test_global_ids_over_two_datasets(tmp_path):
    _, config = setup_pool(
        tmp_path, {"toy": 10, "toy2": 7}, architectures=["conv4", "resnet10"], conv4_width=8
    )
    specs = teacher_specs(config)
    assert n_teachers(config) == len(specs) == 4 + 3
    assert [s.classes for s in specs] == [
        (0, 1, 2), (3, 4, 5), (6, 7, 8), (9,),
        (10, 11, 12), (13, 14, 15), (16,),
    ]  # fmt: skip
    assert [s.dataset for s in specs] == ["toy"] * 4 + ["toy2"] * 3
    assert specs[4].local_classes == (0, 1, 2) and specs[6].local_classes == (6,)
    assert [s.architecture for s in specs[:3]] == ["conv4", "resnet10", "conv4"]
    assert specs[0].arch_kwargs == {"width": 8} and specs[1].arch_kwargs == {}
    assert all(s.num_outputs == 3 for s in specs)  # even the short blocks
    assert [s.index for s in specs] == list(range(7))


def test_specs_from_cache_header_and_config(tmp_path):
    _, config = setup_pool(tmp_path, {"toy": 10}, channels=1)
    spec = teacher_specs(config)[0]
    assert (spec.channels, spec.mean, spec.std, spec.image_size) == (1, (0.5,), (0.25,), 16)
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())
    raw["datasets"]["toy"] |= {"channels": 3, "mean": [0.1, 0.2, 0.3], "std": [1, 1, 1]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    spec = teacher_specs(load_config(tmp_path / "config.yaml"))[0]
    assert (spec.channels, spec.mean) == (3, (0.1, 0.2, 0.3))


def test_max_teachers_and_overlapping(tmp_path):
    _, config = setup_pool(tmp_path, {"toy": 10, "toy2": 7}, max_teachers=5)
    assert len(teacher_specs(config)) == 5
    _, config = setup_pool(tmp_path, {"toy": 10, "toy2": 7}, partition="overlapping", n_teachers=6)
    specs = teacher_specs(config)
    assert [s.dataset for s in specs] == ["toy", "toy2"] * 3
    for s in specs:
        low = 0 if s.dataset == "toy" else 10
        assert [c - low for c in s.classes] == list(s.local_classes) and len(set(s.classes)) == 3
    assert [s.classes for s in teacher_specs(config)] == [s.classes for s in specs]


def test_teacher_index_out_of_range(tmp_path):
    _, config = setup_pool(tmp_path)
    with pytest.raises(ConfigError, match=r"teacher index 4 out of range \(pool has 4 teachers\)"):
        teacher_spec(config, 4)


# ---------------------------------------------------------------- manifest


def _fake_pool(config):
    specs = teacher_specs(config)
    states = [fake_checkpoint(s, paths.teacher_path(config, s.index), seed=s.index) for s in specs]
    return specs, states


def test_manifest_round_trip(tmp_path):
    _, config = setup_pool(tmp_path, {"toy": 10, "toy2": 7}, architectures=["conv4", "resnet10"])
    specs, states = _fake_pool(config)
    path = write_manifest(config)
    assert path == paths.manifest_path(config)
    raw = yaml.safe_load(path.read_text())
    assert raw["format"] == "purer-pool/1"
    assert raw["teachers"][0]["checkpoint"] == "teacher_00.pt"  # relative to the manifest folder
    assert raw["datasets"][1] == {
        "name": "toy2", "offset": 10, "n_classes": 7, "class_names": [f"class{c:02d}" for c in range(7)],
    }  # fmt: skip
    manifest = load_manifest(path)
    assert manifest.n_classes == 17
    assert [t.classes for t in manifest.teachers] == [s.classes for s in specs]
    assert [t.local_classes for t in manifest.teachers] == [s.local_classes for s in specs]
    assert manifest.teachers[1].architecture == "resnet10" and manifest.teachers[0].arch_kwargs == {
        "width": 32
    }
    assert manifest.teachers[0].val_accuracy == 0.75 and manifest.teachers[0].mean == (0.5, 0.5, 0.5)
    pool = load_pool(manifest)
    assert len(pool) == 7
    for (entry, model), state in zip(pool, states, strict=True):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), (entry.index, key)


def test_write_manifest_refuses_stale_checkpoint(tmp_path):
    path, config = setup_pool(tmp_path)
    _fake_pool(config)
    stale = load_config(path, ["pool.n_way=2"])
    fake_checkpoint(teacher_specs(stale)[0], paths.teacher_path(stale, 0))
    for i in range(1, n_teachers(stale)):
        fake_checkpoint(teacher_specs(config)[0], paths.teacher_path(stale, i))
    with pytest.raises(
        CheckpointError, match=r"teacher_01.pt: classes \[0, 1, 2\] does not match .*\[2, 3\]"
    ):
        write_manifest(stale)


def _hand_written(tmp_path: Path, **teacher) -> Path:
    spec = type(
        "S",
        (),
        {"architecture": "conv4", "num_outputs": 2, "image_size": 16, "arch_kwargs": {}, "classes": []},
    )
    torch.save(build_backbone("conv4", 2, 1, 16).state_dict(), tmp_path / "bare.pt")  # a bare state dict
    fake_checkpoint(spec, tmp_path / "ckpt" / "full.pt", channels=1)
    manifest = {
        "datasets": [{"name": "a", "offset": 0, "n_classes": 4}, {"name": "b", "offset": 4, "n_classes": 6}],
        "teachers": [
            {"index": 0, "architecture": "conv4", "checkpoint": "bare.pt", "dataset": "a", "classes": [3, 1],
             "image_size": 16, "channels": 1},
            {"index": 1, "architecture": "conv4", "checkpoint": str(tmp_path / "ckpt" / "full.pt"), "dataset": "b",
             "classes": [9, 4], "image_size": 16, "channels": 1} | teacher,
        ],
    }  # fmt: skip
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_hand_written_manifest_accepted(tmp_path):
    manifest = load_manifest(_hand_written(tmp_path))
    first, second = manifest.teachers
    assert first.checkpoint == tmp_path / "bare.pt" and first.num_outputs == 2 and first.mean is None
    assert second.local_classes == (5, 0) and second.dataset == "b"
    models = load_pool(manifest)
    x = torch.randn(3, 1, 16, 16)
    assert all(model(x).shape == (3, 2) for _, model in models)


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        ({"checkpoint": "missing.pt"}, r"teachers\[1\]\.checkpoint: file not found: .*missing.pt"),
        ({"classes": [4, 10]}, r"teachers\[1\]\.classes: class id 10 out of range .*4\.\.9"),
        ({"classes": [-1, 4]}, r"teachers\[1\]\.classes: class id -1 out of range"),
        ({"classes": [3, 4]}, r"teachers\[1\]\.classes: class id 3 out of range \(dataset 'b'"),
        ({"classes": [4, 4]}, r"teachers\[1\]\.classes: expected distinct"),
        ({"index": 0}, r"teachers\[1\]\.index: duplicate value 0"),
        ({"image_size": None}, r"teachers\[1\]\.image_size: missing key"),
        ({"dataset": "c"}, r"teachers\[1\]\.dataset: 'c' is not among"),
        ({"num_outputs": 1}, r"teachers\[1\]\.num_outputs: 1 logits for 2 classes"),
        ({"channels": "three"}, r"teachers\[1\]\.channels: expected an integer"),
        ({"mean": [0.5, 0.5]}, r"teachers\[1\]\.mean: expected 1 number\(s\) \(one per channel\)"),
    ],
)
def test_manifest_errors_name_file_and_key(tmp_path, teacher, message):
    path = _hand_written(tmp_path, **teacher)
    with pytest.raises(CheckpointError, match=message) as info:
        load_manifest(path)
    assert str(path) in str(info.value)


def test_manifest_file_errors(tmp_path):
    with pytest.raises(CheckpointError, match="pool manifest not found"):
        load_manifest(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("format: purer-pool/9\nteachers: []\n")
    with pytest.raises(CheckpointError, match="format 'purer-pool/9'"):
        load_manifest(bad)
    bad.write_text("datasets: []\nteachers: []\n")
    with pytest.raises(CheckpointError, match="datasets: expected a non-empty list"):
        load_manifest(bad)
    with pytest.raises(ConfigError, match="architecture: unknown 'vgg'"):
        load_manifest(_hand_written(tmp_path, architecture="vgg"))
    raw = yaml.safe_load(_hand_written(tmp_path).read_text())
    raw["datasets"][1]["offset"] = 3
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(CheckpointError, match=r"datasets\[1\]\.offset: ids 3\.\. overlap datasets\[0\]"):
        load_manifest(bad)


def test_wrong_architecture_checkpoint(tmp_path):
    manifest = load_manifest(_hand_written(tmp_path, architecture="resnet10"))
    with pytest.raises(
        CheckpointError, match=r"checkpoint .*full.pt does not match architecture resnet10: .*Missing key"
    ):
        load_teacher(manifest.teachers[1])
    (tmp_path / "bare.pt").write_bytes((tmp_path / "bare.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="bare.pt is truncated"):
        load_teacher(manifest.teachers[0])


# ---------------------------------------------------------------- CLI


def test_cli_list_and_train(tmp_path, capsys):
    path, config = setup_pool(tmp_path, conv4_width=4, epochs=1)
    assert main(["pool", "list", "--config", str(path), "--count"]) == 0
    assert capsys.readouterr().out.strip() == "4"
    first_two = ["--set", "pool.max_teachers=2", "--set", "pool.block_selection=first"]
    assert main(["pool", "list", "-c", str(path), *first_two]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[0] == "index" and len(out) == 6
    assert "9" not in out[2] and "3,4,5" in out[2] and out[3].startswith("2 teachers")
    assert main(["pool", "train", "-c", str(path), "--teacher", "7"]) == 2
    assert "teacher index 7 out of range (pool has 4 teachers)" in capsys.readouterr().err
    two = ["-c", str(path), *first_two]
    assert main(["pool", "manifest", *two]) == 2
    assert "teacher checkpoint not found" in capsys.readouterr().err
    for i in range(2):
        assert main(["pool", "train", *two, "--teacher", str(i)]) == 0
    own = manual_config(config, first_two[1::2])  # --set: a manual pool (purer/manual.py)
    assert paths.teacher_path(own, 1).is_file() and not paths.teacher_path(own, 2).exists()
    assert (paths.pool_dir(own) / "config.resolved.yaml").is_file() and not paths.pool_dir(config).exists()
    assert main(["pool", "manifest", *two]) == 0
    manifest = load_manifest(paths.manifest_path(own))
    assert [t.classes for t in manifest.teachers] == [(0, 1, 2), (3, 4, 5)]
    assert all(0 <= t.val_accuracy <= 1 for t in manifest.teachers)


def test_cli_missing_cache(tmp_path, capsys):
    path, config = setup_pool(tmp_path)
    paths.dataset_cache(config, "toy", "train").unlink()
    for c in range(10):  # raw folders: the classes can be counted, but nothing is prepared
        (tmp_path / "raw" / "toy" / "train" / f"class{c:02d}").mkdir(parents=True)
    assert main(["pool", "list", "-c", str(path), "--count"]) == 0
    assert capsys.readouterr().out.strip() == "4"
    assert main(["pool", "train", "-c", str(path), "--teacher", "0"]) == 2
    assert "train.pt (run `purer prepare` first)" in capsys.readouterr().err
    assert not paths.teacher_path(config, 0).exists()
