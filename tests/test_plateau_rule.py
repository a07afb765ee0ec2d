"""The plateau rule that fixes the replication study's warm-up and length (purer/report/plateau.py)."""

from __future__ import annotations

import json

import pytest

from purer.errors import DataError
from purer.report.plateau import PlateauRule, gains, main, plateau, read_curve, smoothed, warmup_for


def test_warmup_is_the_larger_margin_rounded_up_to_500():
    assert warmup_for(1000) == 2000  # max(1250, 2000)
    assert warmup_for(4000) == 5000  # max(5000, 5000)
    assert warmup_for(4250) == 5500  # 1.25 * 4250 = 5312.5 -> 5500
    assert warmup_for(6000) == 7500  # the "not reached" outcome of a 6,000-iteration pilot


def test_smoothed_and_gains_by_hand():
    curve = {250 * k: float(k) for k in range(1, 13)}  # accuracy k at iteration 250k: +1 per 250
    s = smoothed(curve, 250, 4)
    assert min(s) == 1000 and s[1000] == pytest.approx((1 + 2 + 3 + 4) / 4)
    g = gains(curve, 250, PlateauRule())
    assert sorted(g) == [1000, 1250, 1500, 1750, 2000]
    assert all(v == pytest.approx(4.0) for v in g.values())  # 1,000 iterations ahead = +4 points


def test_plateau_is_the_first_of_three_small_gains_and_not_before_start():
    # rises by 1 point per 250 to iteration 2000, then flat
    curve = {250 * k: float(min(k, 8)) for k in range(1, 25)}
    out = plateau(curve)
    # S(2250) = (6+7+8+8)/4 = 7.25, S(2500) = 7.75, S(i) = 8 from 2750 on, so g(2250) = 0.75,
    # g(2500) = 0.25, g(2750) = g(3000) = 0: the first of three gains below 0.5 is at P = 2500
    assert out["gains"]["2250"] == pytest.approx(0.75) and out["gains"]["2500"] == pytest.approx(0.25)
    assert out["reached"] and out["plateau"] == 2500
    assert (out["warmup"], out["length"]) == (3500, 10500)


def test_no_plateau_gives_the_cap():
    curve = {250 * k: 30 + 0.5 * k for k in range(1, 25)}  # +2 points per 1,000 iterations to 6,000
    out = plateau(curve)
    assert not out["reached"] and out["plateau"] == 6000 and (out["warmup"], out["length"]) == (7500, 22500)


def test_a_single_small_gain_is_not_a_plateau():
    # steady +1 per 250 except one flat stretch: g dips below 0.5 at one point only
    values = [1, 2, 3, 4, 5, 6, 7, 8, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    curve = {250 * (k + 1): float(v) for k, v in enumerate(values)}
    assert not plateau(curve)["reached"]


def test_bad_curves_are_refused(tmp_path):
    with pytest.raises(DataError, match="evenly spaced"):
        plateau({250: 1.0, 500: 2.0, 1000: 3.0})
    bad = tmp_path / "val.csv"
    bad.write_text("iteration,acc\n250,1\n", encoding="utf-8")
    with pytest.raises(DataError, match="val.csv: expected rows with 'iteration' and 'accuracy'"):
        read_curve(bad)


def test_command_reads_a_record_and_writes_the_outcome(tmp_path, capsys):
    record = tmp_path / "val.csv"
    record.write_text("iteration,accuracy,ci95\n" + "".join(f"{250 * k},{min(k, 8)},0.9\n" for k in range(1, 25)))
    main([str(record), "--out", str(tmp_path / "plateau.json")])
    out = json.loads((tmp_path / "plateau.json").read_text())
    assert out["plateau"] == 2500 and out["warmup"] == 3500 and out["last_iteration"] == 6000
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.csv"), "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2 and "missing.csv: cannot read" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
