"""Faults: jobs killed with SIGKILL resume to exactly the numbers of an uninterrupted run and never
leave a half-written file; a killed Snakemake run completes with ``--rerun-incomplete``; identical
runs give identical metrics and report tables.

Every training here runs as a ``python -m purer`` subprocess (one torch thread) that is killed at
seeded-random points: after a trigger (a file appears or is replaced, a number of curve lines) plus
a seeded-random delay.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from pool_helpers import synthetic_split
from workflow_support import REPO, micro_config, output_of, snakemake, tool_env, write_yaml

from purer import paths
from purer.cli.main import main
from purer.config import load_config
from purer.data.cache import save_split
from purer.models.pretrain import resume_path

SEED = 2022
TIMING = {"seconds", "seconds_validation", "seconds_per_iteration", "resumed_from"}
POLL = 0.002  # seconds between checks of a running job's files


def _base_config(root: Path) -> dict:
    """Synthetic 16 px grey dataset (6 train classes), 2 Conv4 teachers, a 12-iteration purer run."""
    return {
        "experiment": "rel",
        "seed": 0,
        "data_dir": str(root / "data"),
        "results_dir": str(root / "results"),
        "datasets": {"toy": {"source": "folder", "path": str(root / "raw"), "image_size": 16}},
        "pool": {"datasets": ["toy"], "n_way": 3, "epochs": 2, "batch_size": 8, "conv4_width": 4,
                 "milestones": [4], "checkpoint_interval": 1},
        "meta_train": {
            "meta_model_width": 4, "n_way": 3, "n_query": 2, "meta_batch_size": 2, "iterations": 12,
            "val_interval": 3, "val_episodes": 3, "checkpoint_interval": 2, "grid_snapshots": 2,
            "outer_lr": 0.01, "inversion": {"data_lr": 0.1},
            "curriculum": {"warmup": 1, "patience": 1, "adv_scale": 1.0},
        },
        "meta_test": {"n_way": 3, "n_query": 2, "episodes": 4},
        "grid": {"methods": ["purer"], "shots": [1], "seeds": [0], "icfil": [False]},
        "report": {"formats": ["md", "csv"], "figure_formats": ["png"]},
    }


def _write(root: Path, raw: dict, name: str = "config.yaml") -> Path:
    path = root / name
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Caches, two trained teachers and their manifest; returns the config file."""
    root = tmp_path_factory.mktemp("tiny")
    config_file = _write(root, _base_config(root))
    config = load_config(config_file)
    for split, n_classes, per_class, seed in (("train", 6, 60, 0), ("val", 4, 6, 1), ("test", 4, 6, 2)):
        save_split(paths.dataset_cache(config, "toy", split), synthetic_split(n_classes, per_class, 16, 1, seed))
    for index in (0, 1):
        assert main(["pool", "train", "-c", str(config_file), "--teacher", str(index)]) == 0
    assert main(["pool", "manifest", "-c", str(config_file)]) == 0
    return config_file


# --------------------------------------------------------------------------------------------
# Running and killing jobs
# --------------------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    return dict(os.environ, PURER_NO_PROGRESS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONWARNINGS="ignore")


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen([sys.executable, "-m", "purer", *args], env=_child_env(),
                                stdout=handle, stderr=subprocess.STDOUT)


def _run(args: list[str], log: Path) -> None:
    process = _spawn(args, log)
    assert process.wait(timeout=300) == 0, log.read_text(errors="replace")[-3000:]


