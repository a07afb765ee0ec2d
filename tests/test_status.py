"""`purer status`: each run's progress from its logs, never a test number (purer/status.py)."""

from __future__ import annotations

import json
import os

import yaml

from purer import paths
from purer.cli.main import main
from purer.config import load_config, to_dict
from purer.status import experiment_status, status_table

GRID = {
    "methods": ["random"], "shots": [5], "seeds": [0], "icfil": [False],
    "arms": {"ei-t": {"method": "ei"},
             "parity": {"method": "purer", "branch_from": "ei-t", "set": {"curriculum.adv_scale": 10.0}}},
}


def _config(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "experiment": "study", "results_dir": str(tmp_path / "results"), "data_dir": str(tmp_path / "data"),
        "meta_train": {"iterations": 1000, "val_interval": 100, "curriculum": {"warmup": 400}},
        "grid": GRID,
    }))
    return path, load_config(path)


def _log(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_states_progress_validation_and_time_left(tmp_path):
    path, config = _config(tmp_path)
    trunk = paths.run_dir(config, "ei-t", 5, 0)
    # 250 meta-iterations at 2 s each (one slow first iteration), a torn last line from a stopped sitting
    _log(trunk / "curve.jsonl", [{"iteration": i, "seconds": 60.0 if i == 1 else 2.0} for i in range(1, 251)])
    with open(trunk / "curve.jsonl", "a") as handle:
        handle.write('{"iteration": 251, "sec')
    _log(trunk / "val.jsonl", [{"iteration": 100, "accuracy": 31.0}, {"iteration": 200, "accuracy": 30.5}])
    random_run = paths.run_dir(config, "random", 5, 0)
    (random_run).mkdir(parents=True)
    (random_run / "summary.json").write_text("{}")
    test = paths.test_dir(random_run, config.test_datasets[0], False) / "metrics.json"
    test.parent.mkdir(parents=True)
    test.write_text(json.dumps({"accuracy": 99.987}))

    # the checkpoint was written last, 90 s before `now`; the logs earlier
    (trunk / "checkpoint.pt").write_bytes(b"")
    now = 1_800_000_000.0
    for name, written in (("curve.jsonl", now - 400), ("val.jsonl", now - 900), ("checkpoint.pt", now - 90)):
        os.utime(trunk / name, (written, written))

    rows = {r.run: r for r in experiment_status(config, now=now)}
    trunk_row = rows["ei-t"]
    assert (trunk_row.state, trunk_row.iteration, trunk_row.iterations) == ("partial", 250, 1000)
    assert trunk_row.last_val == (200, 30.5) and trunk_row.best_val == (100, 31.0)
    assert trunk_row.seconds_left == 750 * 2.0  # median of the last 100 iterations, not the slow first one
    assert rows["random"].state == "finished" and rows["random"].iterations == 0
    assert (rows["random"].tests_done, rows["random"].tests) == (1, 1)
    parity = rows["parity"]
    assert (parity.state, parity.start, parity.seconds_left) == ("not started", 400, None)
    assert trunk_row.seconds_since_write == 90.0
    assert rows["random"].seconds_since_write is None and parity.seconds_since_write is None  # not partial

    table = status_table(list(rows.values()))
    # left: the trunk 750, the branch 1000 - 400 from its warm-up on; the finished initialisation 0
    assert "1 of 3 runs finished; 1350 meta-iterations left" in table
    assert "| ei-t | 5 | 0 | partial | 250/1000 | 0 | 30.50 @200 | 31.00 @100 | 0 | 0h25 | 90 s ago | 0/1 |" in table


def test_a_stopped_run_resumes_from_its_last_checkpoint_not_its_last_log_line(tmp_path):
    path, config = _config(tmp_path)  # checkpoint_interval: 500 (the default)
    trunk = paths.run_dir(config, "ei-t", 5, 0)
    _log(trunk / "curve.jsonl", [{"iteration": i, "seconds": 2.0} for i in range(1, 613)])
    row = {r.run: r for r in experiment_status(config)}["ei-t"]
    assert (row.iteration, row.checkpoint) == (612, 0)  # no checkpoint written: it starts over
    (trunk / "checkpoint.pt").write_bytes(b"")
    rows = {r.run: r for r in experiment_status(config)}
    assert (rows["ei-t"].iteration, rows["ei-t"].checkpoint) == (612, 500)
    assert "| ei-t | 5 | 0 | partial | 612/1000 | 500 |" in status_table(list(rows.values()))
    branch = paths.run_dir(config, "parity", 5, 0)
    _log(branch / "curve.jsonl", [{"iteration": i, "seconds": 2.0} for i in range(401, 451)])
    (branch / "checkpoint.pt").write_bytes(b"")
    parity = {r.run: r for r in experiment_status(config)}["parity"]
    assert (parity.iteration, parity.checkpoint) == (450, 400)  # from the trunk's warm-up, not 0
    assert rows["random"].checkpoint is None  # not partial


def test_command_prints_the_table_without_test_numbers(tmp_path, capsys):
    path, config = _config(tmp_path)
    run = paths.run_dir(config, "random", 5, 0)
    test = paths.test_dir(run, config.test_datasets[0], False) / "metrics.json"
    test.parent.mkdir(parents=True)
    test.write_text(json.dumps({"accuracy": 99.987, "ci95": 0.123}))
    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("experiment study; pool: ")
    assert "| random | 5 | 0 | not started | - |" in out and "| 1/1 |" in out
    assert "99.98" not in out and "0.123" not in out


def test_logs_of_another_configuration_are_stale(tmp_path):
    """A folder left by a run of another length restarts from scratch: its logs are not progress."""
    path, config = _config(tmp_path)
    trunk = paths.run_dir(config, "ei-t", 5, 0)
    _log(trunk / "curve.jsonl", [{"iteration": i, "seconds": 2.0} for i in range(1, 301)])
    _log(trunk / "val.jsonl", [{"iteration": 100, "accuracy": 31.0}])
    written = {"meta_train": to_dict(config.meta_train) | {"iterations": 2000, "checkpoint_interval": 7}}
    (trunk / "config.resolved.yaml").write_text(yaml.safe_dump(written))
    row = {r.run: r for r in experiment_status(config)}["ei-t"]
    assert (row.state, row.iteration, row.last_val, row.seconds_left) == ("stale", 0, None, None)
    # the same meta_train but a neutral key (checkpoint_interval) is the same run, resumable
    written["meta_train"]["iterations"] = config.meta_train.iterations
    (trunk / "config.resolved.yaml").write_text(yaml.safe_dump(written))
    row = {r.run: r for r in experiment_status(config)}["ei-t"]
    assert (row.state, row.iteration, row.last_val) == ("partial", 300, (100, 31.0))


def test_last_write_ages_read_in_seconds_minutes_then_hours(tmp_path):
    _, config = _config(tmp_path)
    trunk = paths.run_dir(config, "ei-t", 5, 0)
    _log(trunk / "curve.jsonl", [{"iteration": 1, "seconds": 2.0}])
    now = 1_800_000_000.0
    shown = {}
    for age in (5, 119, 120, 7199, 7200 + 3 * 60):
        os.utime(trunk / "curve.jsonl", (now - age, now - age))
        row = {r.run: r for r in experiment_status(config, now=now)}["ei-t"]
        shown[age] = status_table([row]).splitlines()[2].split(" | ")[-2]
    assert shown == {5: "5 s ago", 119: "119 s ago", 120: "2 min ago", 7199: "119 min ago", 7200 + 180: "2h03 ago"}
