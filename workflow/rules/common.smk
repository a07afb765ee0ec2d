"""Shared definitions: the config file, the resolved config, output paths and code inputs.

Every path is built by ``purer.paths`` from the same ``purer.config.load_config`` result that the
``purer`` command lines load, so the DAG and the steps cannot disagree about where files live.
"""

import json
import re
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

try:
    from purer import arms, grid, paths, pipeline
    from purer.config import load_config, read_yaml, to_dict
    from purer.data import registry
    from purer.errors import PurerError
    from purer.models.manifest import load_config_manifest
    from purer.models.pool import n_teachers
    from purer.variants import CONTROL_PATTERN
except ImportError as exc:
    if exc.name == "purer":
        raise WorkflowError(
            "the purer package is not importable; install it first: "
            'python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ".[pipeline,dev]"'
        ) from None
    raise WorkflowError(f"the purer package is incomplete: {exc}") from None

REPO = Path(workflow.basedir)
PKG = REPO / "purer"
DEFAULT_CONFIGFILE = "config/config.yaml"


def _config_file():
    """The one YAML file the run uses: ``--configfile FILE`` if given, else config/config.yaml.

    Snakemake merges ``--config KEY=VALUE`` and several ``--configfile``s into its own ``config``
    dict, but every step reads exactly one file through ``purer --config FILE``. Such overrides
    would be silently lost, so they are refused.
    """
    if workflow.config_settings.config:
        raise WorkflowError(
            "snakemake --config KEY=VALUE is not supported: every step reads one YAML file. "
            "Edit the YAML (or a copy passed with --configfile), or run "
            "`dvc exp run -S config/config.yaml:SECTION.KEY=VALUE`."
        )
    given = [Path(p) for p in workflow.overwrite_configfiles]
    if len(given) > 1:
        raise WorkflowError(
            f"give exactly one --configfile (got {len(given)}: {', '.join(map(str, given))}); "
            "put all values into one YAML file"
        )
    if not given:
        return DEFAULT_CONFIGFILE
    try:
        return str(given[0].relative_to(Path.cwd()))
    except ValueError:
        return str(given[0])


