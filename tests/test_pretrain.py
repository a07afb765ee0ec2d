"""Teacher pre-training (docs/method.md §1.2): data split, recipe, best-by-copy, checkpoint, resume."""

import json

import pytest
import torch
from pool_helpers import setup_pool

from purer import paths
from purer.config import load_config
from purer.data.cache import load_split
from purer.errors import DataError
from purer.models import pretrain
from purer.models.manifest import TeacherEntry, load_teacher
from purer.models.pool import teacher_spec
from purer.models.pretrain import block_data, build_optimizer, build_teacher, resume_path, train_teacher


def test_block_data_first_images_train_rest_validate(tmp_path):
    _, config = setup_pool(tmp_path)
    split = load_split(paths.dataset_cache(config, "toy", "train"))
    data = block_data(split, (7, 2), 0.2, torch.device("cpu"))
    # naive oracle: walk the cache in order, per class the first 8 of 10 images train
    train, val = [], []
    for label, c in enumerate((7, 2)):
        ids = [i for i in range(len(split.labels)) if split.labels[i] == c]
        train += [(i, label) for i in ids[:8]]
        val += [(i, label) for i in ids[8:]]
    assert data.train_y.tolist() == [label for _, label in train]
    assert data.val_y.tolist() == [label for _, label in val]
    torch.testing.assert_close(data.train_x, split.normalise(split.images[[i for i, _ in train]]))
    torch.testing.assert_close(data.val_x, split.normalise(split.images[[i for i, _ in val]]))


def test_recipe_optimisers(tmp_path):
    _, config = setup_pool(
        tmp_path, architectures=["conv4", "resnet10"], milestones=[3, 5], gamma=0.5, lr=0.1
    )
    conv = build_teacher(teacher_spec(config, 0), 3, 0, torch.device("cpu"))
    optimizer, scheduler = build_optimizer(conv, "conv4", config)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 0.1
    assert dict(scheduler.milestones) == {3: 1, 5: 1} and scheduler.gamma == 0.5
    resnet = build_teacher(teacher_spec(config, 1), 3, 0, torch.device("cpu"))
    optimizer, _ = build_optimizer(resnet, "resnet10", config)
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.SGD) and (group["momentum"], group["weight_decay"]) == (
        0.9,
        5e-4,
    )


def test_build_teacher_seeded_without_touching_global_rng(tmp_path):
    _, config = setup_pool(tmp_path)
    before = torch.random.get_rng_state()
    a = build_teacher(teacher_spec(config, 0), 3, 0, torch.device("cpu"))
    assert torch.equal(before, torch.random.get_rng_state())
    b = build_teacher(teacher_spec(config, 0), 3, 0, torch.device("cpu"))
    c = build_teacher(teacher_spec(config, 1), 3, 0, torch.device("cpu"))
    assert torch.equal(a.head.weight, b.head.weight) and not torch.equal(a.head.weight, c.head.weight)


def test_train_tiny_teacher(tmp_path):
    _, config = setup_pool(tmp_path, conv4_width=8, lr=0.01)
    summary = train_teacher(config, 3)  # the short last block: one class, three logits
    out = paths.teacher_path(config, 3)
    checkpoint = torch.load(out, weights_only=False)
    history = json.loads(out.with_suffix(".json").read_text())
    assert [r["epoch"] for r in history["history"]] == [1, 2]
    accuracies = [r["val_accuracy"] for r in history["history"]]
    assert 0 <= checkpoint["val_accuracy"] <= 1 and checkpoint["val_accuracy"] == max(accuracies)
    kept = max(history["history"], key=lambda r: (r["val_accuracy"], -r["val_loss"], r["epoch"]))
    assert checkpoint["epoch"] == kept["epoch"] == summary["best_epoch"]
    assert checkpoint["val_loss"] == kept["val_loss"] and checkpoint["epochs"] == 2
    assert checkpoint["classes"] == [9] and checkpoint["num_outputs"] == 3 and checkpoint["channels"] == 3
    assert (checkpoint["mean"], checkpoint["std"], checkpoint["image_size"]) == ([0.5] * 3, [0.25] * 3, 16)
    assert not resume_path(out).exists()
    entry = TeacherEntry(3, "conv4", {"width": 8}, out, "toy", (9,), (9,), 3, 16, 3, None, None, None)
    model = load_teacher(entry)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)


