"""Atomic writes, clear checkpoint errors, and derived seeds."""

import pytest
import torch

from purer.errors import CheckpointError
from purer.io import atomic_path, load_torch, save_torch, write_json
from purer.seeding import derive_seed, make_generator


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert target.read_text().strip().endswith("}")
    assert '"a": 2' in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / "model.pt"
    save_torch(path, {"w": torch.ones(1000)})
    assert torch.equal(load_torch(path)["w"], torch.ones(1000))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or not a torch file"):
        load_torch(path, "teacher checkpoint")
    with pytest.raises(CheckpointError, match="teacher checkpoint not found"):
        load_torch(tmp_path / "nope.pt", "teacher checkpoint")


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "pool", 3) == derive_seed(0, "pool", 3)
    assert derive_seed(0, "pool", 3) != derive_seed(0, "pool", 4)
    assert derive_seed(0, "pool", 3) != derive_seed(1, "pool", 3)
    a = torch.rand(4, generator=make_generator(5, "x"))
    b = torch.rand(4, generator=make_generator(5, "x"))
    assert torch.equal(a, b)