def _kill_when(process: subprocess.Popen, ready: Callable[[], bool], delay: float, log: Path) -> None:
    """SIGKILL ``process`` and its descendants ``delay`` seconds after ``ready()`` first holds; the
    job must not finish before."""
    deadline = time.monotonic() + 300
    while not ready():
        assert process.poll() is None, "job ended before the kill point:\n" + log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, "kill point never reached"
        time.sleep(POLL)
    time.sleep(delay)
    for pid in [process.pid, *_descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert process.wait(timeout=60) == -signal.SIGKILL, "job finished before it could be killed"


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (Linux ``/proc``), so a killed Snakemake takes its jobs along."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


class _Replacements:
    """Counts how often an atomically written file was (re)placed, by polling its inode and mtime."""

    def __init__(self, path: Path) -> None:
        self.path, self.count = path, 0
        self.seen = self._identity()

    def _identity(self):
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def at_least(self, n: int) -> Callable[[], bool]:
        def ready() -> bool:
            identity = self._identity()
            if identity is not None and identity != self.seen:
                self.count += 1
            self.seen = identity
            return self.count >= n

        return ready


# --------------------------------------------------------------------------------------------
# What a killed job may leave behind
# --------------------------------------------------------------------------------------------


def _temporaries(folder: Path) -> list[Path]:
    """Temporary files of :func:`purer.io.atomic_path` (``.<name>.<random>.tmp``)."""
    return sorted(p for p in folder.rglob(".*.tmp"))


def assert_complete(folder: Path) -> None:
    """Every output file under ``folder`` is whole: torch files load, JSON/YAML parse, every JSONL line
    parses and ends with a newline, PNGs decode. Temporary files are skipped: no reader opens them
    (every reader names its file or globs patterns such as ``*.png`` that a ``.tmp`` never matches)."""
    temporaries = set(_temporaries(folder))
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p not in temporaries):
        if path.name == ".purer-output" or path.suffix == ".lock":  # purer/outputs.py bookkeeping
            continue
        if path.suffix == ".pt":
            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".yaml":
            yaml.safe_load(path.read_text(encoding="utf-8"))
        elif path.suffix == ".jsonl":
            text = path.read_text(encoding="utf-8")
            assert text == "" or text.endswith("\n"), f"{path}: torn last line"
            for line in text.splitlines():
                json.loads(line)
        elif path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
        else:
            pytest.fail(f"unexpected file {path}")
    for tmp in temporaries:
        assert tmp.name.startswith(".") and tmp.name.endswith(".tmp"), tmp


# --------------------------------------------------------------------------------------------
# Comparing runs
# --------------------------------------------------------------------------------------------


def assert_same_model(a: Path, b: Path) -> None:
    first, second = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b))
    assert first.keys() == second.keys()
    assert first["state_dict"].keys() == second["state_dict"].keys()
    for name, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][name]), f"{b}: {name} differs"
    assert {k: v for k, v in first.items() if k != "state_dict"} == {
        k: v for k, v in second.items() if k != "state_dict"
    }


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


def assert_same_run(straight: Path, resumed: Path) -> None:
    """Same weights, validation log, curve (timing aside), summary and grids."""
    for name in ("meta_model.pt", "last.pt"):
        assert_same_model(straight / name, resumed / name)
    assert (resumed / "val.jsonl").read_text() == (straight / "val.jsonl").read_text()
    curve = _records(resumed / "curve.jsonl")
    iterations = [r["iteration"] for r in curve]
    assert iterations == sorted(set(iterations)), "duplicate or unordered iterations in curve.jsonl"
    assert [_untimed(r) for r in curve] == [_untimed(r) for r in _records(straight / "curve.jsonl")]
    summaries = [json.loads((run / "summary.json").read_text()) for run in (straight, resumed)]
    assert _untimed(summaries[0]) == _untimed(summaries[1])
    grids = sorted(p.name for p in (straight / "grids").iterdir())
    assert grids == sorted(p.name for p in (resumed / "grids").iterdir()) and grids
    for name in grids:
        assert (straight / "grids" / name).read_bytes() == (resumed / "grids" / name).read_bytes(), name


# --------------------------------------------------------------------------------------------
# SIGKILL during meta-training and teacher training
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_meta_training_resumes_to_the_same_run(tiny, tmp_path):
    args = ["meta-train", "-c", str(tiny), "--method", "purer", "--n-shot", "1", "--seed", "0", "--out"]
    straight, resumed, log = tmp_path / "straight", tmp_path / "resumed", tmp_path / "jobs.log"
    _run([*args, str(straight)], log)

    rng = random.Random(SEED)
    curve, checkpoint = resumed / "curve.jsonl", resumed / "checkpoint.pt"
    # the first kill once checkpoint.pt appears (iteration 2), then at seeded curve lengths, each
    # beyond the previous kill (12 iterations: two or more are left after the last kill point)
    triggers = [lambda: checkpoint.is_file()]
    killed_at = 0
    for target in (rng.randint(4, 6), rng.randint(7, 9)):
        triggers.append(lambda target=target: _lines(curve) >= max(target, killed_at + 1))
    for ready in triggers:
        _kill_when(_spawn([*args, str(resumed)], log), ready, rng.uniform(0.0, 0.03), log)
        killed_at = _lines(curve)
        assert_complete(resumed)
        assert not (resumed / "summary.json").exists()
    for planted in (resumed / ".checkpoint.pt.x1y2z3.tmp", resumed / "grids" / ".grid_iter00012.png.x1y2z3.tmp"):
        planted.parent.mkdir(exist_ok=True)
        planted.write_bytes(b"torn")  # what a kill during an atomic write leaves
    _run([*args, str(resumed)], log)

    assert json.loads((resumed / "summary.json").read_text())["resumed_from"] >= 2
    assert_same_run(straight, resumed)
    assert_complete(resumed)
    assert _temporaries(resumed) == [], "a finished run still holds temporary files"


