"""benchmarks/time_pipeline.py: Snakemake's log read into per-rule times, the report table compared with the
committed one, and (slow) one whole timed micro run from a fresh clone."""

from __future__ import annotations

import csv
import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_support import micro_config, tool_env, write_yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmark scripts import their siblings by name

import time_pipeline  # noqa: E402

# From a real micro run (Snakemake 9.27.1, --cores 2; input lists shortened): two meta_train jobs side by
# side, then a meta_test that starts while the second meta_train still runs.
LOG = """\
Select jobs to execute...
Execute 2 jobs...
[Mon Nov 30 18:51:16 2026]
localrule meta_train:
    input: /work/wt/timing/purer/cli/meta_train.py, results/micro/glyphs/pool/manifest.yaml
    output: results/micro/glyphs/random/5w1s/seed0/meta_model.pt, results/micro/glyphs/random/5w1s/seed0/summary.json
    log: logs/micro/meta_train/random_1shot_seed0.log
    jobid: 14
    reason: Missing output files: results/micro/glyphs/random/5w1s/seed0/summary.json
    wildcards: method=random, n_shot=1, seed=0
    resources: tmpdir=/tmp, gpu=0, runtime=60, cpus_per_gpu=8, mem_mb=32000, mem=32 GB, mem_mib=30518
[Mon Nov 30 18:51:16 2026]
localrule meta_train:
    input: /work/wt/timing/purer/cli/meta_train.py, results/micro/glyphs/pool/manifest.yaml
    output: results/micro/glyphs/purer/5w1s/seed0/meta_model.pt, results/micro/glyphs/purer/5w1s/seed0/summary.json
    log: logs/micro/meta_train/purer_1shot_seed0.log
    jobid: 3
    reason: Missing output files: results/micro/glyphs/purer/5w1s/seed0/summary.json
    wildcards: method=purer, n_shot=1, seed=0
    resources: tmpdir=/tmp, gpu=0, runtime=1440, cpus_per_gpu=8, mem_mb=32000, mem=32 GB, mem_mib=30518
[Mon Nov 30 18:51:26 2026]
Finished jobid: 14 (Rule: meta_train)
5 of 15 steps (33%) done
Select jobs to execute...
Execute 1 jobs...
[Mon Nov 30 18:51:26 2026]
localrule meta_test:
    input: /work/wt/timing/purer/cli/meta_test.py, results/micro/glyphs/random/5w1s/seed0/meta_model.pt
    output: results/micro/glyphs/random/5w1s/seed0/test/glyphs/plain/metrics.json
    log: logs/micro/meta_test/random_1shot_seed0_glyphs_plain.log
    jobid: 13
    reason: Missing output files: results/micro/glyphs/random/5w1s/seed0/test/glyphs/plain/metrics.json
    wildcards: method=random, n_shot=1, seed=0, dataset=glyphs
    resources: tmpdir=/tmp, gpu=0, runtime=60, cpus_per_gpu=4, mem_mb=16000, mem=16 GB, mem_mib=15259
[Mon Nov 30 18:51:27 2026]
Finished jobid: 3 (Rule: meta_train)
6 of 15 steps (40%) done
Select jobs to execute...
[Mon Nov 30 18:51:36 2026]
Finished jobid: 13 (Rule: meta_test)
7 of 15 steps (47%) done
"""

# From a real failing run (Snakemake 9.27.1): job 1 finishes, job 2 fails.
FAILED_LOG = """\
[Mon Nov 30 18:54:26 2026]
localrule b:
    output: b
    jobid: 2
    reason: Missing output files: b
    resources: tmpdir=/tmp
[Mon Nov 30 18:54:26 2026]
localrule a:
    output: a
    jobid: 1
    reason: Missing output files: a
    resources: tmpdir=/tmp
[Mon Nov 30 18:54:27 2026]
Finished jobid: 1 (Rule: a)
1 of 3 steps (33%) done
RuleException:
CalledProcessError in file "/tmp/tfail/Snakefile", line 8:
Command 'set -euo pipefail;  sleep 2; exit 1' returned non-zero exit status 1.
[Mon Nov 30 18:54:28 2026]
Error in rule b:
    message: None
    jobid: 2
    output: b
Shutting down, this might take some time.
"""

