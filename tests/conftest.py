"""Fixtures shared by the test modules."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch):
    """Progress bars off in every test (keeps the output readable)."""
    monkeypatch.setenv("PURER_NO_PROGRESS", "1")


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """Remove the root-logger handlers a test's CLI call installed, and restore the root level.

    A CLI entry point called in-process (``setup_logging``: ``basicConfig(force=True)``) points the root
    logger at the ``sys.stderr`` of that moment, pytest's capture stream for that one test. Left in
    place, a later test's log records would go to a closed stream ("--- Logging error ---"). pytest's
    own capture handlers come and go per test phase and are left to pytest.
    """
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in before and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.fixture
def write_config(tmp_path):
    """Write a config mapping as YAML into ``tmp_path`` and return its path.

    ``data_dir`` and ``results_dir`` default to folders inside ``tmp_path``.
    """

    def write(raw: dict, name: str = "config.yaml") -> Path:
        raw = {"data_dir": str(tmp_path / "data"), "results_dir": str(tmp_path / "results"), **raw}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        return path

    return write


def shared_data_dir() -> Path | None:
    """The read-only shared data folder (``../shared/data`` beside the repo, or ``/work/shared/data``)."""
    for candidate in (REPO_ROOT.parent / "shared" / "data", Path("/work/shared/data")):
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder; the test is skipped where it is absent."""
    folder = shared_data_dir()
    if folder is None:
        pytest.skip("shared data folder (../shared/data) not available")
    return folder


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: the tiny tensors in tests gain nothing from more, and pytest runs beside other work."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
