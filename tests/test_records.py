"""Per-run text records (report.records): small, and the same numbers as the run's files."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import yaml
from test_meta_train import _make_pool

from purer import paths
from purer.cli.main import main
from purer.config import load_config
from purer.report.records import pool_csv, records_dir, write_records

LIMIT = 8 * 1024  # bytes per record file


def test_records_are_small_and_match_the_runs(tmp_path):
    path = _make_pool(tmp_path)
    raw = yaml.safe_load(path.read_text())
    raw["grid"] = {"methods": ["random"], "shots": [1], "seeds": [0], "icfil": [False], "icfil_methods": [],
                   "arms": {"purer-a": {"method": "purer", "set": {"curriculum.patience": 2}}}}
    raw["meta_test"] |= {"episodes": 3, "n_query": 2, "n_way": 3}
    raw["report"] = {"records": True, "formats": ["md"], "figure_formats": ["png"]}
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    for name in ("random", "purer-a"):
        assert main(["meta-train", "-c", str(path), "--method", name, "--n-shot", "1", "--seed", "0"]) in (0, None)
        assert main(["meta-test", "-c", str(path), "--method", name, "--n-shot", "1", "--seed", "0",
                     "--dataset", "toy"]) in (0, None)
    written = write_records(config)
    assert {p.relative_to(records_dir(config)).as_posix() for p in written} == {
        f"{name}/3w1s/seed0/{file}" for name in ("random", "purer-a")
        for file in ("run.json", "val.csv", "switches.csv", "tests.json")} | {"pool.csv"}
    assert all(0 < p.stat().st_size <= LIMIT for p in written)

    run = paths.run_dir(config, "purer-a", 1, 0)
    folder = records_dir(config) / "purer-a" / "3w1s" / "seed0"
    summary = json.loads((run / "summary.json").read_text())
    header = json.loads((folder / "run.json").read_text())
    assert header["arm"] == "purer-a" and header["method"] == "purer"
    for key in ("iterations", "best_iteration", "best_val_accuracy", "seconds", "switch_events", "reversed_strength"):
        assert header[key] == summary[key]
    assert header["digests"]["code"] == summary["fingerprint"]["code"] and "fingerprint" not in header
    val = [json.loads(line) for line in (run / "val.jsonl").read_text().splitlines()]
    rows = list(csv.DictReader((folder / "val.csv").open()))
    assert [(int(r["iteration"]), float(r["accuracy"]), float(r["ci95"])) for r in rows] == [
        (v["iteration"], v["accuracy"], v["ci95"]) for v in val]
    switches = [int(r["iteration"]) for r in csv.DictReader((folder / "switches.csv").open())]
    assert switches == summary["switch_iterations"] and switches  # warm-up 1: the switch acted
    metrics = json.loads((paths.test_dir(run, "toy", "plain") / "metrics.json").read_text())
    test = json.loads((folder / "tests.json").read_text())["toy/plain"]
    assert "accuracies" not in test and test == {k: v for k, v in metrics.items() if k != "accuracies"}

    assert main(["report", "-c", str(path)]) in (0, None)  # the report writes them too (report.records)
    assert (folder / "run.json").read_text() == json.dumps(header, indent=1) + "\n"


def test_the_pool_record_lists_every_teacher_with_its_digest(tmp_path):
    path = _make_pool(tmp_path)
    config = load_config(path)
    manifest = yaml.safe_load(paths.manifest_path(config).read_text())
    rows = list(csv.DictReader(io.StringIO(pool_csv(config))))
    assert len(rows) == len(manifest["teachers"]) > 0
    for row, teacher in zip(rows, manifest["teachers"], strict=True):
        checkpoint = paths.manifest_path(config).parent / teacher["checkpoint"]
        assert int(row["index"]) == teacher["index"] and row["architecture"] == teacher["architecture"]
        assert [int(c) for c in row["classes"].split()] == teacher["classes"]
        assert float(row["val_accuracy"]) == teacher["val_accuracy"]
        assert row["kept_epoch"] == str(teacher.get("kept_epoch", ""))
        assert row["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]
    paths.manifest_path(config).unlink()
    assert pool_csv(config) is None  # no pool yet: no record
