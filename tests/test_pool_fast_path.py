"""Teacher pre-training's fast path: ``channels_last: auto`` is on for ``purer pool train`` on every device."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from purer.cli.common import load
from purer.config import load_config
from purer.runtime import Machine, resolve_speed_settings

AVX2_CPU = Machine("cpu", native_bf16=False, can_compile=True, name="AMD EPYC (AVX2)")
NO_COMPILER_CPU = Machine("cpu", native_bf16=False, can_compile=False, name="CPU without g++")


@pytest.mark.parametrize("machine", [AVX2_CPU, NO_COMPILER_CPU])
def test_short_runs_pretrain_channels_last_but_meta_train_eager(machine):
    # one meta-iteration short of compiling (purer.runtime.MIN_ITERATIONS_TO_COMPILE)
    config = load_config(None, ["meta_train.iterations=299", "precision=auto", "channels_last=auto", "compile=auto"])
    pool = resolve_speed_settings(config, machine, step="pool")
    other = resolve_speed_settings(config, machine)
    assert (pool.precision, pool.channels_last, pool.compile) == ("fp32", True, False)
    assert (other.precision, other.channels_last, other.compile) == ("fp32", False, False)


def test_an_explicit_setting_is_kept_for_the_pool():
    config = dataclasses.replace(load_config(None), channels_last=False)
    assert resolve_speed_settings(config, AVX2_CPU, step="pool").channels_last is False


def test_the_pool_command_resolves_for_the_pool(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    args = argparse.Namespace(config=None, overrides=["channels_last=auto", "meta_train.iterations=10"])
    assert load(args, step="pool").channels_last is True
    assert load(args).channels_last is False
