"""Wall time of a whole pipeline run from a fresh clone, per rule, with its report table beside the committed one.

    python benchmarks/time_pipeline.py --config config/experiments/bench.yaml --cores 2
    python benchmarks/time_pipeline.py --config config/experiments/bench.yaml --cold-cache --keep
    python benchmarks/time_pipeline.py --config config/experiments/bench.yaml --analyse ../purer-timing-bench-<stamp>

What it does, in order:

1. **Clone.** ``git clone --quiet <repo> <dir>``: the repository's committed HEAD, what a user gets
   (uncommitted changes are not in it; the script says so). ``<dir>`` is a *sibling* of the repository,
   ``<repo>/../purer-timing-<config name>-<UTC stamp>``, so that the configs' relative paths such as
   ``../shared/data/...`` (relative to the working folder) resolve from the clone exactly as from the
   repository. ``--workdir DIR`` clones into ``DIR`` instead (then ``DIR/../shared`` must hold the data the
   config reads). An existing target is refused. A ``--config`` outside the repository, or one that differs
   from HEAD's, is copied into the clone (``.time_pipeline/<name>``); its relative paths still resolve
   against the clone's folder.
2. **Run.** Nothing is reinstalled: the current interpreter's Snakemake (``sys.executable -m snakemake
   --cores N --configfile CONFIG``) runs in the clone, with the current virtual environment's ``bin`` first on
   ``PATH`` (the jobs' ``purer`` command) and the clone first on ``PYTHONPATH``. An editable install of
   another checkout does not shadow it: setuptools' editable finder is appended to ``sys.meta_path``, after
   the ``sys.path`` entries that ``PYTHONPATH`` puts first. Before the run, the interpreter of the ``purer``
   command imports ``purer`` in that environment and the script refuses to go on unless it comes from the
   clone. The compile cache is the machine's, as a user has it (:func:`purer.runtime.compile_cache_dir`,
   ``~/.cache/purer/torchinductor/<torch>-<CPU hash>`` unless ``$TORCHINDUCTOR_CACHE_DIR`` is set); whether
   it held anything before is printed and written, since a warm cache skips compilations. ``--cold-cache``
   points ``$TORCHINDUCTOR_CACHE_DIR`` (which purer honours) at an empty temporary folder instead.
3. **Per-rule times.** From Snakemake's own log of the run (``.snakemake/log/*.snakemake.log``): each job
   starts at the ``[date]`` line before its ``rule NAME:``/``localrule NAME:`` header and ends at the one
   before ``Finished jobid: N`` (one-second resolution). Per rule: jobs, summed job seconds, first start,
   last end, wall span (last end - first start) and its share of the command's wall time. Spans of rules
   overlap when jobs run side by side, so the shares do not add up to 100%.
4. **Tables.** ``<results_dir>/<experiment>/report/tables/main.csv`` of the clone against the same file in
   the repository's HEAD: per row (keyed by dataset, method, variant, ICFIL, n-way, n-shot, ...), the committed
   mean +- ci95, the new one, the difference, and whether the difference lies within the *larger* of the two
   95% CIs (neither run is privileged: a difference inside either run's own interval is not a detectable
   change). Rows only in one table are listed. The clone starts with the committed copy, so a table the
   run did not rewrite (a failed run) is not compared.
5. **Clean up.** The clone (and a ``--cold-cache`` folder) is removed at the end, also on failure, unless
   ``--keep`` is given or the clone went into a ``--workdir``.

``--analyse CLONE`` runs nothing: it makes the tables of steps 3 and 4 for a run already made in ``CLONE``
(a kept clone; a run whose measuring process was stopped while Snakemake went on, e.g. to outlive a
``--timeout``; a run finished by hand). The total is then the span of Snakemake's log, from the first
job's start to its last event; the report table is compared only if the log shows the ``report`` job
finished (the clone starts with the committed copy).

Prints Markdown tables and writes ``benchmarks/results/pipeline_<experiment>_<device>.csv`` (one row per
rule and a ``(total)`` row) and, when there is a committed table, ``..._tables.csv`` beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import filecmp
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from results_csv import speed_flags, write_csv

from purer.runtime import compile_cache_dir, cpu_model

REPO = Path(__file__).resolve().parents[1]
RULE_FIELDS = [
    "experiment", "rule", "jobs", "job_seconds", "first_start", "last_end", "wall_span_s", "share_of_wall",
    "total_wall_s", "cores", "cache", "cold_cache", "cache_existed", "commit", "load_before", "load_after",
    "cpu_model", "cpu_flags", "cpus", "torch",
]  # fmt: skip
TABLE_FIELDS = ["key", "status", "committed_mean", "committed_ci95", "new_mean", "new_ci95", "difference",
                "within"]
# the columns that name a row of main.csv (those present in both tables are used)
KEY_COLUMNS = ("dataset", "scenario", "pool", "method", "variant", "icfil", "n_way", "n_shot", "learner",
               "teacher_weighting", "selection")
TOTAL = "(total)"


class TimingError(Exception):
    """A problem that stops the measurement, reported as one line."""


# --------------------------------------------------------------------------------------------
# Snakemake's log
# --------------------------------------------------------------------------------------------

DATE_LINE = re.compile(r"^\[(\w{3} \w{3} +\d{1,2} \d{2}:\d{2}:\d{2} \d{4})\]$")
RULE_LINE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\S+):$")
JOBID_LINE = re.compile(r"^\s+jobid: (\d+)$")
FINISHED_LINE = re.compile(r"^Finished jobid: (\d+)")
ERROR_LINE = re.compile(r"^Error in rule (\S+):$")


@dataclass(frozen=True)
class JobTiming:
    """One job of the run: its rule and when it started and ended (``end`` None: never finished)."""

    jobid: int
    rule: str
    start: dt.datetime
    end: dt.datetime | None
    failed: bool = False

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else (self.end - self.start).total_seconds()


def parse_snakemake_log(text: str) -> list[JobTiming]:
    """The jobs of a Snakemake 9 log, in the order they started.

    A job starts at the ``[date]`` line that precedes its ``rule NAME:`` (or ``localrule``, ``checkpoint``)
    header, whose ``jobid: N`` line names it, and ends at the ``[date]`` before ``Finished jobid: N`` (or
    before an ``Error in rule NAME:`` block naming it: ``failed``). Other lines (``Select jobs to
    execute...``, progress) may sit between a date and its event.
    """
    now: dt.datetime | None = None
    pending_rule: str | None = None  # a header seen, its jobid line not yet
    in_error = False
    starts: dict[int, tuple[str, dt.datetime]] = {}
    ends: dict[int, tuple[dt.datetime, bool]] = {}
    for line in text.splitlines():
        line = line.rstrip()
        if match := DATE_LINE.match(line):
            now = dt.datetime.strptime(" ".join(match.group(1).split()), "%a %b %d %H:%M:%S %Y")
            pending_rule, in_error = None, False
        elif match := RULE_LINE.match(line):
            pending_rule, in_error = match.group(1), False
        elif match := ERROR_LINE.match(line):
            pending_rule, in_error = None, True
        elif (match := JOBID_LINE.match(line)) and now is not None:
            jobid = int(match.group(1))
            if pending_rule is not None:
                starts.setdefault(jobid, (pending_rule, now))
                pending_rule = None
            elif in_error and jobid in starts:
                ends.setdefault(jobid, (now, True))
        elif (match := FINISHED_LINE.match(line)) and now is not None:
            ends.setdefault(int(match.group(1)), (now, False))
    jobs = []
    for jobid, (rule, start) in starts.items():
        end, failed = ends.get(jobid, (None, False))
        jobs.append(JobTiming(jobid, rule, start, end, failed))
    return sorted(jobs, key=lambda job: (job.start, job.jobid))


def rule_summary(jobs: list[JobTiming], total_s: float) -> list[dict]:
    """Per rule, in the order rules first started: jobs, summed job seconds (finished jobs), first start,
    last end, wall span (last end - first start) and the span's share of ``total_s``."""
    rows: dict[str, dict] = {}
    for job in jobs:
        row = rows.setdefault(job.rule, {"rule": job.rule, "jobs": 0, "job_seconds": 0.0, "first_start": job.start,
                                         "last_end": None, "unfinished": 0})
        row["jobs"] += 1
        if job.end is None or job.failed:
            row["unfinished"] += 1
        if job.end is not None:
            row["job_seconds"] += job.seconds
            row["last_end"] = job.end if row["last_end"] is None else max(row["last_end"], job.end)
    for row in rows.values():
        span = None if row["last_end"] is None else (row["last_end"] - row["first_start"]).total_seconds()
        row["wall_span_s"] = span
        row["share_of_wall"] = None if span is None or total_s <= 0 else span / total_s
    return list(rows.values())


