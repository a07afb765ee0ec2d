"""A shared file is data, never code; one writer per output folder; OS and data faults are one line.

Every case is run through the command line (``purer.cli.main.main``) as a user would: exit status
2, one ``purer <step>: error: ...`` line naming the file, no traceback, nothing left behind. The
catalogue of these messages is docs/errors.md ("Files are data, never code", "One writer per
folder", "Operating-system and data faults").

A *payload* is a real purer file of each format with one extra entry whose unpickling creates a
marker file (``open(marker, "w")``): if any step unpickled it, the marker would exist.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from pool_helpers import fake_checkpoint, synthetic_split
from workflow_support import micro_config, output_of, snakemake, write_yaml

from purer import paths
from purer.cli.main import main
from purer.config import load_config
from purer.data.cache import save_split
from purer.errors import OutputError
from purer.io import load_torch, plain_data
from purer.models.pool import teacher_specs
from purer.models.pretrain import resume_path
from purer.outputs import LOCK, MARKER

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) ")
REFUSED = "holds a pickled object that is not plain data (global io.open): refusing to load it"


def fails(capsys, argv: list, match: str, *absent: Path) -> str:
    """Run ``purer ARGV``; assert exit 2, one error line matching ``match``, no traceback, and that
    no path in ``absent`` exists. Returns the line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"purer {argv[0]}: error: "), lines[0]
    assert re.search(match, lines[0]), lines[0]
    for path in absent:
        assert not Path(path).exists(), f"{path} was left behind"
    return lines[0]


class Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): a stand-in for any code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def poison(path: Path, marker: Path) -> None:
    """Rewrite the torch file ``path`` with a payload entry beside its real content."""
    raw = torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else {}
    raw["note"] = Payload(marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(raw, path)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# A tiny setup: synthetic caches, two untrained Conv4 teachers, a manifest, a 2-iteration run
# --------------------------------------------------------------------------------------------


def _raw(root: Path) -> dict:
    return {
        "experiment": "safe",
        "seed": 0,
        "data_dir": str(root / "data"),
        "results_dir": str(root / "results"),
        "datasets": {"toy": {"source": "folder", "path": str(root / "raw"), "image_size": 16}},
        "pool": {"datasets": ["toy"], "n_way": 3, "epochs": 1, "batch_size": 8, "conv4_width": 4,
                 "checkpoint_interval": 1},
        "meta_train": {"meta_model_width": 4, "n_way": 3, "n_query": 2, "meta_batch_size": 1, "iterations": 2,
                       "val_interval": 2, "val_episodes": 2, "checkpoint_interval": 1, "grid_snapshots": 1,
                       "init": "random"},
        "meta_test": {"n_way": 3, "n_query": 2, "episodes": 2},
    }


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safe")
    config_file = _write(root / "config.yaml", _raw(root))
    config = load_config(config_file)
    for split, n_classes, seed in (("train", 6, 0), ("val", 4, 1), ("test", 4, 2)):
        save_split(paths.dataset_cache(config, "toy", split), synthetic_split(n_classes, 6, 16, 1, seed))
    for spec in teacher_specs(config):
        fake_checkpoint(spec, paths.teacher_path(config, spec.index), channels=1, seed=spec.index)
    assert main(["pool", "manifest", "-c", str(config_file)]) == 0
    assert main(_train(config_file, seed=0)) == 0
    return config_file


@pytest.fixture
def copy(setup, tmp_path) -> Path:
    """A private copy of the setup (its config points into the copy), for tests that damage files."""
    root = tmp_path / "copy"
    for folder in ("data", "results"):
        shutil.copytree(setup.parent / folder, root / folder)
    return _write(root / "config.yaml", _raw(root))


def _config(config_file: Path):
    return load_config(config_file)


def _pool(config_file: Path) -> Path:
    return paths.pool_dir(_config(config_file))


def _run(config_file: Path, seed: int = 0) -> Path:
    return paths.run_dir(_config(config_file), "purer", 1, seed)


def _cache(config_file: Path, split: str) -> Path:
    return paths.dataset_cache(_config(config_file), "toy", split)


def _train(config_file: Path, *extra, seed: int = 5) -> list[str]:
    return ["meta-train", "-c", str(config_file), "--method", "purer", "--n-shot", "1", "--seed", str(seed), *extra]


def _test(config_file: Path, out: Path, *extra) -> list:
    return ["meta-test", "-c", config_file, "--method", "purer", "--n-shot", "1", "--seed", "0", "--out", out, *extra]


# --------------------------------------------------------------------------------------------
# 1. Files are data, never code
# --------------------------------------------------------------------------------------------


def test_the_payload_is_live_when_loaded_unsafely(tmp_path):
    """The payload really runs code under a plain unpickler (so the refusals below mean something)."""
    marker = tmp_path / "ran"
    poison(tmp_path / "file.pt", marker)
    torch.load(tmp_path / "file.pt", weights_only=False)
    assert marker.exists()


def test_payload_teacher_is_refused_by_pool_manifest_and_meta_train(copy, capsys, tmp_path):
    marker = tmp_path / "ran"
    teacher = _pool(copy) / "teacher_01.pt"
    poison(teacher, marker)
    message = f"teacher checkpoint {re.escape(str(teacher))} {re.escape(REFUSED)}$"
    fails(capsys, _train(copy), message, _run(copy, 5), marker)  # nothing written: the run folder never exists
    before = snapshot(_pool(copy))
    fails(capsys, ["pool", "manifest", "-c", copy], message, marker)
    assert snapshot(_pool(copy)) == before


def test_payload_teacher_resume_file_is_refused_by_pool_train(copy, capsys, tmp_path):
    marker = tmp_path / "ran"
    resume = resume_path(_pool(copy) / "teacher_00.pt")
    poison(resume, marker)
    fails(capsys, ["pool", "train", "-c", copy, "--teacher", "0"],
          f"teacher resume file {re.escape(str(resume))} {re.escape(REFUSED)}$", marker)


def test_payload_meta_train_checkpoint_is_refused_by_meta_train(copy, capsys, tmp_path):
    marker = tmp_path / "ran"
    run = _run(copy)
    (run / "summary.json").unlink()  # not finished: the rerun reads checkpoint.pt to resume
    poison(run / "checkpoint.pt", marker)
    before = snapshot(run)
    fails(capsys, _train(copy, seed=0), f"meta-training checkpoint {re.escape(str(run / 'checkpoint.pt'))} "
          f"{re.escape(REFUSED)}$", marker)
    unlocked = {k: v for k, v in snapshot(run).items() if k != LOCK}
    assert unlocked == {k: v for k, v in before.items() if k != LOCK}  # only the lock file was rewritten


@pytest.mark.parametrize("name", ["meta_model.pt", "last.pt"])
def test_payload_meta_model_is_refused_by_meta_test(copy, capsys, tmp_path, name):
    marker = tmp_path / "ran"
    model = _run(copy) / name
    poison(model, marker)
    selection = {"meta_model.pt": "val", "last.pt": "last"}[name]
    fails(capsys, _test(copy, tmp_path / "out", "--set", f"meta_test.selection={selection}"),
          f"meta model {re.escape(str(model))} {re.escape(REFUSED)}$", marker, tmp_path / "out")


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_payload_cached_split_is_refused(copy, capsys, tmp_path, split):
    """Each split through the step that reads it: pool train (train), meta-train (val), meta-test (test)."""
    marker = tmp_path / "ran"
    cache = _cache(copy, split)
    poison(cache, marker)
    argv = {
        "train": ["pool", "train", "-c", copy, "--teacher", "0"],
        "val": _train(copy),
        "test": _test(copy, tmp_path / "out"),
    }[split]
    fails(capsys, argv, f"cached split {re.escape(str(cache))} {re.escape(REFUSED)}$", marker, tmp_path / "out",
          _run(copy, 5))


def test_payload_cached_split_is_refused_by_pool_list(copy, capsys, tmp_path):
    """``pool list`` reads the train split's header (channels and normalisation left to the data)."""
    marker = tmp_path / "ran"
    poison(_cache(copy, "train"), marker)
    fails(capsys, ["pool", "list", "-c", copy], f"cached split .*train.pt {re.escape(REFUSED)}$", marker)


def test_payload_cached_split_is_refused_when_snakemake_parses_the_workflow(tmp_path):
    """``snakemake -n`` counts the classes of a cache without a dataset.json from its train.pt."""
    marker = tmp_path / "ran"
    work = tmp_path / "wd"
    config = write_yaml(tmp_path / "micro.yaml", micro_config())
    cache = work / "data" / "glyphs" / "16px"
    for split in ("train", "val", "test"):
        save_split(cache / f"{split}.pt", synthetic_split(10 if split == "train" else 5, 2, 16, 1))
    poison(cache / "train.pt", marker)
    result = snakemake("-n", "--cores", "1", "--configfile", str(config), "--directory", str(work))
    assert result.returncode != 0
    assert "holds a pickled object that is not plain data (global io.open): refusing to load it" in output_of(result)
    assert not marker.exists()


def test_every_format_purer_writes_loads_as_plain_data(setup, tmp_path):
    """Teacher checkpoints and resume files, checkpoint.pt, meta_model.pt, last.pt, snapshots, splits."""
    config = load_config(setup)
    assert main(["pool", "train", "-c", str(setup), "--teacher", "0", "--out", str(tmp_path / "pool"),
                 "--set", "pool.epochs=2"]) == 0
    files = sorted(tmp_path.rglob("*.pt")) + sorted(paths.experiment_dir(config).rglob("*.pt"))
    files += [paths.dataset_cache(config, "toy", split) for split in paths.SPLITS]
    names = {f.name for f in files}
    assert {"teacher_00.pt", "checkpoint.pt", "meta_model.pt", "last.pt", "train.pt"} <= names
    for path in files:
        torch.load(path, map_location="cpu", weights_only=True)  # raises on anything but plain data
    assert main(_train(setup, "--out", str(tmp_path / "snap"), "--set", "meta_train.snapshots=true")) == 0
    for path in sorted((tmp_path / "snap").rglob("*.pt")):
        torch.load(path, map_location="cpu", weights_only=True)


def test_resume_files_of_a_killed_teacher_load_as_plain_data(setup, tmp_path, monkeypatch):
    """A teacher resume file (optimiser, LR scheduler, generator, history) is plain data too."""
    import purer.models.pretrain as pretrain

    kept = {}

    def finish(config, spec, split, state, out_path):  # stop before the resume file is removed
        kept["resume"] = load_torch(resume_path(out_path), "teacher resume file")
        return {}

    monkeypatch.setattr(pretrain, "_finish", finish)
    assert main(["pool", "train", "-c", str(setup), "--teacher", "0", "--out", str(tmp_path / "pool"),
                 "--set", "pool.epochs=3"]) == 0
    assert kept["resume"]["epoch"] == 2  # saved after epoch 2 of 3 (checkpoint_interval 1)
    assert set(kept["resume"]["scheduler"]["milestones"]) == set(load_config(setup).pool.milestones)


def test_plain_data_converts_numpy_and_paths_and_rejects_objects():
    np = pytest.importorskip("numpy")
    converted = plain_data({"a": np.float64(0.5), "b": [Path("x/y")], "c": (np.int64(3),), "t": np.zeros(2)})
    assert converted["a"] == 0.5 and type(converted["a"]) is float
    assert converted["b"] == ["x/y"] and converted["c"] == (3,) and type(converted["c"][0]) is int
    assert torch.equal(converted["t"], torch.zeros(2, dtype=torch.float64))
    with pytest.raises(TypeError, match="Payload is not plain data"):
        plain_data({"x": Payload(Path("never"))})


# --------------------------------------------------------------------------------------------
# 2. One writer per folder; --out never destroys what purer did not write
# --------------------------------------------------------------------------------------------


def _child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), PURER_NO_PROGRESS="1",
                OMP_NUM_THREADS="1")


