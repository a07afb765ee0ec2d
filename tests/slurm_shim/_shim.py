"""A fake SLURM for tests: records every command line and runs batch jobs locally.

Each command (sbatch, sacct, squeue, sinfo, scontrol, srun, scancel, sacctmgr, sshare) is a small
script next to this file that calls ``main(<name>)``. State lives in the folder named by
``FAKE_SLURM_STATE`` (no ``SLURM_`` prefix: the jobstep executor drops such variables):
``calls.jsonl`` (one ``{"cmd", "argv"}`` line per call) and ``jobs/<id>.{name,rc}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ACCOUNT = "my_account"
PARTITIONS = ("cpu", "gpu")
# srun options that take a separate value (everything else starting with "-" stands alone)
SRUN_VALUE_OPTIONS = {"-n", "-N", "-c", "-J", "-p", "-A", "-t", "--jobid", "--ntasks", "--nodes", "--job-name"}


def state_dir() -> Path:
    folder = Path(os.environ["FAKE_SLURM_STATE"])
    (folder / "jobs").mkdir(parents=True, exist_ok=True)
    return folder


def record(cmd: str, argv: list[str]) -> None:
    with open(state_dir() / "calls.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"cmd": cmd, "argv": argv}) + "\n")


def option(argv: list[str], *names: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` (last occurrence)."""
    value = None
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(name + "="):
                value = arg[len(name) + 1 :]
    return value


def next_job_id(jobs: Path) -> str:
    return str(1000 + len(list(jobs.glob("*.name"))))


def sbatch(argv: list[str]) -> int:
    jobs = state_dir() / "jobs"
    job_id = next_job_id(jobs)
    (jobs / f"{job_id}.name").write_text(option(argv, "--job-name", "-J") or "", encoding="utf-8")
    script = option(argv, "--wrap")
    if script is None:
        script = sys.stdin.read()
    log = option(argv, "--output", "-o")
    log_path = Path(log.replace("%j", job_id)) if log else jobs / f"{job_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SLURM_JOB_ID=job_id)
    runner = 'sh -c "$0" > "$1" 2>&1; echo $? > "$2"'
    subprocess.Popen(
        ["sh", "-c", runner, script, str(log_path), str(jobs / f"{job_id}.rc")],
        cwd=option(argv, "-D", "--chdir") or None,
        env=env,
        start_new_session=True,
    )
    print(job_id)
    return 0


def job_states(name: str | None) -> list[str]:
    jobs = state_dir() / "jobs"
    lines = []
    for name_file in sorted(jobs.glob("*.name")):
        if name is not None and name_file.read_text(encoding="utf-8") != name:
            continue
        rc_file = name_file.with_suffix(".rc")
        rc = rc_file.read_text(encoding="utf-8").strip() if rc_file.exists() else ""
        state = "RUNNING" if rc == "" else ("COMPLETED" if rc == "0" else "FAILED")
        lines.append(f"{name_file.stem}|{state}")
    return lines


def srun(argv: list[str]) -> int:
    rest, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not rest and arg.startswith("-"):
            i += 2 if arg in SRUN_VALUE_OPTIONS else 1
            continue
        rest = argv[i:]
        break
    if not rest:
        return subprocess.run(["sh"], stdin=sys.stdin).returncode
    os.execvp(rest[0], rest)
    return 127


def main(cmd: str) -> int:
    argv = sys.argv[1:]
    record(cmd, argv)
    if cmd == "sbatch":
        return sbatch(argv)
    if cmd in ("sacct", "squeue"):
        if "-o" in argv and "Account%256" in argv:  # account lookup
            print(ACCOUNT)
            return 0
        print("\n".join(job_states(option(argv, "--name"))))
        return 0
    if cmd == "srun":
        return srun(argv)
    if cmd == "sinfo":
        # `sinfo -o %P`: the cluster's default partition is marked with "*"
        print("PARTITION\n" + "\n".join([PARTITIONS[0] + "*", *PARTITIONS[1:]]))
        return 0
    if cmd == "scontrol":
        print("MinJobAge               = 300 sec")
        return 0
    if cmd in ("sacctmgr", "sshare"):
        print(ACCOUNT)
        return 0
    return 0  # scancel and anything else: accept