@pytest.mark.slow
def test_killed_teacher_training_resumes_to_the_same_weights(tiny, tmp_path):
    settings = ["--set", "pool.epochs=10", "--set", "pool.checkpoint_interval=1"]
    args = ["pool", "train", "-c", str(tiny), "--teacher", "0", *settings, "--out"]
    straight, resumed, log = tmp_path / "straight", tmp_path / "resumed", tmp_path / "jobs.log"
    _run([*args, str(straight)], log)

    rng = random.Random(SEED + 1)
    resume = resume_path(resumed / "teacher_00.pt")
    for replacements in (1, rng.randint(1, 3)):  # after its first resume file, then some epochs later
        watcher = _Replacements(resume)
        _kill_when(_spawn([*args, str(resumed)], log), watcher.at_least(replacements), rng.uniform(0, 0.02), log)
        assert_complete(resumed)
        assert resume.is_file() and not (resumed / "teacher_00.pt").exists()
    (resumed / ".teacher_00.resume.pt.x1y2z3.tmp").write_bytes(b"torn")  # a kill during an atomic write
    _run([*args, str(resumed)], log)

    assert_same_model(straight / "teacher_00.pt", resumed / "teacher_00.pt")
    histories = [json.loads((run / "teacher_00.json").read_text()) for run in (straight, resumed)]
    assert [_untimed(h) for h in histories[0]["history"]] == [_untimed(h) for h in histories[1]["history"]]
    assert len(histories[1]["history"]) == 10
    assert not resume.exists()
    assert_complete(resumed)
    assert _temporaries(resumed) == [], "a finished teacher still leaves temporary files"


def test_a_finished_run_keeps_its_best_model_when_a_rerun_deletes_it(tiny, tmp_path):
    """A workflow rerun deletes the job's outputs (meta_model.pt, summary.json) but keeps
    checkpoint.pt: the best model is rewritten from the checkpoint, not lost."""
    out = tmp_path / "run"
    args = ["meta-train", "-c", str(tiny), "--method", "purer", "--n-shot", "1", "--seed", "0", "--out", str(out),
            "--set", "meta_train.iterations=4"]
    assert main(args) == 0
    shutil.copy(out / "meta_model.pt", tmp_path / "best.pt")
    for name in ("meta_model.pt", "summary.json"):
        (out / name).unlink()
    assert main(args) == 0
    assert json.loads((out / "summary.json").read_text())["resumed_from"] == 4
    assert_same_model(tmp_path / "best.pt", out / "meta_model.pt")


