"""``auto`` speed settings: what each kind of machine gets (purer/runtime.py)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from purer.cli.common import load
from purer.config import ExperimentConfig, load_config
from purer.errors import ConfigError
from purer.runtime import Machine, resolve_speed_settings

AVX2_CPU = Machine("cpu", native_bf16=False, can_compile=True, name="AMD EPYC (AVX2)")
AMX_CPU = Machine("cpu", native_bf16=True, can_compile=True, name="Xeon (AMX)")
NO_COMPILER_CPU = Machine("cpu", native_bf16=False, can_compile=False, name="CPU without g++")
GPU = Machine("cuda", native_bf16=True, can_compile=True, name="GPU")


def auto_config(iterations: int = 1000, **top: object) -> ExperimentConfig:
    config = load_config(None, [f"meta_train.iterations={iterations}", "precision=auto",
                                "channels_last=auto", "compile=auto"])
    return dataclasses.replace(config, **top)


def speed(config: ExperimentConfig) -> tuple[str, bool, bool]:
    return config.precision, config.channels_last, config.compile


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        (AVX2_CPU, ("fp32", True, True)),  # emulated bf16 was 2.5x slower than fp32 there
        (AMX_CPU, ("bf16", True, True)),
        (NO_COMPILER_CPU, ("fp32", False, False)),  # channels-last only pays inside compiled graphs
        (GPU, ("fp32", True, True)),  # bf16 was no faster for the meta-iteration on an H200
    ],
)
def test_auto_picks_per_machine(machine, expected):
    assert speed(resolve_speed_settings(auto_config(), machine)) == expected


def test_short_runs_do_not_compile():
    assert speed(resolve_speed_settings(auto_config(iterations=100), AVX2_CPU)) == ("fp32", False, False)
    assert speed(resolve_speed_settings(auto_config(iterations=100), GPU)) == ("fp32", True, False)


def test_compilation_starts_at_300_meta_iterations():
    # measured to pay for itself at 300 on a cold compile cache (benchmarks/README.md)
    assert speed(resolve_speed_settings(auto_config(iterations=299), AVX2_CPU)) == ("fp32", False, False)
    assert speed(resolve_speed_settings(auto_config(iterations=300), AVX2_CPU)) == ("fp32", True, True)
    assert speed(resolve_speed_settings(auto_config(iterations=300), NO_COMPILER_CPU)) == ("fp32", False, False)


def test_a_long_meta_test_compiles_even_after_a_short_meta_training():
    short = auto_config(iterations=100)  # 600 test episodes (the default)
    assert speed(resolve_speed_settings(short, AVX2_CPU, step="meta_test")) == ("fp32", True, True)
    assert speed(resolve_speed_settings(short, AVX2_CPU)) == ("fp32", False, False)  # meta-training: too short
    few = dataclasses.replace(short, meta_test=dataclasses.replace(short.meta_test, episodes=299))
    assert speed(resolve_speed_settings(few, AVX2_CPU, step="meta_test")) == ("fp32", False, False)
    assert speed(resolve_speed_settings(short, NO_COMPILER_CPU, step="meta_test")) == ("fp32", False, False)


def test_gpu_pretrains_teachers_in_bf16_only_where_native():
    assert resolve_speed_settings(auto_config(), GPU, step="pool").precision == "bf16"
    no_bf16_gpu = Machine("cuda", native_bf16=False, can_compile=True, name="old GPU")
    assert resolve_speed_settings(auto_config(), no_bf16_gpu, step="pool").precision == "fp32"
    assert resolve_speed_settings(auto_config(), AVX2_CPU, step="pool").precision == "fp32"


def test_explicit_values_are_kept():
    config = auto_config(precision="bf16", compile=False)
    assert speed(resolve_speed_settings(config, AVX2_CPU)) == ("bf16", False, False)
    plain = load_config(None)
    assert resolve_speed_settings(plain, AMX_CPU) is plain


def test_auto_is_the_only_extra_spelling():
    with pytest.raises(ConfigError, match="precision: expected one of"):
        load_config(None, ["precision=fast"])
    with pytest.raises(ConfigError, match="compile"):
        load_config(None, ["compile=sometimes"])


def test_the_steps_see_resolved_values():
    args = argparse.Namespace(config=None, overrides=["precision=auto", "channels_last=auto", "compile=auto",
                                                      "meta_train.iterations=100"])
    precision, channels_last, compile_ = speed(load(args))
    assert precision in ("fp32", "bf16") and isinstance(channels_last, bool) and isinstance(compile_, bool)
    assert compile_ is False  # 100 iterations are too short to repay a compilation
