"""The Python API (purer/api.py, README "Python API"): the README snippet runs as written, and
adaptation behaves as the pipeline's meta-test."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from purer import api, paths
from purer.cli.main import main as purer_main
from purer.config import load_config
from purer.data.cache import load_split
from purer.data.episodes import fixed_episodes
from purer.errors import CheckpointError, DataError

REPO = Path(__file__).resolve().parents[1]
CONFIG = {
    "experiment": "default",
    "pool": {"epochs": 1, "milestones": [], "checkpoint_interval": 1},
    "meta_train": {"iterations": 4, "val_interval": 2, "val_episodes": 2, "checkpoint_interval": 2,
                   "grid_snapshots": 0, "curriculum": {"warmup": 1, "patience": 1}},
    "meta_test": {"episodes": 4, "n_query": 5, "inner_steps": 3},
}


@contextlib.contextmanager
def working_directory(path: Path):
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny default-layout experiment in a temporary folder: glyphs, 4 teachers, purer 1-shot, tested."""
    root = tmp_path_factory.mktemp("api")
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    steps = [["prepare"], *(["pool", "train", "--teacher", str(i)] for i in range(4)), ["pool", "manifest"],
             ["meta-train", "--method", "purer", "--n-shot", "1"],
             ["meta-test", "--method", "purer", "--n-shot", "1", "--dataset", "glyphs"]]
    with working_directory(root):
        for step in steps:
            assert purer_main([*step[:2 if step[0] == "pool" else 1], "--config", "config.yaml", *step[2 if step[0] == "pool" else 1:]]) == 0, step
    return root


def readme_snippet() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Python API\n.*?```python\n(.*?)```", text, re.S)
    assert block, "README.md has no Python API code block"
    return block.group(1)


def test_the_readme_snippet_runs_as_written(trained):
    out = io.StringIO()
    with working_directory(trained), contextlib.redirect_stdout(out):
        exec(compile(readme_snippet(), "README.md", "exec"), {})
    first, second = out.getvalue().splitlines()
    assert first == "5 1 32"
    assert re.fullmatch(r"query accuracy: \d+\.\d%", second)


def _model(trained: Path) -> api.MetaModel:
    return api.load_meta_model(trained / "results/default/glyphs/purer/5w1s/seed0/meta_model.pt")


def _task(trained: Path, shots: int = 1):
    test = load_split(trained / "data/glyphs/32px/test.pt")
    rows = [torch.nonzero(test.labels == c).flatten() for c in range(5)]
    support = torch.cat([test.images[r[:shots]] for r in rows])
    return test, support, torch.arange(5).repeat_interleave(shots), rows


def test_adapting_fits_the_support_set(trained):
    meta = _model(trained)
    _, images, labels, _ = _task(trained, shots=2)
    support = meta.preprocess(images)
    before = meta.adapt(support, labels, inner_steps=0)
    after = meta.adapt(support, labels, inner_steps=30, inner_lr=0.5)
    loss_before = F.cross_entropy(before.logits(support), labels)
    loss_after = F.cross_entropy(after.logits(support), labels)
    assert loss_after < 0.5 * loss_before
    assert (after.predict(support) == labels).all()
    assert (before.predict(support) == labels).float().mean() < 1.0  # there was something to learn
    # the meta model itself is unchanged
    assert torch.equal(meta.adapt(support, labels, inner_steps=0).logits(support), before.logits(support))


def test_predictions_are_purer_meta_tests_own(trained):
    """Per episode, the API's accuracy equals the one `purer meta-test` wrote for the same episodes."""
    config = load_config(trained / "config.yaml")
    run = trained / paths.run_dir(config, "purer", 1, 0)
    written = json.loads((paths.test_dir(run, "glyphs", False) / "metrics.json").read_text(encoding="utf-8"))
    split = load_split(trained / "data/glyphs/32px/test.pt")
    mtest = config.meta_test
    episodes = fixed_episodes(split, mtest.n_way, 1, mtest.n_query, mtest.episodes, seed=config.seed, name="glyphs/test")
    meta = _model(trained)
    accuracies = []
    for idx in episodes.indices:
        support, query = idx[:, :1].reshape(-1), idx[:, 1:].reshape(-1)
        adapted = meta.adapt(meta.preprocess(split.images[support]), torch.arange(5), inner_steps=mtest.inner_steps)
        predicted = adapted.predict(meta.preprocess(split.images[query]))
        accuracies.append(float((predicted == torch.arange(5).repeat_interleave(mtest.n_query)).float().mean() * 100))
    assert written["checkpoint"] == "meta_model.pt" and len(written["accuracies"]) == 4
    assert accuracies == pytest.approx(written["accuracies"], abs=1e-4)


def test_bad_inputs_say_what_was_expected(trained):
    meta = _model(trained)
    _, images, labels, _ = _task(trained)
    support = meta.preprocess(images)
    cases = [
        (lambda: meta.preprocess(images.expand(-1, 3, -1, -1)),
         "images: expected a tensor [N, 1, H, W], got shape [5, 3, 32, 32] (torch.uint8)"),
        (lambda: meta.adapt(images, labels),
         "support_x: expected a float tensor (use MetaModel.preprocess on raw images), got dtype torch.uint8"),
        (lambda: meta.adapt(support[:, :, :16], labels),
         "support_x: expected a float tensor [N, 1, 32, 32] with N >= 1 (use MetaModel.preprocess on raw images), "
         "got shape [5, 1, 16, 32] (torch.float32)"),
        (lambda: meta.adapt(support, labels[:4]),
         "support_y: expected labels [5] (one per support image), got shape [4] (torch.int64)"),
        (lambda: meta.adapt(support, labels + 1), "support_y: expected labels in 0..4, got [1, 2, 3, 4, 5]"),
        (lambda: meta.adapt(support, labels.float()), "support_y: expected integer labels, got dtype torch.float32"),
        (lambda: meta.adapt(support, labels).predict(support[0]),
         "query_x: expected a float tensor [N, 1, 32, 32] with N >= 1 (use MetaModel.preprocess on raw images), "
         "got shape [1, 32, 32] (torch.float32)"),
    ]
    for call, message in cases:
        with pytest.raises(DataError) as error:
            call()
        assert str(error.value) == message


def test_a_file_that_is_not_a_meta_model_is_named(tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=f"meta model {path} lacks the entries"):
        api.load_meta_model(path)