def test_retrained_teachers_invalidate_a_checkpoint(tiny, tmp_path, capsys):
    """The checkpoint fingerprint holds the teacher files' digests, not only their paths."""
    root = tmp_path / "copy"
    shutil.copytree(tiny.parent / "data", root / "data")
    shutil.copytree(tiny.parent / "results", root / "results")
    config = _write(root, _base_config(root) | {"meta_train": _base_config(root)["meta_train"] | {"iterations": 2}})
    out = root / "run"
    args = ["meta-train", "-c", str(config), "--method", "purer", "--n-shot", "1", "--seed", "0", "--out", str(out)]
    assert main(args) == 0
    for name in ("summary.json", "meta_model.pt"):  # as Snakemake does before it reruns the job
        (out / name).unlink()
    teacher = paths.teacher_path(load_config(config), 1)
    payload = torch.load(teacher, weights_only=False)
    payload["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    torch.save(payload, teacher)
    assert main(args) == 0
    assert "written for another configuration or code" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["resumed_from"] is None


# --------------------------------------------------------------------------------------------
# Snakemake
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_workflow_completes_with_rerun_incomplete(tmp_path, monkeypatch):
    """SIGKILL to Snakemake and its meta_train job once meta_model.pt exists: a plain rerun is
    refused; ``--unlock`` (the lock survives a SIGKILL) then ``--rerun-incomplete`` completes it,
    resuming from checkpoint.pt, with the numbers of an uninterrupted meta-training."""
    raw = micro_config()
    raw["grid"] = {"methods": ["purer"], "shots": [1], "seeds": [0], "icfil": [False], "icfil_methods": []}
    raw["meta_train"] |= {"iterations": 12, "checkpoint_interval": 1, "val_interval": 2}
    config_file = write_yaml(tmp_path / "micro.yaml", raw)
    config, workdir = load_config(config_file), tmp_path / "wd"
    run = paths.run_dir(config, "purer", 1, 0)
    args = ("--cores", "2", "--configfile", str(config_file), "--directory", str(workdir), str(run / "meta_model.pt"))

    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args]
    log = tmp_path / "snakemake.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, cwd=REPO, env=tool_env(OMP_NUM_THREADS="1"), stdout=handle,
                                   stderr=subprocess.STDOUT)
    _kill_when(process, lambda: (workdir / run / "meta_model.pt").is_file(), 0.0, log)
    assert (workdir / run / "checkpoint.pt").is_file() and not (workdir / run / "summary.json").exists()

    locked = snakemake(*args, "--rerun-incomplete")  # a SIGKILL leaves Snakemake's lock behind
    assert locked.returncode != 0 and "--unlock" in output_of(locked), output_of(locked)
    assert snakemake(*args, "--unlock").returncode == 0
    incomplete = snakemake(*args)  # the half-made meta_model.pt is marked incomplete
    assert incomplete.returncode != 0 and "--rerun-incomplete" in output_of(incomplete), output_of(incomplete)
    result = snakemake(*args, "--rerun-incomplete")
    assert result.returncode == 0, output_of(result)[-3000:]
    assert json.loads((workdir / run / "summary.json").read_text())["resumed_from"] >= 1

    monkeypatch.chdir(workdir)  # the micro config's paths are relative to the workflow's directory
    cli = ["meta-train", "-c", str(config_file), "--method", "purer", "--n-shot", "1", "--seed", "0"]
    assert main([*cli, "--out", str(tmp_path / "reference")]) == 0
    assert_same_run(tmp_path / "reference", workdir / run)


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------


def _tree(tiny: Path, root: Path) -> Path:
    """A copy of the tiny pool (caches, teachers, manifest) under ``root`` with its own config."""
    shutil.copytree(tiny.parent / "data", root / "data")
    shutil.copytree(tiny.parent / "results" / "rel" / "toy" / "pool", root / "results" / "rel" / "toy" / "pool")
    raw = _base_config(root)
    raw["meta_train"] |= {"iterations": 4, "val_interval": 2}
    return _write(root, raw)


def test_identical_runs_give_identical_metrics_and_tables(tiny, tmp_path):
    outputs = []
    for name in ("first", "second"):
        config_file = _tree(tiny, tmp_path / name)
        run = ["-c", str(config_file), "--method", "purer", "--n-shot", "1", "--seed", "0"]
        assert main(["meta-train", *run]) == 0
        assert main(["meta-test", *run]) == 0
        assert main(["report", "-c", str(config_file)]) == 0
        config = load_config(config_file)
        run_dir = paths.run_dir(config, "purer", 1, 0)
        metrics = json.loads((paths.test_dir(run_dir, "toy", False) / "metrics.json").read_text())
        tables = paths.report_dir(config) / "tables"
        outputs.append({
            "metrics": {k: metrics[k] for k in ("accuracy", "ci95", "accuracies", "checkpoint_iteration")},
            "tables": {p.name: p.read_text() for p in sorted(tables.iterdir())},
            "model": (run_dir / "meta_model.pt").read_bytes(),
        })
    first, second = outputs
    assert first["tables"].keys() == {"main.md", "main.csv", "selection.md", "selection.csv"}
    assert first == second