def _read_yaml(path):
    """The config as data, read as the steps read it (duplicate keys and alias bombs refused)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return read_yaml(fh.read(), str(path)) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise WorkflowError(f"cannot read the config file {path}: {exc}") from None
    except PurerError as exc:
        raise WorkflowError(str(exc)) from None


CONFIGFILE = _config_file()
# The schema checks the orchestration keys (names, paths, grid); purer.config checks the rest.
validate(_read_yaml(CONFIGFILE), str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
try:
    CFG = load_config(CONFIGFILE)
    # Bring your own pool (pool_manifest): the manifest is checked now and its teacher files are
    # the meta-train inputs; the pool rules are not defined (workflow/rules/pool.smk).
    BYO_POOL = load_config_manifest(CFG) if CFG.pool_manifest is not None else None
    N_TEACHERS = len(BYO_POOL.teachers) if BYO_POOL is not None else n_teachers(CFG)
except PurerError as exc:
    raise WorkflowError(str(exc)) from None

EXP = CFG.experiment
LOGS = f"logs/{EXP}"

wildcard_constraints:
    teacher=r"\d\d+",
    method=r"[A-Za-z0-9_.-]+",
    n_shot=r"\d+",
    seed=r"\d+",
    dataset=r"[A-Za-z0-9_.+-]+",
    control=CONTROL_PATTERN,


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def rule_safe(name):
    """A dataset name as part of a rule name (letters, digits, underscores)."""
    return re.sub(r"\W", "_", name)


def settings(*values):
    """A canonical JSON string of config sections, used as a rule ``params`` entry.

    Snakemake reruns a job when its params change, so each rule lists the sections it depends
    on; editing an unrelated section leaves its outputs alone.
    """
    return json.dumps([to_dict(v) for v in values], sort_keys=True)


def code(*modules):
    """Absolute paths of package modules a rule runs (a change to one reruns the rule)."""
    return [str(PKG / m) for m in modules]


# Package modules each step runs, beyond the shared infrastructure: one list, in purer/pipeline.py (also read
# by the meta-training resume fingerprint). tests/test_workflow.py checks them against the import graph of each
# step's CLI module.
CODE = {step: code(*modules) for step, modules in pipeline.STEP_MODULES.items()}
SOURCE_MODULES = pipeline.SOURCE_MODULES


# --------------------------------------------------------------------------------------------
# Compute resources (used by executors such as SLURM; a local run only counts them)
# --------------------------------------------------------------------------------------------

# A GPU is requested only when the config computes on CUDA, and only by the jobs that compute on
# it. The baselines `random` and `average` are not trained: their meta-train job only validates
# (no GPU, short). Site settings (account, partitions) are not here: README "Running on SLURM".
ON_CUDA = CFG.device.startswith("cuda")
VALIDATE_ONLY_METHODS = ("random", "average")


def gpus(wildcards=None):
    """GPUs of a compute job (pool_train, meta_test*): 1 on a CUDA config, else 0."""
    return 1 if ON_CUDA else 0


def meta_train_gpus(wildcards):
    """GPUs of one meta-train job: 0 for the baselines that only validate (an arm by its base method)."""
    return 0 if arms.base_method(CFG, wildcards.method) in VALIDATE_ONLY_METHODS else gpus()


def meta_train_runtime(wildcards):
    """Minutes of one meta-train job: 60000 meta-iterations at most a day (resumes if killed)."""
    return 60 if arms.base_method(CFG, wildcards.method) in VALIDATE_ONLY_METHODS else 1440


def run_config(wildcards):
    """The config of one run (``{method}`` is a method or an arm of grid.arms: the arm's meta_train)."""
    try:
        return arms.resolve(CFG, wildcards.method).config
    except PurerError as exc:
        raise WorkflowError(str(exc)) from None


def prepare_inputs(dataset):
    """Code of the dataset's source. The raw data is not an input: Snakemake would rerun prepare on
    its modification time (the raw folder may be copied again, same bytes, new times, at each
    sitting) and on its disappearance (the rerun fails, and Snakemake deletes the cached splits of
    the failed job). :func:`prepare_source` reruns prepare on its content instead; a missing path is
    reported by ``purer prepare`` with instructions."""
    return CODE["prepare"] + code(*SOURCE_MODULES.get(dataset.source, []))


def prepare_source(name):
    """A ``params`` entry of ``prepare_<name>``: the content signature of its source data
    (purer.data.registry.workflow_source), so Snakemake reruns prepare exactly when the data's
    content (or its path) changes; data gone from the path the cache was built from changes nothing.
    A function: the raw data is read only when the job is in the DAG."""

    def source(wildcards):
        try:
            return json.dumps(registry.workflow_source(CFG, name), sort_keys=True)
        except PurerError as exc:
            raise WorkflowError(str(exc)) from None

    return source


# --------------------------------------------------------------------------------------------
# Paths (all from purer.paths; wildcard patterns are checked against the concrete functions)
# --------------------------------------------------------------------------------------------


def cache(name, split):
    """The cached split of dataset ``name`` (a name under ``datasets`` in the config)."""
    if name not in CFG.datasets:
        raise WorkflowError(f"dataset {name!r} is not defined under `datasets` in {CONFIGFILE} (defined: {sorted(CFG.datasets)})")
    return str(paths.dataset_cache(CFG, name, split))


POOL_DIR = paths.pool_dir(CFG)
MANIFEST = str(paths.manifest_path(CFG))
TEACHER = str(POOL_DIR / "teacher_{teacher}.pt")
TEACHER_HISTORY = str(POOL_DIR / "teacher_{teacher}.json")
if BYO_POOL is None:
    TEACHERS = [str(paths.teacher_path(CFG, i)) for i in range(N_TEACHERS)]
else:
    TEACHERS = [str(t.checkpoint) for t in BYO_POOL.teachers]

RUN = str(paths.run_dir(CFG, "{method}", "{n_shot}", "{seed}"))
META_MODEL = f"{RUN}/meta_model.pt"
RUN_SUMMARY = f"{RUN}/summary.json"
TEST_PLAIN = str(paths.test_dir(RUN, "{dataset}", False) / "metrics.json")
TEST_ICFIL = str(paths.test_dir(RUN, "{dataset}", True) / "metrics.json")
TEST_CONTROL = str(paths.test_dir(RUN, "{dataset}", "{control}") / "metrics.json")  # ICFIL's controls

REPORT_DIR = paths.report_dir(CFG)
REPORT_SUMMARY = str(REPORT_DIR / "summary.json")
# main.csv is always written (the DVC plots file); the other formats follow report.formats.
REPORT_TABLES = [str(REPORT_DIR / "tables" / f"main.{fmt}") for fmt in dict.fromkeys([*CFG.report.formats, "csv"])]
REPORT_FIGURES = [str(REPORT_DIR / "figures" / f"accuracy.{fmt}") for fmt in CFG.report.figure_formats]
# The report's record of its inputs is not committed: in a fresh clone it is missing, so the pipeline
# recomputes the committed report (and everything it needs) instead of taking it as up to date.
REPORT_RECORD = str(REPORT_DIR / "inputs.json")
REPORT_OUTPUTS = [REPORT_SUMMARY, *REPORT_TABLES, *REPORT_FIGURES, REPORT_RECORD]

if Path(TEACHER.format(teacher="07")) != paths.teacher_path(CFG, 7):
    raise WorkflowError(f"teacher path pattern {TEACHER} does not match purer.paths.teacher_path")

POOL_TRAIN_SPLITS = [cache(name, "train") for name in CFG.pool.datasets]
VAL_SPLITS = [cache(name, "val") for name in CFG.pool.datasets]  # validation episodes (first pool dataset)


# --------------------------------------------------------------------------------------------
# The run grid
# --------------------------------------------------------------------------------------------


def grid_runs():
    """(run name, n_shot, seed) of every meta-training run in ``grid`` (purer.grid.grid_runs)."""
    try:
        return grid.grid_runs(CFG)
    except PurerError as exc:  # a branching arm that may not branch
        raise WorkflowError(str(exc)) from None


def grid_tests():
    """Every meta-test ``metrics.json`` of the grid (purer.grid.grid_tests); the report reads these."""
    return [str(path) for path in grid.grid_tests(CFG)]


def meta_train_settings(wildcards):
    """The run's meta_train and seed; a trunk (an arm branches from it) also saves its warm-up
    state, so becoming one reruns it."""
    values = [run_config(wildcards).meta_train, CFG.seed]
    if arms.is_trunk(CFG, wildcards.method):
        values.append({"saves_warmup_state": True})
    return settings(*values)


def branch_inputs(wildcards):
    """A branching arm's trunk run (its summary: the trunk has saved its warm-up state), else nothing."""
    trunk = arms.trunk_of(CFG, wildcards.method)
    return [] if trunk is None else [RUN_SUMMARY.format(method=trunk, n_shot=wildcards.n_shot, seed=wildcards.seed)]


def grid_run_summaries():
    return [RUN_SUMMARY.format(method=m, n_shot=k, seed=s) for m, k, s in grid_runs()]