def test_learns_separable_classes(tmp_path):
    _, config = setup_pool(tmp_path, conv4_width=8, epochs=6, val_fraction=0.3)
    summary = train_teacher(config, 0)
    assert summary["val_accuracy"] == 1.0  # class-coloured images are trivially separable


def test_best_weights_are_a_copy_not_the_last_epoch(tmp_path, monkeypatch):
    path, config = setup_pool(tmp_path, conv4_width=8)
    train_teacher(config, 0, tmp_path / "two.pt")  # 2 epochs: the weights after epoch 2
    after_two = torch.load(tmp_path / "two.pt", weights_only=False)["state_dict"]
    scores = iter([(0.2, 1.0), (0.9, 1.0), (0.1, 1.0)])
    monkeypatch.setattr(pretrain, "teacher_accuracy", lambda *args: next(scores))
    three = load_config(path, ["pool.epochs=3"])
    train_teacher(three, 0, tmp_path / "three.pt")
    checkpoint = torch.load(tmp_path / "three.pt", weights_only=False)
    assert (checkpoint["epoch"], checkpoint["val_accuracy"]) == (2, 0.9)
    assert all(torch.equal(checkpoint["state_dict"][k], v) for k, v in after_two.items())


def _run_killed_after_resume_file(config, monkeypatch, at_epoch):
    original = pretrain._save_resume

    def save_then_die(path, state, fingerprint):
        original(path, state, fingerprint)
        if state.epoch == at_epoch:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(pretrain, "_save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(config, 1)
    monkeypatch.setattr(pretrain, "_save_resume", original)


def test_resume_gives_identical_weights(tmp_path, monkeypatch):
    path, config = setup_pool(tmp_path, conv4_width=8, epochs=4, checkpoint_interval=2, milestones=[1, 3])
    train_teacher(config, 1, tmp_path / "straight.pt")
    straight = torch.load(tmp_path / "straight.pt", weights_only=False)
    out = paths.teacher_path(config, 1)
    _run_killed_after_resume_file(config, monkeypatch, at_epoch=2)
    assert resume_path(out).is_file() and not out.exists()
    assert torch.load(resume_path(out), weights_only=False)["epoch"] == 2
    train_teacher(config, 1)
    resumed = torch.load(out, weights_only=False)
    assert not resume_path(out).exists()
    assert (resumed["epoch"], resumed["val_accuracy"]) == (straight["epoch"], straight["val_accuracy"])
    assert all(torch.equal(resumed["state_dict"][k], v) for k, v in straight["state_dict"].items())
    history = json.loads(out.with_suffix(".json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert [r["lr"] for r in history] == [0.01, 0.01 * 0.2, 0.01 * 0.2, pytest.approx(0.01 * 0.04)]


def test_stale_resume_file_is_ignored(tmp_path, monkeypatch):
    path, config = setup_pool(tmp_path, conv4_width=8, epochs=3, checkpoint_interval=1)
    _run_killed_after_resume_file(load_config(path, ["pool.lr=0.5"]), monkeypatch, at_epoch=1)
    out = paths.teacher_path(config, 1)
    assert resume_path(out).is_file()
    train_teacher(config, 1)
    train_teacher(config, 1, tmp_path / "fresh.pt")
    fresh = torch.load(tmp_path / "fresh.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(torch.load(out, weights_only=False)["state_dict"][k], v) for k, v in fresh.items())


def test_bf16_channels_last_on_cpu(tmp_path):
    path, _ = setup_pool(tmp_path, conv4_width=8, epochs=1)
    config = load_config(path, ["precision=bf16", "channels_last=true"])
    summary = train_teacher(config, 0)
    assert 0 <= summary["val_accuracy"] <= 1
    state = torch.load(paths.teacher_path(config, 0), weights_only=False)["state_dict"]
    assert all(v.dtype != torch.bfloat16 for v in state.values())


def test_missing_cache_says_prepare(tmp_path, monkeypatch):
    _, config = setup_pool(tmp_path)
    spec = teacher_spec(config, 0)
    paths.dataset_cache(config, "toy", "train").unlink()
    monkeypatch.setattr(pretrain, "teacher_spec", lambda *_: spec)
    with pytest.raises(DataError, match=r"train.pt \(run `purer prepare` first\)"):
        train_teacher(config, 0)
    assert not paths.teacher_path(config, 0).exists()