HEADER = ("dataset,label,variant,method,icfil,n_way,n_shot,setting,mean,ci95,n_seeds,ci_kind,best,experiment,"
          "scenario,learner,teacher_weighting,n_teachers,selection,episodes,pool,seeds\n")


def _row(method: str, icfil: bool, mean: float, ci95: float) -> str:
    return (f"mini-imagenet,{method},{method},{method},{icfil},5,1,5-way 1-shot,{mean},{ci95},1,episodes,False,"
            f"bench,mini-imagenet,maml,equal,13,val,300,mini-imagenet,0\n")


def _at(clock: str) -> dt.datetime:
    return dt.datetime.strptime(f"2026-11-30 {clock}", "%Y-%m-%d %H:%M:%S")


def test_the_log_gives_each_job_its_rule_start_and_end():
    jobs = time_pipeline.parse_snakemake_log(LOG)
    assert [(j.jobid, j.rule, j.start, j.end) for j in jobs] == [
        (3, "meta_train", _at("18:51:16"), _at("18:51:27")),
        (14, "meta_train", _at("18:51:16"), _at("18:51:26")),
        (13, "meta_test", _at("18:51:26"), _at("18:51:36")),
    ]
    assert [j.seconds for j in jobs] == [11.0, 10.0, 10.0]


def test_a_single_digit_day_is_read():
    """Snakemake writes dates as ``time.ctime`` does: a day below 10 is padded with a space."""
    log = "[Tue Dec  1 09:00:05 2026]\nlocalrule report:\n    jobid: 1\n[Tue Dec  1 09:00:12 2026]\nFinished jobid: 1\n"
    (job,) = time_pipeline.parse_snakemake_log(log)
    assert (job.rule, job.start, job.seconds) == ("report", dt.datetime(2026, 12, 1, 9, 0, 5), 7.0)


def test_per_rule_times_of_overlapping_jobs():
    rules = time_pipeline.rule_summary(time_pipeline.parse_snakemake_log(LOG), total_s=20.0)
    # meta_train: jobs of 10 s and 11 s side by side from 18:51:16, the last ending 18:51:27;
    # meta_test: 18:51:26-18:51:36, starting while a meta_train still runs
    assert [(r["rule"], r["jobs"], r["job_seconds"], r["wall_span_s"], r["share_of_wall"]) for r in rules] == [
        ("meta_train", 2, 21.0, 11.0, 11 / 20),
        ("meta_test", 1, 10.0, 10.0, 10 / 20),
    ]
    assert rules[0]["first_start"] == _at("18:51:16") and rules[0]["last_end"] == _at("18:51:27")
    assert all(r["unfinished"] == 0 for r in rules)


def test_a_failed_or_unfinished_job_is_counted_as_unfinished():
    jobs = {j.jobid: j for j in time_pipeline.parse_snakemake_log(FAILED_LOG)}
    assert (jobs[1].rule, jobs[1].seconds, jobs[1].failed) == ("a", 1.0, False)
    assert (jobs[2].rule, jobs[2].seconds, jobs[2].failed) == ("b", 2.0, True)
    running = time_pipeline.parse_snakemake_log(LOG.split("[Mon Nov 30 18:51:36 2026]")[0])
    rules = {r["rule"]: r for r in time_pipeline.rule_summary(running, total_s=20.0)}
    assert rules["meta_test"]["unfinished"] == 1 and rules["meta_test"]["wall_span_s"] is None
    assert rules["meta_train"]["unfinished"] == 0


