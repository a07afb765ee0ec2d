"""Teacher pools chosen as a user expects: the kept epoch, the kept blocks, the pool's size and cost."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml
from pool_helpers import fake_checkpoint, setup_pool

from purer import paths
from purer.cli.main import main
from purer.config import load_config
from purer.errors import ConfigError
from purer.models import pretrain
from purer.models.manifest import cut_to_max_teachers, load_manifest, write_manifest
from purer.models.pool import coverage, kept_blocks, select_blocks, teacher_specs
from purer.models.pretrain import (
    SELECTION,
    estimate_pool,
    is_better,
    resume_path,
    seconds_per_image,
    train_teacher,
)

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- the kept epoch


def test_is_better_accuracy_then_loss_then_later_epoch():
    assert is_better(0.9, 5.0, 0.8, 0.1)  # higher accuracy wins whatever the loss
    assert not is_better(0.8, 0.01, 0.9, 5.0)
    assert is_better(1.0, 0.2, 1.0, 0.3)  # same accuracy: lower loss wins
    assert not is_better(1.0, 0.4, 1.0, 0.3)
    assert is_better(1.0, 0.3, 1.0, 0.3)  # same accuracy and loss: the later epoch wins
    assert not is_better(1.0, math.nan, 1.0, 0.3)  # a NaN loss never wins a tie
    assert is_better(1.0, 0.3, 1.0, math.nan)
    assert is_better(0.0, math.inf, -1.0, math.inf)  # the first epoch always replaces "nothing yet"


def _scripted_evaluate(monkeypatch, scores, snapshots):
    """Replace the validation by ``scores`` (accuracy, loss) per epoch, in order, and record the
    weights each epoch was scored with."""
    scores = iter(scores)

    def fake(model, *_):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    monkeypatch.setattr(pretrain, "teacher_accuracy", fake)


# Validation accuracy saturates at epoch 2; the loss keeps falling to its minimum 0.2 at epochs 4
# and 6 (a tie, so the later epoch 6), then rises.
SATURATING = [(0.6, 0.9), (1.0, 0.5), (1.0, 0.3), (1.0, 0.2), (1.0, 0.25), (1.0, 0.2), (1.0, 0.4)]


def test_saturated_accuracy_keeps_the_lowest_validation_loss(tmp_path, monkeypatch):
    path, config = setup_pool(tmp_path, conv4_width=4, epochs=7, checkpoint_interval=3)
    snapshots = []
    _scripted_evaluate(monkeypatch, SATURATING, snapshots)
    summary = train_teacher(config, 0)
    out = paths.teacher_path(config, 0)
    checkpoint = torch.load(out, weights_only=True)
    assert (summary["best_epoch"], summary["val_accuracy"], summary["val_loss"]) == (6, 1.0, 0.2)
    assert (checkpoint["epoch"], checkpoint["epochs"], checkpoint["val_loss"]) == (6, 7, 0.2)
    assert checkpoint["selection"] == SELECTION == "highest val accuracy, ties by lowest val loss, then latest epoch"
    assert all(torch.equal(checkpoint["state_dict"][k], v) for k, v in snapshots[5].items())
    assert not all(torch.equal(checkpoint["state_dict"][k], v) for k, v in snapshots[1].items())
    history = json.loads(out.with_suffix(".json").read_text())
    assert [(r["val_accuracy"], r["val_loss"]) for r in history["history"]] == SATURATING
    assert (history["best_epoch"], history["selection"]) == (6, SELECTION)
    for other in range(1, 4):  # the rest of the pool, so a manifest can be written
        fake_checkpoint(teacher_specs(config)[other], paths.teacher_path(config, other), seed=other)
    raw = yaml.safe_load(write_manifest(config).read_text())["teachers"][0]
    assert (raw["kept_epoch"], raw["epochs"], raw["val_loss"], raw["val_accuracy"]) == (6, 7, 0.2, 1.0)
    assert raw["selection"] == SELECTION and raw["block"] == 0
    assert "kept_epoch" in raw and load_manifest(paths.manifest_path(config)).teachers[0].val_accuracy == 1.0


def test_real_training_saturates_early_and_keeps_the_lowest_loss(tmp_path):
    # class-coloured images: validation accuracy reaches 100% within the first epochs
    _, config = setup_pool(tmp_path, conv4_width=8, epochs=6, val_fraction=0.3)
    summary = train_teacher(config, 0)
    history = json.loads(paths.teacher_path(config, 0).with_suffix(".json").read_text())["history"]
    saturated = [r for r in history if r["val_accuracy"] == 1.0]
    assert len(saturated) >= 2 and summary["val_accuracy"] == 1.0
    lowest = min(saturated, key=lambda r: (r["val_loss"], -r["epoch"]))
    assert summary["best_epoch"] == lowest["epoch"] and summary["val_loss"] == lowest["val_loss"]
    assert summary["best_epoch"] > saturated[0]["epoch"]  # the old rule kept the first 100% epoch


def test_resumed_run_keeps_the_same_epoch(tmp_path, monkeypatch):
    # kept epoch 3 (loss 0.1) lies before the kill after epoch 4; later ties in accuracy have higher
    # losses, so a resumed run that forgot the kept loss would wrongly keep epoch 5
    scores = [(0.5, 0.9), (1.0, 0.4), (1.0, 0.1), (1.0, 0.3), (1.0, 0.2), (1.0, 0.2)]
    _, config = setup_pool(tmp_path, conv4_width=4, epochs=6, checkpoint_interval=2)
    straight_weights = []
    _scripted_evaluate(monkeypatch, scores, straight_weights)
    straight = train_teacher(config, 1, tmp_path / "straight.pt")
    assert straight["best_epoch"] == 3

    original = pretrain._save_resume

    def save_then_die(path, state, fingerprint):
        original(path, state, fingerprint)
        if state.epoch == 4:
            raise KeyboardInterrupt("killed")

    out = paths.teacher_path(config, 1)
    _scripted_evaluate(monkeypatch, scores[:4], [])
    monkeypatch.setattr(pretrain, "_save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(config, 1)
    monkeypatch.setattr(pretrain, "_save_resume", original)
    saved = torch.load(resume_path(out), weights_only=True)
    assert (saved["epoch"], saved["best_epoch"], saved["best_loss"]) == (4, 3, 0.1)
    assert saved["fingerprint"]["selection"] == SELECTION
    _scripted_evaluate(monkeypatch, scores[4:], [])
    resumed = train_teacher(config, 1)
    assert {k: resumed[k] for k in ("best_epoch", "val_accuracy", "val_loss")} == {
        k: straight[k] for k in ("best_epoch", "val_accuracy", "val_loss")
    }
    a, b = torch.load(out, weights_only=True), torch.load(tmp_path / "straight.pt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items())
    assert all(torch.equal(a["state_dict"][k], v) for k, v in straight_weights[2].items())


def test_resume_file_of_the_old_rule_is_not_continued(tmp_path, monkeypatch, caplog):
    _, config = setup_pool(tmp_path, conv4_width=4, epochs=2, checkpoint_interval=1)
    out = paths.teacher_path(config, 0)
    fingerprint = pretrain._fingerprint(teacher_specs(config)[0], config, 3)
    del fingerprint["selection"]  # what a resume file written before the selection rule holds
    out.parent.mkdir(parents=True)
    torch.save({"fingerprint": fingerprint, "epoch": 1}, resume_path(out))
    with caplog.at_level(logging.WARNING, logger="purer"):
        summary = train_teacher(config, 0)
    assert "written for another teacher or recipe; training from scratch" in caplog.text
    assert summary["epochs"] == 2 and not resume_path(out).exists()


def test_checkpoint_holds_only_plain_data(tmp_path):
    _, config = setup_pool(tmp_path, conv4_width=4, epochs=1)
    train_teacher(config, 0)
    checkpoint = torch.load(paths.teacher_path(config, 0), weights_only=True)  # plain data loads

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (torch.Tensor, str, int, float, bool))

    assert plain(checkpoint)


# ---------------------------------------------------------------- the kept blocks


def test_select_blocks_first_and_spread():
    generator = torch.Generator().manual_seed(0)
    assert select_blocks(10, 3, "first", generator) == [0, 1, 2]
    assert select_blocks(10, None, "spread", generator) == list(range(10))
    assert select_blocks(4, 9, "spread", generator) == [0, 1, 2, 3]
    for seed in range(20):
        kept = select_blocks(200, 10, "spread", torch.Generator().manual_seed(seed))
        assert [b // 20 for b in kept] == list(range(10))  # one block in each stretch of 20
    kept = select_blocks(10, 3, "spread", torch.Generator().manual_seed(1))
    assert 0 <= kept[0] < 3 <= kept[1] < 6 <= kept[2] < 10  # stretches [0,3), [3,6), [6,10)
    seen = {tuple(select_blocks(6, 2, "spread", torch.Generator().manual_seed(s))) for s in range(200)}
    assert {b for pair in seen for b in pair} == set(range(6))  # every block can be drawn
    with pytest.raises(ConfigError, match=r"pool.block_selection: unknown 'middle'"):
        select_blocks(6, 2, "middle", generator)


def test_spread_is_seeded_and_changes_with_the_seed(tmp_path):
    path, _ = setup_pool(tmp_path, {"toy": 60}, max_teachers=4)  # 20 blocks of 3 classes
    draws = [kept_blocks(load_config(path, [f"seed={s}"]), 20) for s in range(6)]
    assert draws[0] == kept_blocks(load_config(path, ["seed=0"]), 20)
    assert len({tuple(d) for d in draws}) > 1
    specs = teacher_specs(load_config(path))
    assert [s.index for s in specs] == [0, 1, 2, 3]
    assert [s.block // 5 for s in specs] == [0, 1, 2, 3] and {s.n_blocks for s in specs} == {20}
    assert [s.classes for s in specs] == [tuple(range(3 * s.block, 3 * s.block + 3)) for s in specs]


def test_first_keeps_the_old_prefix(tmp_path):
    path, _ = setup_pool(tmp_path, {"toy": 10, "toy2": 7}, max_teachers=5, block_selection="first")
    specs = teacher_specs(load_config(path))
    every = teacher_specs(load_config(path, ["pool.max_teachers=null"]))
    assert [s.classes for s in specs] == [s.classes for s in every[:5]]


@pytest.mark.parametrize("selection", ["spread", "first"])
def test_without_max_teachers_the_pool_is_unchanged(tmp_path, selection):
    path, _ = setup_pool(tmp_path, {"toy": 10, "toy2": 7}, block_selection=selection)
    specs = teacher_specs(load_config(path))
    blocks = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9], [10, 11, 12], [13, 14, 15], [16]]
    assert [list(s.classes) for s in specs] == blocks
    assert [s.block for s in specs] == [s.index for s in specs] == list(range(7))


def test_shipped_configs_keep_every_block():
    """The default and experiment configs leave max_teachers unset: every block, in order."""
    for path in [ROOT / "config" / "config.yaml", *sorted((ROOT / "config" / "experiments").glob("*.yaml"))]:
        config = load_config(path)
        assert config.pool.max_teachers is None, path
        assert kept_blocks(config, 13) == list(range(13)), path
    default = load_config(ROOT / "config" / "config.yaml")
    specs = teacher_specs(default, with_cache_info=False)
    assert [list(s.classes) for s in specs] == [list(range(5 * i, 5 * i + 5)) for i in range(4)]


def test_coverage_line_names_blocks_and_classes(tmp_path, capsys):
    path, config = setup_pool(tmp_path, max_teachers=2)  # toy: 10 classes, 4 blocks of 3
    specs = teacher_specs(config)
    line = coverage(config)
    names = ", ".join(f"class{c:02d}" for s in specs for c in s.classes)
    blocks = ", ".join(str(s.block) for s in specs)
    assert line == f"pool covers 2 of 4 blocks (block_selection spread): blocks {blocks}; " + (
        f"{sum(len(s.classes) for s in specs)} of 10 meta-train classes: {names}"
    )
    assert specs[0].block in (0, 1) and specs[1].block in (2, 3)
    every = coverage(load_config(path, ["pool.max_teachers=null"]))
    assert every.startswith("pool covers 4 of 4 blocks: blocks 0, 1, 2, 3; 10 of 10 meta-train classes: class00, ")
    train = ["pool", "train", "-c", str(path), "--teacher", "0", "--set", "pool.epochs=1", "--out", str(paths.pool_dir(config))]
    assert main([*train, "--set", "pool.conv4_width=4"]) == 0
    assert f"INFO purer.cli.pool: {line}\n" in capsys.readouterr().err
    fake_checkpoint(specs[1], paths.teacher_path(config, 1), seed=1)  # a stand-in for the other teacher
    assert main(["pool", "manifest", "-c", str(path)]) == 0
    assert f"INFO purer.models.pool: {line}\n" in capsys.readouterr().err


def test_coverage_abbreviates_long_lists(tmp_path):
    _, config = setup_pool(tmp_path, {"toy": 60}, max_teachers=15)
    line = coverage(config)
    assert line.count(", ... (+3 more)") == 1 and "45 of 60 meta-train classes" in line
    assert "(+33 more)" in line


def test_manifest_cut_matches_the_spread_pool(tmp_path):
    path, full = setup_pool(tmp_path, {"toy": 30})  # 10 blocks
    for spec in teacher_specs(full):
        fake_checkpoint(spec, paths.teacher_path(full, spec.index), seed=spec.index)
    manifest = load_manifest(write_manifest(full))
    for selection in ("spread", "first"):
        cut = load_config(path, ["pool.max_teachers=3", f"pool.block_selection={selection}"])
        kept = cut_to_max_teachers(cut, manifest.teachers)
        assert [t.classes for t in kept] == [s.classes for s in teacher_specs(cut)]
    small = load_config(path, ["pool.max_teachers=20"])
    assert cut_to_max_teachers(small, manifest.teachers) == manifest.teachers


def test_bad_block_selection_is_a_config_error(tmp_path, capsys):
    path, _ = setup_pool(tmp_path)
    assert main(["pool", "list", "-c", str(path), "--set", "pool.block_selection=middle"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"purer pool: error: {path}: pool.block_selection: expected one of ['spread', 'first'], got 'middle'"]
    assert not paths.pool_dir(load_config(path)).exists()


# ---------------------------------------------------------------- size and cost


def test_seconds_per_image_meets_the_measurements():
    assert seconds_per_image("conv4", 32) == pytest.approx(1 / 2121)
    assert seconds_per_image("conv4", 84) == pytest.approx(1 / 236)
    assert seconds_per_image("resnet18", 84) == pytest.approx(1 / 9)
    assert 1 / 2121 < seconds_per_image("conv4", 64) < 1 / 236
    assert seconds_per_image("vit", 32) is None


def test_estimate_counts_training_images(tmp_path):
    # toy: 10 classes x 10 images; val_fraction 0.2 holds out 2 per class -> 8 train images per class
    _, config = setup_pool(tmp_path)  # n_way 3: blocks of 3, 3, 3 and 1 classes, 2 epochs, 16 px
    estimate = estimate_pool(config, teacher_specs(config))
    assert estimate.train_images == 80 and estimate.unmeasured == ()
    assert estimate.seconds == pytest.approx(2 * 80 * seconds_per_image("conv4", 16))


def test_pool_list_shows_count_and_estimate(tmp_path, capsys):
    path, config = setup_pool(tmp_path, {"toy": 60}, epochs=40)
    assert main(["pool", "list", "-c", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3] == "20 teachers (toy 20), 3 classes each, 40 epochs"
    assert out[-2].startswith("pool covers 20 of 20 blocks")
    seconds = 40 * 480 * seconds_per_image("conv4", 16)
    assert out[-1].startswith(f"estimated training time: {seconds:.0f} s in all (40 epochs x 480 training images)")
    assert "an estimate" in out[-1]
    assert main(["pool", "list", "-c", str(path), "--set", "pool.max_teachers=5"]) == 0
    assert "5 teachers (toy 5) (max_teachers 5 of 20, block_selection spread)" in capsys.readouterr().out


def test_pool_list_without_caches(tmp_path, capsys):
    path, config = setup_pool(tmp_path)
    paths.dataset_cache(config, "toy", "train").unlink()
    for c in range(10):  # raw folders: the classes can be counted, but nothing is prepared
        (tmp_path / "raw" / "toy" / "train" / f"class{c:02d}").mkdir(parents=True)
    assert main(["pool", "list", "-c", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "estimated training time: unknown until the train caches exist (run `purer prepare`)"
    )


def test_glyphs_estimate_needs_no_cache(tmp_path):
    raw = {"experiment": "g", "results_dir": str(tmp_path / "r"), "data_dir": str(tmp_path / "d"),
           "datasets": {"glyphs": {"source": "glyphs", "train_classes": 1000, "images_per_class": 20}},
           "pool": {"epochs": 40}}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(tmp_path / "c.yaml")
    specs = teacher_specs(config, with_cache_info=False)
    estimate = estimate_pool(config, specs)
    assert len(specs) == 200 and estimate.train_images == 1000 * 16
    assert estimate.seconds == pytest.approx(40 * 16000 * seconds_per_image("conv4", 32))
