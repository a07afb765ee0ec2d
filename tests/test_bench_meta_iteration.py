"""The meta-iteration benchmark's presets and driver (no timing is asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmark scripts import their siblings by name

import bench_meta_iteration as bench  # noqa: E402


def test_gpu_preset_measures_the_target_rows_before_the_compiled_ones():
    pairs = bench.resolve_configs("gpu")
    for scenario in ("t13", "t13_84px"):
        assert (scenario, "reference") in pairs and (scenario, "optimised") in pairs
    compiled = [i for i, (_, variant) in enumerate(pairs) if bench.variant_for(variant, "cuda").compile]
    assert compiled == list(range(len(pairs) - len(compiled), len(pairs)))  # a time limit cuts them first


def test_optimised_on_cuda_is_what_auto_picks_there():
    variant = bench.variant_for("optimised", "cuda")  # no GPU here: the CUDA rules still apply
    assert (variant.precision, variant.channels_last, variant.compile) == ("fp32", True, True)
    assert bench.variant_for("optimised-bf16", "cuda").precision == "bf16"


def test_a_failing_configuration_is_reported_and_skipped(capsys):
    assert bench.run_worker(["--device", "no-such-device"], ("t4", "reference")) is None
    assert "configuration t4:reference failed" in capsys.readouterr().err