def test_tables_compare_within_outside_missing_and_extra():
    committed = time_pipeline.read_table(
        HEADER + _row("random", False, 20.0, 1.0) + _row("purer", False, 30.0, 1.0)
        + _row("ei", False, 25.0, 0.5) + _row("purer", True, 35.0, 0.5)
    )
    new = time_pipeline.read_table(
        HEADER + _row("random", False, 20.5, 0.8) + _row("purer", False, 32.0, 1.5)
        + _row("ei", False, 26.0, 2.0) + _row("average", False, 22.0, 0.6)
    )
    rows = {(r["key"].split("method=")[1].split(",")[0], "icfil=True" in r["key"]): r
            for r in time_pipeline.compare_tables(committed, new)}
    random, purer, ei = rows[("random", False)], rows[("purer", False)], rows[("ei", False)]
    assert (random["status"], random["difference"], random["within"]) == ("both", 0.5, True)  # 0.5 <= 1.0
    assert (purer["difference"], purer["within"]) == (2.0, False)  # 2.0 > max(1.0, 1.5)
    assert (ei["difference"], ei["within"]) == (1.0, True)  # outside the committed 0.5, inside the new 2.0
    assert rows[("purer", True)]["status"] == "missing" and rows[("purer", True)]["new_mean"] is None
    assert rows[("average", False)]["status"] == "extra" and rows[("average", False)]["new_mean"] == 22.0
    text = time_pipeline.comparison_markdown(list(rows.values()))
    assert "2 of 3 rows within the larger ci95." in text
    # rows are named by the key parts that differ; the shared ones are said once
    assert "Rows in the committed table only: method=purer, variant=purer, icfil=True." in text
    assert "Rows in the new table only: method=average, variant=average, icfil=False." in text
    assert "| method=purer, variant=purer, icfil=False | 30.00 ± 1.00 | 32.00 ± 1.50 | +2.00 | **no** |" in text
    assert ("Every row: dataset=mini-imagenet, scenario=mini-imagenet, pool=mini-imagenet, n_way=5, n_shot=1, "
            "learner=maml, teacher_weighting=equal, selection=val.") in text


def test_an_existing_target_folder_is_refused(tmp_path, capsys, write_config):
    config = write_config({"experiment": "micro"})
    target = tmp_path / "taken"
    target.mkdir()
    assert time_pipeline.main(["--config", str(config), "--workdir", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"time_pipeline: error: {target} exists: choose another --workdir or remove it"
    assert list(target.iterdir()) == []


@pytest.mark.slow
def test_a_micro_run_from_a_fresh_clone(tmp_path):
    config = micro_config(grid={"methods": ["random"], "shots": [1], "seeds": [0], "icfil": [False],
                                "icfil_methods": []})
    config_file = write_yaml(tmp_path / "micro.yaml", config)
    clone, out = tmp_path / "clone", tmp_path / "pipeline.csv"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "time_pipeline.py"), "--config", str(config_file),
         "--workdir", str(clone), "--out", str(out)],
        cwd=REPO, env=tool_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"purer from {clone.resolve() / 'purer'}" in result.stdout  # the jobs import the clone's package
    assert (clone / ".time_pipeline" / "micro.yaml").read_text() == config_file.read_text()
    assert (clone / "results" / "micro" / "report" / "tables" / "main.csv").is_file()
    rows = {row["rule"]: row for row in csv.DictReader(out.open())}
    assert {rule: int(row["jobs"]) for rule, row in rows.items()} == {
        "prepare_glyphs": 1, "pool_train": 2, "pool_manifest": 1, "meta_train": 1, "meta_test": 1, "report": 1,
        "all": 1, "(total)": 8,
    }
    assert rows["(total)"]["wall_span_s"] == rows["(total)"]["total_wall_s"]
    assert {row["cold_cache"] for row in rows.values()} == {"False"}
    assert "no committed results/micro/report/tables/main.csv in HEAD" in result.stdout


