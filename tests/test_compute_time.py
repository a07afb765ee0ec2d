"""The report's compute-time table (purer/report/compute.py): hand-made run folders, known seconds."""

from __future__ import annotations

import json

import pytest
import yaml

from purer import paths
from purer.config import load_config
from purer.report.compute import compute_markdown, compute_rows, format_hms, write_compute

GRID = {
    "methods": ["random"], "shots": [5], "seeds": [0], "icfil": [False],
    "arms": {"ei-t": {"method": "ei"},
             "parity": {"method": "purer", "branch_from": "ei-t", "set": {"curriculum.adv_scale": 10.0}}},
}


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "experiment": "study", "results_dir": str(tmp_path / "results"), "data_dir": str(tmp_path / "data"),
        "meta_train": {"iterations": 10, "val_interval": 2, "curriculum": {"warmup": 4}}, "grid": GRID,
    }))
    return load_config(path)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _run(config, name, curve, val_iterations, summary, test_seconds=None):
    run = paths.run_dir(config, name, 5, 0)
    _write(run / "curve.jsonl", "".join(json.dumps({"iteration": i, "seconds": s}) + "\n" for i, s in curve))
    _write(run / "val.jsonl", "".join(json.dumps({"iteration": i, "accuracy": 30.0}) + "\n" for i in val_iterations))
    _write(run / "summary.json", json.dumps(summary))
    if test_seconds is not None:
        _write(paths.test_dir(run, config.test_datasets[0], False) / "metrics.json",
               json.dumps({"accuracy": 50.0, "seconds_total": 5.0, "seconds_all_checkpoints": test_seconds}))


def test_a_branch_counts_only_its_own_iterations_and_share_of_validations(config, tmp_path):
    # the trunk: 10 iterations of 1 s, 5 validations taking 10 s in all, a 60-s test
    _run(config, "ei-t", [(i, 1.0) for i in range(1, 11)], [2, 4, 6, 8, 10], {"seconds": 10.0, "seconds_validation": 10.0},
         test_seconds=60.0)
    # the branch: the trunk's 4 warm-up lines (1 s) copied, then 6 of its own at 3 s; its summary's
    # validation time (12 s) includes the trunk's 2 validations up to the warm-up: own share 3 of 5
    _run(config, "parity", [(i, 1.0) for i in range(1, 5)] + [(i, 3.0) for i in range(5, 11)], [2, 4, 6, 8, 10],
         {"seconds": 22.0, "seconds_validation": 12.0, "branched_from": {"run": "ei-t", "iteration": 4}})
    rows = compute_rows(config)
    seconds = {(r.run, r.stage): r.seconds for r in rows.itertuples()}
    assert seconds == {("ei-t", "meta-training"): 10.0, ("ei-t", "validation"): 10.0,
                       ("ei-t", "meta-test plain"): 60.0,
                       ("parity", "meta-training"): 18.0, ("parity", "validation"): pytest.approx(12.0 * 3 / 5)}
    assert rows.loc[rows["run"] == "parity", "estimated"].tolist() == [False, True]
    assert "random" not in set(rows["run"])  # no summary, no test: nothing to count

    table = compute_markdown(rows)
    assert "| ei-t | 5 | 1 | 0:00:10 | 0:00:10 | 0:01:00 | 0:01:20 |" in table
    assert "| **total** | | | 0:00:28 | 0:00:17 | 0:01:00 | **0:01:45** |" in table  # 28 s, 17.2 s, 60 s
    assert "Some times are estimates" in table
    written = write_compute(rows, tmp_path / "report")
    assert [p.name for p in written] == ["compute_time.csv", "compute_time.md"]
    assert (tmp_path / "report" / "compute_time.csv").read_text().startswith("run,n_shot,seed,stage,seconds,estimated")


def test_a_test_recorded_before_all_checkpoints_were_timed_counts_its_selected_one(config):
    _run(config, "ei-t", [(1, 1.0)], [], {"seconds": 1.0, "seconds_validation": 0.0})
    test = paths.test_dir(paths.run_dir(config, "ei-t", 5, 0), config.test_datasets[0], False) / "metrics.json"
    _write(test, json.dumps({"accuracy": 50.0, "seconds_total": 5.0}))
    row = compute_rows(config).set_index("stage").loc["meta-test plain"]
    assert (row["seconds"], row["estimated"]) == (5.0, True)


def test_times_read_as_hours_minutes_seconds():
    assert [format_hms(s) for s in (None, 0.4, 59.6, 3599.5, 3600 * 300 + 61)] == ["-", "0:00:00", "0:01:00", "1:00:00",
                                                                           "300:01:01"]


def test_nothing_finished_reads_as_such(config):
    rows = compute_rows(config)
    assert rows.empty and compute_markdown(rows) == "No run has a recorded time yet."


def test_a_malformed_summary_is_one_clear_error(config):
    from purer.errors import DataError

    _write(paths.run_dir(config, "ei-t", 5, 0) / "summary.json", "{not json")
    with pytest.raises(DataError, match=r"run summary .*summary.json is not readable JSON"):
        compute_rows(config)
