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


def test_limit_options_name_what_they_expect(capsys):
    for option, value in (("--limit-precisions", "fp16"), ("--limit-sizes", "32,big")):
        try:
            bench.parse_args([option, value])
        except SystemExit as stop:
            assert stop.code == 2
        else:
            raise AssertionError(f"{option} {value} was accepted")
        assert f"{option}: expected" in capsys.readouterr().err


def test_limits_measure_only_the_sizes_and_precisions_asked_for():
    batch = 128
    args = bench.parse_args(["--threads", "1", "--limit-batch", str(batch), "--limit-sizes", "16",
                             "--limit-precisions", "fp32"])
    rows = bench.conv_limits(args)
    convs = [r for r in rows if r["layers"] != "matmul 2048"]
    assert {(r["size"], r["precision"], r["channels_last"], r["layers"]) for r in convs} == {
        (16, "fp32", cl, layers) for cl in (False, True) for layers in ("conv4 blocks", "conv4 convs")}
    assert [r["precision"] for r in rows if r["layers"] == "matmul 2048"] == ["fp32"]
    # Conv4-32 at 16 px: 3x3 convolutions of 3->32 channels at 16 px, then 32->32 at 8, 4 and 2 px
    # (2 FLOPs per multiply-add), and the 32->5 head; the input gradient costs as much again
    conv_forward = 2 * batch * 9 * (3 * 32 * 16**2 + 32 * 32 * (8**2 + 4**2 + 2**2))
    head_forward = 2 * batch * 32 * 5
    assert convs[0]["gflop"] == round(2 * (conv_forward + head_forward) / 1e9, 2) == 0.51