def test_only_a_table_the_run_rewrote_is_compared(tmp_path, capsys):
    """A clone holds the committed table: compared with itself it would always agree, so a file the run did not
    rewrite is not compared. Here the committed report of the default experiment stands in for a clone's."""
    main_csv = Path("results/default/report/tables/main.csv")
    committed = (REPO / main_csv).read_text()  # tracked: the same text as HEAD's in a clean checkout
    table = tmp_path / main_csv
    table.parent.mkdir(parents=True)
    table.write_text(committed)
    before = time_pipeline.stamp_of(table)
    out = tmp_path / "tables.csv"
    time_pipeline.compare_with_committed(main_csv, tmp_path, out, before)
    assert "the run did not write results/default/report/tables/main.csv" in capsys.readouterr().out
    assert not out.exists()

    first = committed.splitlines()[1].split(",")
    mean_at = committed.splitlines()[0].split(",").index("mean")
    first[mean_at] = str(float(first[mean_at]) + 50)  # far outside any ci95
    rewritten = tmp_path / "new.csv"
    rewritten.write_text("\n".join([committed.splitlines()[0], ",".join(first), *committed.splitlines()[2:]]) + "\n")
    rewritten.replace(table)  # as the report writes: a new file
    time_pipeline.compare_with_committed(main_csv, tmp_path, out, before)
    text = capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == len(committed.splitlines()) - 1 and {r["status"] for r in rows} == {"both"}
    assert [r["within"] for r in rows].count("False") == 1 and float(rows[0]["difference"]) == pytest.approx(50)
    assert f"{len(rows) - 1} of {len(rows)} rows within the larger ci95." in text


def test_a_committed_config_is_used_in_place_and_any_other_is_copied(tmp_path):
    clone = tmp_path / "clone"
    committed = REPO / "config" / "experiments" / "bench.yaml"
    (clone / "config" / "experiments").mkdir(parents=True)
    (clone / "config" / "experiments" / "bench.yaml").write_bytes(committed.read_bytes())
    assert time_pipeline.config_in_clone(committed, clone) == ("config/experiments/bench.yaml", "committed")
    (clone / "config" / "experiments" / "bench.yaml").write_text("experiment: changed\n")  # HEAD's differs
    assert time_pipeline.config_in_clone(committed, clone) == (".time_pipeline/bench.yaml",
                                                              "differs from HEAD's: copied")
    assert (clone / ".time_pipeline" / "bench.yaml").read_bytes() == committed.read_bytes()
    outside = write_yaml(tmp_path / "mine.yaml", {"experiment": "mine"})
    assert time_pipeline.config_in_clone(outside, clone) == (".time_pipeline/mine.yaml",
                                                            "outside the repository: copied")


def test_analyse_makes_the_tables_of_a_run_already_made(tmp_path, capsys):
    """--analyse reads a clone's Snakemake log (here the micro excerpt above) and runs nothing: the total is
    the log's span, 18:51:16 to 18:51:36; no report job finished, so no table is compared."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    (clone / ".snakemake" / "log").mkdir(parents=True)
    (clone / ".snakemake" / "log" / "2026-11-30T185116.snakemake.log").write_text(LOG)
    # named as the default experiment, whose report table HEAD holds: the one to compare against
    config_file = write_yaml(tmp_path / "micro.yaml", micro_config() | {"experiment": "default"})
    out = tmp_path / "pipeline.csv"
    assert time_pipeline.main(["--config", str(config_file), "--analyse", str(clone), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "default: 20 s from the first job's start" in text and "3 jobs, 0 unfinished or failed" in text
    rows = {row["rule"]: row for row in csv.DictReader(out.open())}
    assert (rows["meta_train"]["jobs"], float(rows["meta_train"]["job_seconds"])) == ("2", 10.0 + 11.0)
    assert float(rows["(total)"]["wall_span_s"]) == 20.0
    assert "the run did not write results/default/report/tables/main.csv" in text
    assert not list(clone.glob("results/**/*.pt"))  # nothing ran


def test_analyse_refuses_a_folder_that_is_not_a_clone(tmp_path, capsys):
    config_file = write_yaml(tmp_path / "micro.yaml", micro_config())
    assert time_pipeline.main(["--config", str(config_file), "--analyse", str(tmp_path)]) == 2
    assert f"--analyse {tmp_path.resolve()}: not a clone (no .git)" in capsys.readouterr().err
