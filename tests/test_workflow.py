"""The Snakemake workflow: lint, the DAG of the default config, resources, configs and a tiny run."""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest
from workflow_support import REPO, micro_config, output_of, snakemake, write_yaml

from purer import paths
from purer.config import load_config
from purer.models.pool import n_teachers
from purer.pipeline import SHARED_MODULES
from purer.variants import control_names

STEP_CLI = {
    "prepare_glyphs": "purer/cli/prepare.py",
    "pool_train": "purer/cli/pool.py",
    "pool_manifest": "purer/cli/pool.py",
    "meta_train": "purer/cli/meta_train.py",
    "meta_test": "purer/cli/meta_test.py",
    "meta_test_icfil": "purer/cli/meta_test.py",
    "meta_test_control": "purer/cli/meta_test.py",
    "report": "purer/cli/report.py",
}
# shared infrastructure that every step imports (and package __init__ files): not rule inputs
INFRA = set(SHARED_MODULES)  # purer/pipeline.py
# dataset sources reach later steps only through the cached splits (which are inputs)
DATA_SOURCES = {"data/__init__.py", "data/registry.py", "data/glyphs.py", "data/mini_imagenet.py",
                "data/cifar_fs.py", "data/folder.py", "data/images.py"}


# --------------------------------------------------------------------------------------------
# Parsing Snakemake's dry-run output
# --------------------------------------------------------------------------------------------


def dry_run_jobs(text: str) -> list[dict[str, str]]:
    """One dict per job block of ``snakemake -n`` output: ``rule`` plus its ``key: value`` lines."""
    jobs, current = [], None
    for line in text.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        if match and not line.startswith(" "):
            current = {"rule": match.group(1)}
            jobs.append(current)
        elif current is not None and line.startswith("    ") and ": " in line:
            key, _, value = line.strip().partition(": ")
            current[key] = value
        elif not line.strip():
            current = None
    return jobs


def resources(job: dict[str, str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in job.get("resources", "").split(", ") if "=" in item)


@pytest.fixture(scope="module")
def default_dry_run() -> list[dict[str, str]]:
    """Dry run of the whole default DAG with the SLURM profile (no job is submitted).

    ``--ignore-incomplete``: a pipeline running in the checkout at the same time must not matter.
    """
    result = snakemake("-n", "--forceall", "--ignore-incomplete", "--cores", "all",
                       "--profile", str(REPO / "profiles" / "slurm"))
    assert result.returncode == 0, output_of(result)
    return dry_run_jobs(output_of(result))


# --------------------------------------------------------------------------------------------
# Static checks
# --------------------------------------------------------------------------------------------


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, output_of(result)
    assert "Congratulations" in output_of(result)


def test_default_dag_expands_the_grid(default_dry_run):
    config = load_config(REPO / "config" / "config.yaml")
    runs = (len(config.grid.methods) + len(config.grid.arms)) * len(config.grid.shots) * len(config.grid.seeds)
    icfil_runs = len(config.grid.icfil_methods) * len(config.grid.shots) * len(config.grid.seeds)
    controls = len(control_names(config))
    counts: dict[str, int] = {}
    for job in default_dry_run:
        counts[job["rule"]] = counts.get(job["rule"], 0) + 1
    assert counts == {
        "prepare_glyphs": 1,
        "pool_train": n_teachers(config),
        "pool_manifest": 1,
        "meta_train": runs,
        "meta_test": runs * len(config.test_datasets),
        "meta_test_icfil": icfil_runs * len(config.test_datasets),
        "meta_test_control": icfil_runs * controls * len(config.test_datasets),
        "report": 1,
        "all": 1,
    }
    assert n_teachers(config) == 4


def test_slurm_profile_gives_no_gpu_to_a_cpu_config(default_dry_run):
    """config/config.yaml computes on the CPU: no job asks for a GPU; site settings are not tracked."""
    assert load_config(REPO / "config" / "config.yaml").device == "cpu"
    for job in default_dry_run:
        if job["rule"] == "all":
            continue
        res = resources(job)
        assert res.get("gpu", "0") == "0", job
        assert "slurm_account" not in res and "slurm_partition" not in res, job
        assert "runtime" in res and "mem_mb" in res, job


def test_outputs_are_the_paths_of_purer_paths(default_dry_run):
    config = load_config(REPO / "config" / "config.yaml")
    outputs = {out for job in default_dry_run for out in job.get("output", "").split(", ") if out}
    expected = {str(paths.manifest_path(config))}
    expected |= {str(paths.teacher_path(config, i)) for i in range(n_teachers(config))}
    expected |= {str(paths.dataset_cache(config, "glyphs", split)) for split in paths.SPLITS}
    for method in config.grid.methods:
        for n_shot in config.grid.shots:
            run = paths.run_dir(config, method, n_shot, 0)
            expected |= {str(run / "meta_model.pt"), str(paths.test_dir(run, "glyphs", False) / "metrics.json")}
            if method in config.grid.icfil_methods:
                expected.add(str(paths.test_dir(run, "glyphs", True) / "metrics.json"))
                expected |= {str(paths.test_dir(run, "glyphs", c) / "metrics.json") for c in control_names(config)}
    expected.add(str(paths.report_dir(config) / "summary.json"))
    assert expected <= outputs, sorted(expected - outputs)


def _imports(path: Path) -> set[Path]:
    """The ``purer`` modules imported by one source file (absolute and relative imports)."""
    package = path.relative_to(REPO).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] != "purer":
                continue
            candidate = REPO.joinpath(*name.split("."))
            for file in (candidate.with_suffix(".py"), candidate / "__init__.py"):
                if file.is_file():
                    found.add(file)
    return found


