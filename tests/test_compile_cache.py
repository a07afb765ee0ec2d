"""TorchInductor's caches live in one folder per machine, shared by every job (purer.runtime)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from purer.config import ExperimentConfig
from purer.errors import ConfigError
from purer.runtime import compile_cache_dir, configure_process, machine_tag


def test_the_cache_folder_is_the_users_unless_torch_is_told_otherwise(tmp_path):
    assert compile_cache_dir({"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "x")}) == tmp_path / "x"
    tag = machine_tag()
    assert compile_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "purer" / "torchinductor" / tag
    assert compile_cache_dir({}) == Path.home() / ".cache" / "purer" / "torchinductor" / tag


def test_each_kind_of_cpu_and_torch_gets_its_own_folder(monkeypatch):
    import torch

    from purer import runtime

    tag = runtime.machine_tag()
    assert re.fullmatch(r"[0-9A-Za-z._]+-[0-9a-f]{12}", tag) and tag.startswith(torch.__version__.replace("+", "_"))
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert runtime.machine_tag() != tag


def test_configure_process_points_inductor_at_the_shared_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _, cache = configure_process(ExperimentConfig(results_dir=str(tmp_path / "results")))
    assert cache == tmp_path / "purer" / "torchinductor" / machine_tag()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cache)
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str(cache)  # where inductor itself now writes


@pytest.mark.parametrize("inside", ["results", "results/bench/cache"])
def test_a_cache_inside_the_results_is_refused(monkeypatch, tmp_path, inside):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / inside))
    with pytest.raises(ConfigError) as caught:
        configure_process(ExperimentConfig(results_dir=str(tmp_path / "results")))
    assert str(caught.value) == (
        f"TORCHINDUCTOR_CACHE_DIR={tmp_path / inside} is inside results_dir ({tmp_path / 'results'}); "
        "compiled code is not a result: choose a folder outside it"
    )


def test_the_command_line_refuses_a_cache_inside_the_results(tmp_path):
    """docs/errors.md, "Threads and the compile cache"."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    config = tmp_path / "c.yaml"
    config.write_text(f"results_dir: {tmp_path / 'results'}\ndata_dir: {tmp_path / 'data'}\n", encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(repo), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "results" / "cache"))
    proc = subprocess.run([sys.executable, "-m", "purer", "prepare", "--config", str(config), "--dataset", "glyphs"],
                          env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"purer prepare: error: TORCHINDUCTOR_CACHE_DIR={tmp_path / 'results' / 'cache'} is inside results_dir "
        f"({tmp_path / 'results'}); compiled code is not a result: choose a folder outside it"
    )
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()