def latest_log(clone: Path) -> Path:
    logs = sorted((clone / ".snakemake" / "log").glob("*.snakemake.log"))
    if not logs:
        raise TimingError(f"no Snakemake log in {clone / '.snakemake' / 'log'}")
    return logs[-1]


# --------------------------------------------------------------------------------------------
# Report tables
# --------------------------------------------------------------------------------------------


def read_table(source: str | Path) -> pd.DataFrame:
    """main.csv with every column as text (keys compare as written); ``source`` a path or CSV text."""
    handle = io.StringIO(source) if isinstance(source, str) else source
    return pd.read_csv(handle, dtype=str, keep_default_na=False)


def _keyed(table: pd.DataFrame, keys: list[str]) -> dict[str, pd.Series]:
    """Rows by ``key=value, ...`` (a repeated key gets `` #2``, ``#3``...)."""
    out: dict[str, pd.Series] = {}
    for _, row in table.iterrows():
        key = ", ".join(f"{k}={row[k]}" for k in keys)
        name, n = key, 1
        while name in out:
            n += 1
            name = f"{key} #{n}"
        out[name] = row
    return out


def _number(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def compare_tables(committed: pd.DataFrame, new: pd.DataFrame) -> list[dict]:
    """One dict per row key (``TABLE_FIELDS``): ``status`` is ``both``, ``missing`` (committed only) or
    ``extra`` (new only); for ``both``, ``within`` says whether |new - committed| <= the larger ci95."""
    keys = [k for k in KEY_COLUMNS if k in committed.columns and k in new.columns]
    if not keys:
        raise TimingError(f"no common key column ({', '.join(KEY_COLUMNS)}) in the two tables")
    old_rows, new_rows = _keyed(committed, keys), _keyed(new, keys)
    result = []
    for key, old in old_rows.items():
        row = {"key": key, "committed_mean": _number(old.get("mean")), "committed_ci95": _number(old.get("ci95"))}
        if key not in new_rows:
            result.append({**row, "status": "missing", "new_mean": None, "new_ci95": None, "difference": None,
                           "within": None})
            continue
        fresh = new_rows[key]
        new_mean, new_ci = _number(fresh.get("mean")), _number(fresh.get("ci95"))
        difference = new_mean - row["committed_mean"]
        bound = max(row["committed_ci95"], new_ci)  # max ignores nothing: a NaN bound fails the comparison
        within = bool(abs(difference) <= bound)
        result.append({**row, "status": "both", "new_mean": new_mean, "new_ci95": new_ci,
                       "difference": difference, "within": within})
    for key, fresh in new_rows.items():
        if key not in old_rows:
            result.append({"key": key, "status": "extra", "committed_mean": None, "committed_ci95": None,
                           "new_mean": _number(fresh.get("mean")), "new_ci95": _number(fresh.get("ci95")),
                           "difference": None, "within": None})
    return result


def comparison_markdown(rows: list[dict]) -> str:
    def pm(mean, ci):
        return "" if mean is None else f"{mean:.2f} ± {ci:.2f}"

    # a row is named by the key parts that differ between rows; the parts all rows share are said once
    parts = {r["key"]: r["key"].split(", ") for r in rows}
    common = [part for part in next(iter(parts.values()), []) if all(part in p for p in parts.values())]

    def name(key: str) -> str:
        return ", ".join(part for part in parts[key] if part not in common) or key

    lines = ["| row | committed | new | difference | within larger ci95 |", "|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "both":
            lines.append(f"| {name(r['key'])} | {pm(r['committed_mean'], r['committed_ci95'])} | "
                         f"{pm(r['new_mean'], r['new_ci95'])} | {r['difference']:+.2f} | "
                         f"{'yes' if r['within'] else '**no**'} |")
    both = [r for r in rows if r["status"] == "both"]
    lines.append("")
    if common:
        lines.append(f"Every row: {', '.join(common)}.")
    lines.append(f"{sum(r['within'] for r in both)} of {len(both)} rows within the larger ci95.")
    for status, what in (("missing", "in the committed table only"), ("extra", "in the new table only")):
        names = [name(r["key"]) for r in rows if r["status"] == status]
        lines.append(f"Rows {what}: " + ("; ".join(names) if names else "none") + ".")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def git(*args: str, cwd: Path = REPO) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise TimingError(f"git {' '.join(args)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def run_environment(clone: Path, cache: Path | None) -> dict[str, str]:
    """The user's environment with the venv's bin first on PATH and the clone first on PYTHONPATH."""
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(clone), *filter(None, [env.get("PYTHONPATH")])])
    if cache is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    return env


def check_imports_clone(clone: Path, env: dict[str, str]) -> Path:
    """The ``purer`` package that the jobs' ``purer`` command imports (its interpreter, this environment);
    TimingError unless it lies inside ``clone``."""
    command = shutil.which("purer", path=env["PATH"])
    if command is None:
        raise TimingError(f"no `purer` command on PATH ({Path(sys.executable).parent} first): install purer first")
    interpreter = sys.executable
    with contextlib.suppress(OSError, UnicodeDecodeError):
        first = Path(command).read_text(encoding="utf-8").splitlines()[0]
        if first.startswith("#!") and Path(first[2:].split()[0]).exists():
            interpreter = first[2:].split()[0]
    result = subprocess.run([interpreter, "-c", "import purer; print(purer.__file__)"], cwd=clone, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise TimingError(f"`purer` does not import in the clone: {last}")
    module = Path(result.stdout.strip()).resolve()
    if clone.resolve() not in module.parents:
        raise TimingError(f"the jobs would import purer from {module}, not from the clone {clone}")
    return module


def config_in_clone(config: Path, clone: Path) -> tuple[str, str]:
    """The ``--configfile`` to give in the clone, and how it got there."""
    config = config.resolve()
    try:
        relative = config.relative_to(REPO.resolve())
    except ValueError:
        relative = None
    if relative is not None and (clone / relative).is_file() and filecmp.cmp(config, clone / relative, shallow=False):
        return str(relative), "committed"
    target = clone / ".time_pipeline" / config.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config, target)
    how = "differs from HEAD's: copied" if relative is not None else "outside the repository: copied"
    return str(target.relative_to(clone)), how


def experiment_of(config_path: Path, clone: Path) -> tuple[str, Path, str]:
    """(experiment, the report's main.csv relative to the working folder, device) of the config."""
    from purer import paths
    from purer.config import load_config

    previous = Path.cwd()
    os.chdir(clone)
    try:
        config = load_config(config_path)
    except Exception as exc:  # a bad config: one line
        raise TimingError(f"{config_path}: {exc}") from None
    finally:
        os.chdir(previous)
    import torch

    return config.experiment, paths.report_dir(config) / "tables" / "main.csv", torch.device(config.device).type


def run_snakemake(command: list[str], clone: Path, env: dict[str, str], output: Path,
                  timeout: float | None) -> int | None:
    """Run ``command`` in ``clone`` in its own process group, its output into ``output``; the exit status,
    or None when it ran past ``timeout`` (or was interrupted): then the whole group (Snakemake and its jobs)
    is stopped."""
    with output.open("w", encoding="utf-8") as sink:
        process = subprocess.Popen(command, cwd=clone, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            return process.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=wait)
                    break
            return None


def default_clone_dir(name: str) -> Path:
    """``<repo>/../purer-timing-<name>-<UTC stamp>``: a sibling, so ``../shared`` is the repository's."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return REPO.parent / f"purer-timing-{name}-{stamp}"


def rules_markdown(rows: list[dict], total_s: float) -> str:
    lines = ["| rule | jobs | job-seconds | wall span | share of total |", "|---|---|---|---|---|"]
    for r in rows:
        span = "unfinished" if r["wall_span_s"] is None else f"{r['wall_span_s']:.0f} s"
        share = "" if r["share_of_wall"] is None else f"{100 * r['share_of_wall']:.0f}%"
        note = f" ({r['unfinished']} unfinished)" if r["unfinished"] else ""
        lines.append(f"| {r['rule']} | {r['jobs']}{note} | {r['job_seconds']:.0f} | {span} | {share} |")
    jobs = sum(r["jobs"] for r in rows)
    job_seconds = sum(r["job_seconds"] for r in rows)
    lines.append(f"| **total** | {jobs} | {job_seconds:.0f} | {total_s:.0f} s | 100% |")
    return "\n".join(lines)


def machine_columns() -> dict[str, str]:
    """The CPU model, its speed-relevant flags and torch's version, for every CSV row."""
    import torch

    return {"cpu_model": cpu_model(), "cpu_flags": speed_flags(),
            "cpus": os.cpu_count(), "torch": torch.__version__}


def rule_rows(rules: list[dict], total_s: float, shared: dict) -> list[dict]:
    """The CSV rows: one per rule, then ``(total)`` (all jobs; the span is the command's wall time)."""
    def stamp(value: dt.datetime | None) -> str:
        return value.isoformat() if value is not None else ""

    rows = [{**shared, "rule": r["rule"], "jobs": r["jobs"], "job_seconds": r["job_seconds"],
             "first_start": stamp(r["first_start"]), "last_end": stamp(r["last_end"]),
             "wall_span_s": r["wall_span_s"],
             "share_of_wall": None if r["share_of_wall"] is None else round(r["share_of_wall"], 4)} for r in rules]
    ends = [r["last_end"] for r in rules if r["last_end"] is not None]
    rows.append({**shared, "rule": TOTAL, "jobs": sum(r["jobs"] for r in rules),
                 "job_seconds": sum(r["job_seconds"] for r in rules),
                 "first_start": stamp(rules[0]["first_start"]) if rules else "",
                 "last_end": stamp(max(ends)) if ends else "", "wall_span_s": round(total_s, 1),
                 "share_of_wall": 1.0})
    return rows


def stamp_of(path: Path) -> tuple[int, int] | None:
    """``path``'s inode and modification time in ns (None: absent); a rewrite (atomic: a new file) changes it."""
    with contextlib.suppress(FileNotFoundError):
        stat = path.stat()
        return stat.st_ino, stat.st_mtime_ns
    return None


def compare_with_committed(main_csv: Path, clone: Path, out: Path, before: tuple[int, int] | None) -> None:
    """Print (and write to ``out``) the clone's ``main_csv`` against the same file in the repository's HEAD.

    ``before`` is the clone's file's :func:`stamp_of` before the run: a clone holds the committed copy, so a
    file the run did not rewrite is not compared (it would equal itself)."""
    try:
        committed_text = git("show", f"HEAD:{main_csv.as_posix()}")
    except TimingError:
        print(f"\nno committed {main_csv} in HEAD: no table to compare")
        return
    after = stamp_of(clone / main_csv)
    if after is None or after == before:
        print(f"\nthe run did not write {main_csv} (what is there is the committed copy): no table to compare")
        return
    rows = compare_tables(read_table(committed_text), read_table(clone / main_csv))
    print(f"\n{main_csv}: committed (HEAD) vs this run (mean ± ci95, accuracy %)\n")
    print(comparison_markdown(rows))
    write_csv(out, rows, TABLE_FIELDS)
    print(f"\nCSV: {out}")


def describe_start(commit: str, clone: Path, configfile: str, config_note: str, module: Path, cores: str,
                   cache: Path, cache_existed: bool, cold: bool) -> None:
    machine = machine_columns()
    print(f"commit {commit[:10]}; clone {clone}; config {configfile} ({config_note}); purer from {module.parent}")
    print(f"CPU: {machine['cpu_model']}; flags: {machine['cpu_flags']}; {machine['cpus']} CPUs; "
          f"torch {machine['torch']}; --cores {cores}")
    state = "warm: it held files before the run" if cache_existed else "cold: empty or absent before the run"
    print(f"compile cache: {cache} ({state}{', --cold-cache' if cold else ''})", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True, help="the experiment's YAML (in or outside the repo)")
    parser.add_argument("--cores", default="2", help="snakemake --cores: a number or `all` (default 2)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="clone here (must not exist; kept) instead of a sibling of the repository")
    parser.add_argument("--keep", action="store_true", help="keep the clone")
    parser.add_argument("--cold-cache", action="store_true",
                        help="an empty compile cache ($TORCHINDUCTOR_CACHE_DIR in a temporary folder)")
    parser.add_argument("--out", type=Path, default=None,
                        help="CSV path (default benchmarks/results/pipeline_<experiment>_<device>.csv)")
    parser.add_argument("--timeout", type=float, default=None, help="stop the run after this many seconds")
    parser.add_argument("--analyse", type=Path, default=None, metavar="CLONE",
                        help="run nothing: the tables of the run already made in CLONE (e.g. a kept clone)")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> int:
    if not args.config.is_file():
        raise TimingError(f"--config {args.config}: no such file")
    if args.cores != "all" and not (args.cores.isdigit() and int(args.cores) >= 1):
        raise TimingError(f"--cores {args.cores}: expected a number of 1 or more, or `all`")
    commit = git("rev-parse", "HEAD").strip()
    if git("status", "--porcelain", "--untracked-files=no").strip():
        print(f"note: the working tree has uncommitted changes; the clone runs HEAD ({commit[:10]}) without them",
              file=sys.stderr)
    clone = (args.workdir or default_clone_dir(args.config.stem)).resolve()
    if clone.exists():
        raise TimingError(f"{clone} exists: choose another --workdir or remove it")
    if (REPO.parent / "shared").exists() and not (clone.parent / "shared").exists():
        print(f"note: {clone.parent / 'shared'} does not exist; configs reading ../shared/... will not find "
              "their data", file=sys.stderr)
    keep = args.keep or args.workdir is not None
    cold = Path(tempfile.mkdtemp(prefix="purer-cold-cache-")) if args.cold_cache else None
    try:
        git("clone", "--quiet", str(REPO), str(clone))
        configfile, config_note = config_in_clone(args.config, clone)
        experiment, main_csv, device = experiment_of(Path(configfile), clone)
        env = run_environment(clone, cold)
        module = check_imports_clone(clone, env)
        cache = cold if cold is not None else compile_cache_dir(env)
        cache_existed = cache.is_dir() and any(cache.iterdir())
        describe_start(commit, clone, configfile, config_note, module, args.cores, cache, cache_existed,
                       cold is not None)

        command = [sys.executable, "-m", "snakemake", "--cores", args.cores, "--configfile", configfile]
        run_log = clone / ".time_pipeline" / "snakemake.out"
        run_log.parent.mkdir(parents=True, exist_ok=True)
        print(f"running {' '.join(['snakemake', *command[3:]])}; its output: {run_log}", flush=True)
        table_before = stamp_of(clone / main_csv)
        load_before = os.getloadavg()[0]
        started = time.monotonic()
        returncode = run_snakemake(command, clone, env, run_log, args.timeout)
        total_s = time.monotonic() - started
        load_after = os.getloadavg()[0]
        if returncode != 0:
            tail = run_log.read_text(encoding="utf-8", errors="replace").splitlines()[-30:]
            print("\n".join(tail), file=sys.stderr)
            print(f"the run {'timed out' if returncode is None else f'failed (exit {returncode})'} after "
                  f"{total_s:.0f} s; the times below cover what ran", file=sys.stderr)

        jobs = parse_snakemake_log(latest_log(clone).read_text(encoding="utf-8", errors="replace"))
        shared = {"experiment": experiment, "total_wall_s": round(total_s, 1), "cores": args.cores,
                  "cache": str(cache), "cold_cache": cold is not None, "cache_existed": cache_existed,
                  "commit": commit, "load_before": round(load_before, 2), "load_after": round(load_after, 2),
                  **machine_columns()}
        heading = (f"{experiment}: {total_s:.0f} s wall for `{' '.join(['snakemake', *command[3:]])}` "
                   f"(load {load_before:.1f}/{load_after:.1f})")
        report_run(jobs, total_s, shared, heading, args.out, device, main_csv, clone, table_before)
        return 0 if returncode == 0 else 1
    finally:
        if cold is not None and not args.keep:
            shutil.rmtree(cold, ignore_errors=True)
        elif cold is not None:
            print(f"compile cache kept: {cold}", file=sys.stderr)
        if keep:
            if clone.exists():
                print(f"clone kept: {clone}", file=sys.stderr)
        else:
            shutil.rmtree(clone, ignore_errors=True)


def report_run(jobs: list[JobTiming], total_s: float, shared: dict, heading: str, out: Path | None, device: str,
               main_csv: Path, clone: Path, table_before: tuple[int, int] | None) -> None:
    """Print the per-rule table, write its CSV and compare the clone's report table with the committed one."""
    rules = rule_summary(jobs, total_s)
    print(f"\n{heading}\n")
    print(rules_markdown(rules, total_s))
    out = out or REPO / "benchmarks" / "results" / f"pipeline_{shared['experiment']}_{device}.csv"
    write_csv(out, rule_rows(rules, total_s, shared), RULE_FIELDS)
    print(f"\nCSV: {out}")
    compare_with_committed(main_csv, clone, out.with_name(out.stem + "_tables.csv"), table_before)


def log_span(text: str) -> float:
    """Seconds from the first ``[date]`` line of a Snakemake log to its last (0 with fewer than two)."""
    stamps = [dt.datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
              for line in text.splitlines() if (m := DATE_LINE.match(line.rstrip()))]
    return (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else 0.0


def analyse(args: argparse.Namespace) -> int:
    """``--analyse CLONE``: the tables of a run already made in ``CLONE`` (a kept clone whose measuring
    process was stopped, or a run finished by hand), from its Snakemake log. The total is the log's span,
    first job start to last event: Snakemake's start-up before its first job is left out. Nothing runs."""
    clone = args.analyse.resolve()
    if not (clone / ".git").exists():
        raise TimingError(f"--analyse {clone}: not a clone (no .git)")
    if not args.config.is_file():
        raise TimingError(f"--config {args.config}: no such file")
    log = latest_log(clone)
    text = log.read_text(encoding="utf-8", errors="replace")
    jobs = parse_snakemake_log(text)
    total_s = log_span(text)
    configfile, _ = config_in_clone(args.config, clone)
    experiment, main_csv, device = experiment_of(Path(configfile), clone)
    commit = git("rev-parse", "HEAD", cwd=clone).strip()
    reported = any(job.rule == "report" and job.end is not None and not job.failed for job in jobs)
    shared = {"experiment": experiment, "total_wall_s": round(total_s, 1), "cores": args.cores, "cache": "",
              "cold_cache": "", "cache_existed": "", "commit": commit, "load_before": "", "load_after": "",
              **machine_columns()}
    unfinished = sum(1 for job in jobs if job.end is None or job.failed)
    heading = (f"{experiment}: {total_s:.0f} s from the first job's start to the last event of {log.name} "
               f"in {clone} (commit {commit[:10]}; {len(jobs)} jobs, {unfinished} unfinished or failed)")
    # the clone started with the committed table: compare only if its report job finished
    before = None if reported else stamp_of(clone / main_csv)
    report_run(jobs, total_s, shared, heading, args.out, device, main_csv, clone, before)
    return 0 if unfinished == 0 else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return analyse(args) if args.analyse is not None else measure(args)
    except TimingError as exc:
        print(f"time_pipeline: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