def _closure(path: Path) -> set[str]:
    seen, todo = set(), [path]
    while todo:
        file = todo.pop()
        if file not in seen:
            seen.add(file)
            todo.extend(_imports(file))
    return {str(file.relative_to(REPO / "purer")) for file in seen}


@pytest.mark.parametrize("rule", sorted(STEP_CLI))
def test_rules_list_the_modules_their_step_runs(default_dry_run, rule):
    """A code change reruns a rule only if the module is an input: check against the import graph."""
    job = next(job for job in default_dry_run if job["rule"] == rule)
    inputs = {str(Path(p).relative_to(REPO / "purer")) for p in job["input"].split(", ") if p.startswith(str(REPO))}
    needed = {m for m in _closure(REPO / STEP_CLI[rule]) - INFRA if not m.endswith("__init__.py")}
    if rule == "prepare_glyphs":
        needed -= DATA_SOURCES - {"data/registry.py", "data/glyphs.py"}
    else:
        needed -= DATA_SOURCES
    assert needed <= inputs, f"{rule} does not list {sorted(needed - inputs)}"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "config" / "experiments").glob("*.yaml")))
def test_every_experiment_builds_its_dag(name):
    """Paper-scale configs build their DAG without the raw data (it is needed only to run)."""
    path = REPO / "config" / "experiments" / f"{name}.yaml"
    config = load_config(path)
    result = snakemake("-n", "--forceall", "--ignore-incomplete", "--cores", "all", "--configfile", str(path))
    assert result.returncode == 0, output_of(result)
    rules = [job["rule"] for job in dry_run_jobs(output_of(result))]
    runs = (len(config.grid.methods) + len(config.grid.arms)) * len(config.grid.shots) * len(config.grid.seeds)
    assert rules.count("pool_train") == n_teachers(config) == 13 * len(config.pool.datasets)
    assert rules.count("meta_train") == runs
    assert rules.count("meta_test") == runs * len(config.test_datasets)


# --------------------------------------------------------------------------------------------
# The config file reaching the steps
# --------------------------------------------------------------------------------------------


def test_jobs_get_the_configfile_snakemake_was_given(tmp_path):
    config = write_yaml(tmp_path / "micro.yaml", micro_config())
    result = snakemake("-n", "-p", "--forceall", "--cores", "1", "--configfile", str(config),
                       "--directory", str(tmp_path / "wd"))
    assert result.returncode == 0, output_of(result)
    prefix = "Shell command: "
    commands = [line[len(prefix):] for line in output_of(result).splitlines() if line.startswith(prefix + "purer ")]
    # prepare, teachers, manifest, runs, tests, icfil, its 4 controls, report
    assert len(commands) == 1 + 2 + 1 + 2 + 2 + 1 + 4 + 1
    for command in commands:
        assert f"--config {config}" in command, command
    icfil = [c for c in commands if "--icfil" in c]
    assert len(icfil) == 1 and "--method purer" in icfil[0]
    controls = sorted(re.search(r"--variant (\S+)", c).group(1) for c in commands if "--variant" in c)
    assert controls == ["finetune-support", "icfil-noise", "plain-steps2", "plain-steps3"]
    assert all("--method purer" in c for c in commands if "--variant" in c)


def test_snakemake_config_overrides_are_refused():
    result = snakemake("-n", "--cores", "1", "--config", "experiment=other")
    assert result.returncode != 0
    assert "--config KEY=VALUE is not supported" in output_of(result)


def test_only_one_configfile_is_accepted(tmp_path):
    first = write_yaml(tmp_path / "a.yaml", micro_config())
    second = write_yaml(tmp_path / "b.yaml", {"seed": 1})
    result = snakemake("-n", "--cores", "1", "--configfile", str(first), str(second),
                       "--directory", str(tmp_path / "wd"))
    assert result.returncode != 0
    assert "give exactly one --configfile" in output_of(result)