def _wait_for_pid(lock: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Until ``lock`` holds ``process``'s pid (it holds the lock), then stop it there (SIGSTOP)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock.is_file() and lock.read_text().strip() == str(process.pid):
            process.send_signal(signal.SIGSTOP)
            return
        assert process.poll() is None, "the first writer ended before it was seen holding the lock"
        time.sleep(0.002)
    raise AssertionError(f"{lock} never held pid {process.pid}")


def test_a_second_meta_train_on_the_same_run_is_refused_and_the_run_stays_intact(copy, capsys, tmp_path):
    out = tmp_path / "run"
    argv = _train(copy, "--out", out, "--set", "meta_train.iterations=6", "--set", "meta_train.val_interval=3")
    first = subprocess.Popen([sys.executable, "-m", "purer", *map(str, argv)], env=_child_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_pid(out / LOCK, first)
        fails(capsys, argv, f"meta-train run folder {re.escape(str(out))} is being written by another purer "
              rf"process \(pid {first.pid}, lock file {LOCK}\); wait for it to finish or stop it$")
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["iteration"] for r in curve] == [1, 2, 3, 4, 5, 6]
    assert summary["iterations"] == 6 and summary["switch_events"] == sum(r["switch"] for r in curve)
    assert len((out / "val.jsonl").read_text().splitlines()) == 2
    assert not list(out.rglob(".*.tmp"))


def test_a_second_writer_of_one_teacher_is_refused_but_other_teachers_go_on(copy, capsys, tmp_path):
    pool = _pool(copy)
    argv = ["pool", "train", "-c", str(copy), "--teacher", "0", "--set", "pool.epochs=40", "--out", str(pool)]
    first = subprocess.Popen([sys.executable, "-m", "purer", *argv], env=_child_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_pid(pool / ".teacher_00.lock", first)
        fails(capsys, argv, f"pool folder {re.escape(str(pool))} is being written by another purer process "
              rf"\(pid {first.pid}, lock file .teacher_00.lock\)")
        assert main(["pool", "train", "-c", str(copy), "--teacher", "1"]) == 0  # its own lock
    finally:
        first.send_signal(signal.SIGCONT)
        first.kill()  # 40 epochs are not needed: the lock was shown
        first.wait(timeout=60)


def test_the_lock_of_a_killed_process_does_not_block_a_rerun(copy, capsys, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from purer.outputs import claim_output\n"
         "with claim_output(sys.argv[1], 'run folder'):\n    print('locked', flush=True); time.sleep(600)", str(out)],
        env=_child_env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    fails(capsys, _train(copy, "--out", out), rf"is being written by another purer process \(pid {holder.pid},")
    holder.kill()
    holder.wait(timeout=60)
    assert (out / LOCK).read_text().strip() == str(holder.pid)  # the stale lock file is still there
    assert main(_train(copy, "--out", str(out))) == 0
    assert (out / "summary.json").is_file()


def test_a_file_system_without_flock_runs_unlocked_with_a_warning(tmp_path, monkeypatch, caplog):
    import fcntl

    from purer.outputs import claim_output

    monkeypatch.setattr(fcntl, "flock", _raise(errno.ENOLCK))
    with claim_output(tmp_path / "run", "run folder"):
        pass
    assert "file locks are not supported here (No locks available); writing" in caplog.text
    assert (tmp_path / "run" / MARKER).is_file()
    monkeypatch.setattr(fcntl, "flock", _raise(errno.EIO))  # any other failure is an error
    with pytest.raises(OutputError, match=f"cannot write {re.escape(str(tmp_path / 'run' / LOCK))}: Input/output error"):
        with claim_output(tmp_path / "run", "run folder"):
            pass


def _foreign(folder: Path) -> dict[str, bytes]:
    """A user's folder with names purer also writes (and a temporary-looking file)."""
    (folder / "grids").mkdir(parents=True)
    (folder / "summary.json").write_text('{"mine": 1}\n')
    (folder / "val.jsonl").write_text('{"mine": 2}\n')
    (folder / ".draft.tmp").write_text("mine")
    (folder / "metrics.json").write_text("{}")
    (folder / "grids" / "grid_iter00001.png").write_bytes(b"not a png")
    return snapshot(folder)


FOREIGN = r"is a non-empty folder that purer did not write \(no \.purer-output\): refusing to write into it; give an empty or new folder$"


def test_meta_train_refuses_a_foreign_out_folder(setup, capsys, tmp_path):
    before = _foreign(tmp_path / "mine")
    fails(capsys, _train(setup, "--out", tmp_path / "mine"), f"meta-train run folder {re.escape(str(tmp_path / 'mine'))} {FOREIGN}")
    assert snapshot(tmp_path / "mine") == before


def test_meta_test_refuses_a_foreign_out_folder(setup, capsys, tmp_path):
    before = _foreign(tmp_path / "mine" / "toy" / "plain")
    fails(capsys, _test(setup, tmp_path / "mine"), f"meta-test output folder .*mine/toy/plain {FOREIGN}")
    assert snapshot(tmp_path / "mine" / "toy" / "plain") == before


def test_pool_train_refuses_a_foreign_out_folder(setup, capsys, tmp_path):
    before = _foreign(tmp_path / "mine")
    fails(capsys, ["pool", "train", "-c", setup, "--teacher", "0", "--out", tmp_path / "mine"], f"pool folder .*mine {FOREIGN}")
    assert snapshot(tmp_path / "mine") == before


def _fresh_run(config_file: Path) -> Path:
    """The copy's seed-0 run, rerun so that its fingerprint holds the copy's teacher paths."""
    assert main(_train(config_file, "--restart", seed=0)) == 0
    return _run(config_file)


def test_a_run_folder_written_before_the_marker_existed_is_still_ours(copy, capsys):
    run = _fresh_run(copy)
    capsys.readouterr()
    (run / MARKER).unlink()
    (run / LOCK).unlink()
    assert main(_train(copy, seed=0)) == 0  # recognised by its env.json: "already complete"
    assert "is already complete; nothing to do" in capsys.readouterr().err


def test_a_failing_step_writes_nothing_into_a_new_folder(copy, capsys, tmp_path):
    """Inputs are validated before the output folder, its marker, lock, env.json or config exist."""
    _cache(copy, "train").write_bytes(b"not a torch file")
    fails(capsys, ["pool", "train", "-c", copy, "--teacher", "0", "--out", tmp_path / "pool"],
          "cached split .* is truncated or not a torch file", tmp_path / "pool")
    (_run(copy) / "meta_model.pt").write_bytes(b"junk")
    fails(capsys, _test(copy, tmp_path / "test"), "meta model .* is truncated or not a torch file", tmp_path / "test")


# --------------------------------------------------------------------------------------------
# 5. Operating-system and data faults
# --------------------------------------------------------------------------------------------


def _raise(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


def test_a_read_only_output_folder(setup, capsys, tmp_path, monkeypatch):
    """EROFS when the run folder is created: the folder is named, before any work."""
    out = tmp_path / "ro" / "run"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == out:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    fails(capsys, _train(setup, "--out", out), f"cannot write {re.escape(str(out))}: Read-only file system$", out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_for_real(setup, capsys, tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        fails(capsys, _train(setup, "--out", tmp_path / "ro" / "run"), "cannot write .*ro/run: Permission denied$")
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_a_full_disk_before_the_work_starts(setup, capsys, tmp_path, monkeypatch):
    """ENOSPC on the first write (the folder's marker): meta-test stops before evaluating anything."""
    import purer.meta.meta_test as evaluate

    called = []
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **k: called.append(1))
    monkeypatch.setattr("purer.io.tempfile.mkstemp", _raise(errno.ENOSPC))
    out = tmp_path / "out"
    fails(capsys, _test(setup, out), f"cannot write {re.escape(str(out / 'toy' / 'plain' / MARKER))}: "
          "No space left on device$")
    assert not called


def test_a_full_disk_during_meta_training(setup, capsys, tmp_path, monkeypatch):
    """ENOSPC in the middle of writing a torch file: one line naming it, no temporary left."""
    monkeypatch.setattr("purer.io.torch.save", _raise(errno.ENOSPC))
    out = tmp_path / "run"
    fails(capsys, _train(setup, "--out", out), rf"cannot write {re.escape(str(out))}/\S+\.pt: No space left on device$")
    assert not list(out.rglob("*.tmp"))


def test_an_output_path_that_is_a_file(setup, capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("mine")
    fails(capsys, _train(setup, "--out", target),
          f"meta-train run folder {re.escape(str(target))}: {re.escape(str(target))} is an existing file, not a folder$")
    fails(capsys, _test(setup, target), f"meta-test output folder {re.escape(str(target / 'toy' / 'plain'))}: "
          f"{re.escape(str(target))} is an existing file, not a folder$")
    fails(capsys, ["pool", "train", "-c", setup, "--teacher", "0", "--out", target], "is an existing file, not a folder")
    assert target.read_text() == "mine"


def test_a_config_that_is_not_utf8(setup, capsys, tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("experiment: caf\u00e9\n".encode("latin-1"))
    fails(capsys, ["meta-train", "-c", config, "--method", "purer", "--n-shot", "1"],
          f"config file {re.escape(str(config))} is not UTF-8 text \\(byte 15: invalid continuation byte\\); "
          "save it as UTF-8$")


def test_a_meta_train_checkpoint_of_the_wrong_type(copy, capsys):
    run = _run(copy)
    (run / "summary.json").unlink()
    torch.save([1, 2, 3], run / "checkpoint.pt")
    fails(capsys, _train(copy, seed=0), f"{re.escape(str(run / 'checkpoint.pt'))} is not a meta-training checkpoint")
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.pt").mkdir()
    fails(capsys, _train(copy, seed=0), f"meta-training checkpoint {re.escape(str(run / 'checkpoint.pt'))} is a "
          "folder, expected a torch file$")


def test_a_meta_train_checkpoint_with_entries_of_the_wrong_type(copy, capsys):
    run = _fresh_run(copy)
    (run / "summary.json").unlink()
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    saved["switch"] = "on"
    torch.save(saved, run / "checkpoint.pt")
    fails(capsys, _train(copy, seed=0), f"{re.escape(str(run / 'checkpoint.pt'))} does not hold a complete "
          r"meta-training state \(TypeError: .*\); delete it to start the run from scratch$")


def test_a_teacher_resume_file_of_the_wrong_type(copy, capsys):
    resume = resume_path(_pool(copy) / "teacher_00.pt")
    torch.save(torch.zeros(3), resume)
    fails(capsys, ["pool", "train", "-c", copy, "--teacher", "0"],
          f"teacher resume file {re.escape(str(resume))} is not a purer teacher resume file \\(expected a dict "
          r"with \[.*\], got Tensor\); delete it to train the teacher from scratch$")


def test_a_truncated_summary_of_a_finished_run(copy, capsys, tmp_path):
    summary = _fresh_run(copy) / "summary.json"
    summary.write_text(summary.read_text()[:40])
    fails(capsys, _test(copy, tmp_path / "out"),
          f"meta-training summary {re.escape(str(summary))} is truncated or not valid JSON \\(", tmp_path / "out")
    assert main(_train(copy, seed=0)) == 0  # meta-train rebuilds it from the last checkpoint
    assert "resuming" in capsys.readouterr().err
    assert json.loads(summary.read_text())["iterations"] == 2


def test_an_output_file_that_is_a_folder(copy, capsys):
    """A folder where purer writes a file: the operating system's reason, naming the path."""
    run = _fresh_run(copy)
    (run / "last.pt").unlink()
    (run / "last.pt").mkdir()
    for name in ("checkpoint.pt", "summary.json"):  # start over: the old outputs are cleared first
        (run / name).unlink()
    fails(capsys, _train(copy, "--restart", seed=0), f"{re.escape(str(run / 'last.pt'))}: Is a directory$")
