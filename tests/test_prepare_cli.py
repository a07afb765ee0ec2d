"""``purer prepare``: caches written through the CLI, the resolved config beside them, clear errors."""

from __future__ import annotations

import json

import pytest
import yaml

from purer.cli import main as cli
from purer.data.cache import load_split

TINY_GLYPHS = {"train_classes": 3, "val_classes": 2, "test_classes": 2, "images_per_class": 4, "image_size": 16}


@pytest.fixture(autouse=True)
def _only_prepare(monkeypatch):
    """Dispatch only the step under test, so that this file does not depend on the other steps' modules."""
    monkeypatch.setattr(cli, "COMMANDS", {"prepare": cli.COMMANDS["prepare"]})


def test_prepare_writes_caches_and_resolved_config(write_config, tmp_path):
    config = write_config({"datasets": {"glyphs": TINY_GLYPHS}})
    assert cli.main(["prepare", "--config", str(config)]) == 0
    folder = tmp_path / "data" / "glyphs" / "16px"
    assert {p.name for p in folder.iterdir()} >= {"train.pt", "val.pt", "test.pt", "config.resolved.yaml", "env.json"}
    assert load_split(folder / "train.pt").n_classes == 3
    resolved = yaml.safe_load((folder / "config.resolved.yaml").read_text())
    assert resolved["datasets"]["glyphs"]["train_classes"] == 3 and resolved["dataset"] == "glyphs"
    record = json.loads((folder / "dataset.json").read_text())
    assert record["splits"]["test"] == {"n_images": 8, "n_classes": 2, "channels": 1}


def test_prepare_selected_dataset_and_force(write_config, tmp_path):
    config = write_config(
        {
            "datasets": {"glyphs": TINY_GLYPHS, "other": {**TINY_GLYPHS, "image_size": 8}},
            "pool": {"datasets": ["glyphs"]},
        }
    )
    assert cli.main(["prepare", "-c", str(config), "--dataset", "other"]) == 0
    assert (tmp_path / "data" / "other" / "8px" / "val.pt").is_file()
    assert not (tmp_path / "data" / "glyphs").exists()
    cached = tmp_path / "data" / "other" / "8px" / "train.pt"
    stamp = cached.stat().st_mtime_ns
    assert cli.main(["prepare", "-c", str(config), "--dataset", "other"]) == 0
    assert cached.stat().st_mtime_ns == stamp  # up to date: kept
    assert cli.main(["prepare", "-c", str(config), "--dataset", "other", "--force"]) == 0
    assert cached.stat().st_mtime_ns != stamp


def test_prepare_set_override(write_config, tmp_path):
    config = write_config({"datasets": {"glyphs": TINY_GLYPHS}})
    assert cli.main(["prepare", "-c", str(config), "--set", "datasets.glyphs.channels=3"]) == 0
    assert load_split(tmp_path / "data" / "glyphs" / "16px" / "val.pt").channels == 3


def test_prepare_missing_mini_imagenet_is_one_clear_error(write_config, tmp_path, capsys):
    missing = tmp_path / "no-such" / "mini-imagenet.zip"
    config = write_config(
        {
            "datasets": {"mini-imagenet": {"source": "mini-imagenet", "path": str(missing), "image_size": 32}},
            "pool": {"datasets": ["mini-imagenet"]},
        }
    )
    assert cli.main(["prepare", "--config", str(config)]) == 2
    stderr = capsys.readouterr().err
    err = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(err) == 1 and err[0].startswith("purer prepare: error: dataset 'mini-imagenet'")
    assert "Traceback" not in stderr
    assert str(missing) in err[0] and "train.csv" in err[0]
    assert not (tmp_path / "data").exists()


def test_prepare_unknown_dataset_name(write_config, capsys):
    config = write_config({"datasets": {"glyphs": TINY_GLYPHS}})
    assert cli.main(["prepare", "-c", str(config), "--dataset", "glyph"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'glyph'" in err and "['glyphs']" in err