def test_a_bad_config_names_the_key(tmp_path):
    config = write_yaml(tmp_path / "bad.yaml", micro_config(pool={"datasets": ["glyphs"], "n_wya": 5}))
    result = snakemake("-n", "--cores", "1", "--configfile", str(config), "--directory", str(tmp_path / "wd"))
    assert result.returncode != 0
    assert "unknown key pool.n_wya" in output_of(result)


def test_schema_rejects_an_unknown_method(tmp_path):
    grid = micro_config()["grid"] | {"methods": ["purer", "maml"]}
    config = write_yaml(tmp_path / "bad.yaml", micro_config(grid=grid))
    result = snakemake("-n", "--cores", "1", "--configfile", str(config), "--directory", str(tmp_path / "wd"))
    assert result.returncode != 0
    assert "maml" in output_of(result)


# --------------------------------------------------------------------------------------------
# A whole run
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_end_to_end(tmp_path):
    """The whole DAG on the micro config in a temporary directory; a rerun has nothing to do."""
    config_file = write_yaml(tmp_path / "micro.yaml", micro_config())
    workdir = tmp_path / "wd"
    args = ("--cores", "2", "--configfile", str(config_file), "--directory", str(workdir))
    result = snakemake(*args)
    assert result.returncode == 0, output_of(result)[-5000:]

    config = load_config(config_file)
    report = workdir / paths.report_dir(config)
    summary = json.loads((report / "summary.json").read_text(encoding="utf-8"))
    assert summary and all({"accuracy", "difference", "helps"} & set(cell) for cell in summary.values())
    assert "glyphs/5w1s/purer+icfil verdict" in summary
    assert (report / "tables" / "main.md").is_file() and (report / "figures" / "accuracy.png").is_file()
    run = paths.run_dir(config, "purer", 1, 0)
    metrics = workdir / paths.test_dir(run, "glyphs", True) / "metrics.json"
    assert json.loads(metrics.read_text(encoding="utf-8"))["icfil"] is True
    noise = json.loads((workdir / paths.test_dir(run, "glyphs", "icfil-noise") / "metrics.json").read_text())
    assert noise["test_variant"] == "icfil-noise" and noise["calibration"] == "noise"
    assert (report / "tables" / "ablation_icfil.md").is_file() and (report / "tables" / "differences.md").is_file()
    assert any("-" in key.rsplit("/", 1)[-1] and "difference" in cell for key, cell in summary.items())

    again = snakemake(*args)
    assert again.returncode == 0, output_of(again)
    assert "Nothing to be done" in output_of(again)


# --------------------------------------------------------------------------------------------
# README and CI agree
# --------------------------------------------------------------------------------------------


def test_quick_start_is_two_lines_that_ci_runs():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Quick start\n.*?```bash\n(.*?)```", readme, re.S)
    assert block, "README.md has no Quick start code block"
    first_block = re.search(r"```[a-z]*\n(.*?)```", readme, re.S).group(1)
    assert first_block == block.group(1), "the Quick start block must be the README's first code block"
    lines = [line for line in first_block.splitlines() if line.strip()]
    assert lines == ["make run", "make test"]
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert ci[-1] == "make test" and "set -euo pipefail" in ci
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert 'pip install -c constraints.txt -e ".[pipeline,dev]"' in makefile
    assert re.search(r"^run: .*\n\t.*snakemake \$\(TARGETS\) --cores all --rerun-incomplete", makefile, re.M)
    assert re.search(r"^test: .*\n\t.*pytest$", makefile, re.M)


def _make_commands(*arguments: str) -> list[list[str]]:
    """The Snakemake command lines ``make -n`` would run (nothing is run), split into words."""
    printed = subprocess.run(["make", "-n", *arguments], cwd=REPO, capture_output=True, text=True, check=True)
    return [line.split() for line in printed.stdout.splitlines() if "bin/snakemake" in line]


def test_make_run_passes_targets_before_the_config_file_and_resumes_incomplete_jobs():
    (command,) = _make_commands("run", "TARGETS=out/a.json out/b.json", "CONFIG=config/experiments/bench.yaml",
                                "SNAKEMAKE_ARGS=--profile slurm")
    words = command[command.index(next(w for w in command if w.endswith("bin/snakemake"))) + 1:]
    # Snakemake reads every word after --configfile as a config file: targets must come first
    assert words[:2] == ["out/a.json", "out/b.json"]
    assert words[-2:] == ["--configfile", "config/experiments/bench.yaml"]
    assert "--rerun-incomplete" in words and words[words.index("--profile") + 1] == "slurm"
    (dry,) = _make_commands("dry-run")
    assert dry[-3:] == ["-n", "--configfile", "config/config.yaml"]
