"""The teachers figure still carries information when every teacher reached 100% validation accuracy."""

from pathlib import Path

import pandas as pd
import yaml

from purer.report.aggregate import read_manifests
from purer.report.figures import save_figures, teachers_figure

KEPT = [(38, 0.012), (40, 0.004), (21, 0.051), (33, 0.009), (40, 0.002), (27, 0.030)]


def _manifest(root: Path, teachers: list[dict]) -> None:
    folder = root / "exp" / "toy" / "pool"
    folder.mkdir(parents=True)
    (folder / "manifest.yaml").write_text(yaml.safe_dump({"format": "purer-pool/1", "teachers": teachers}))


def _saturated(root: Path) -> None:
    _manifest(root, [
        {"index": i, "architecture": "conv4", "val_accuracy": 1.0, "val_loss": loss, "kept_epoch": kept,
         "epochs": 40, "selection": "highest val accuracy, ties by lowest val loss, then latest epoch"}
        for i, (kept, loss) in enumerate(KEPT)
    ])  # fmt: skip


def _empty_summary() -> pd.DataFrame:
    return pd.DataFrame({"n_teachers": pd.Series([], dtype=float)})


def test_read_manifests_keeps_loss_and_kept_epoch(tmp_path):
    _saturated(tmp_path)
    frame = read_manifests(tmp_path)
    assert frame["val_accuracy"].tolist() == [100.0] * 6
    assert frame["val_loss"].tolist() == [loss for _, loss in KEPT]
    assert frame["kept_epoch"].tolist() == [kept for kept, _ in KEPT] and set(frame["epochs"]) == {40}


def test_saturated_pool_shows_loss_and_kept_epoch(tmp_path):
    _saturated(tmp_path)
    fig = teachers_figure(_empty_summary(), tmp_path)
    accuracy_ax, loss_ax = fig.axes
    assert [p.get_height() for p in accuracy_ax.patches] == [100.0] * 6
    assert [t.get_text() for t in accuracy_ax.texts] == [f"e{kept}/40" for kept, _ in KEPT]
    assert [p.get_height() for p in loss_ax.patches] == [loss for _, loss in KEPT]
    assert loss_ax.get_ylabel() == "validation loss (kept epoch)" and loss_ax.get_yscale() == "log"
    (png,) = save_figures({"teachers": fig}, tmp_path / "figures", ("png",))
    assert png.stat().st_size > 0


def test_manifest_without_training_record_keeps_one_row(tmp_path):
    _manifest(tmp_path, [{"index": i, "architecture": "conv4", "val_accuracy": 0.8} for i in range(3)])
    frame = read_manifests(tmp_path)
    assert frame["val_loss"].isna().all() and frame["kept_epoch"].isna().all()
    fig = teachers_figure(_empty_summary(), tmp_path)
    assert len(fig.axes) == 1 and [p.get_height() for p in fig.axes[0].patches] == [80.0] * 3
    assert len(fig.axes[0].texts) == 0
