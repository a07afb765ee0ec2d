"""Bring your own pool: ``pool_manifest`` and ``custom_architectures`` (examples/byo_pool/README.md).

The worked example's commands run end to end (teachers trained by plain PyTorch with a custom
architecture, then a pipeline run that trains no teacher); the manifest checks give one clear
error; nothing in a manifest causes an import.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from workflow_support import REPO, output_of, snakemake, tool_env

from purer import paths
from purer.cli.main import main as purer_main
from purer.config import load_config
from purer.errors import CheckpointError, ConfigError
from purer.models.backbones import architecture_registry, build_backbone
from purer.models.manifest import load_config_manifest, load_manifest, load_pool

EXAMPLE = REPO / "examples" / "byo_pool"


def readme_commands() -> str:
    text = (EXAMPLE / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Commands\n.*?```bash\n(.*?)```", text, re.S)
    assert block, "examples/byo_pool/README.md has no Commands block"
    return block.group(1)


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """The README's commands, as written, in a copy of the example (``snakemake`` is the repo's Snakefile)."""
    root = tmp_path_factory.mktemp("byo")
    shutil.copytree(EXAMPLE, root / "examples" / "byo_pool")
    shim = f'snakemake() {{ "{sys.executable}" -m snakemake --snakefile "{REPO / "Snakefile"}" "$@"; }}\n'
    script = "set -euo pipefail\n" + shim + readme_commands()
    env = tool_env(PYTHONPATH=str(REPO))
    result = subprocess.run(["bash", "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, output_of(result)[-5000:]
    return root, result


def test_the_example_trains_no_teacher_and_meta_trains_from_the_given_files(example_run):
    root, result = example_run
    out = output_of(result)
    stats = out.split("Job stats:", 1)[1]
    assert "meta_train" in stats and "pool_train" not in stats and "pool_manifest" not in stats
    assert "wrote results/byo_teachers/manifest.yaml (2 teachers)" in out
    config = load_config(root / "examples" / "byo_pool" / "config.yaml")
    run = root / paths.run_dir(config, "purer", 1, 0)
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_teachers"] == 2 and summary["iterations"] == 4
    assert not (root / paths.pool_dir(config)).exists()  # no pool of its own
    log = (root / "logs" / "byo_pool" / "meta_train" / "purer_1shot_seed0.log").read_text(encoding="utf-8")
    assert "loaded 2 teachers from results/byo_teachers/manifest.yaml" in log
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    teachers = saved["fingerprint"]["teachers"]
    assert [t["checkpoint"] for t in teachers] == [f"results/byo_teachers/teacher_0{i}.pt" for i in range(2)]
    assert {t["architecture"] for t in teachers} == {"small_conv"}
    assert (root / "results" / "byo_pool" / "report" / "tables" / "main.md").is_file()


def test_replacing_a_teacher_file_reruns_meta_training(example_run):
    root, _ = example_run
    env = tool_env(PYTHONPATH=f"{REPO}:{root / 'examples' / 'byo_pool'}")
    teacher = root / "results" / "byo_teachers" / "teacher_01.pt"
    state = torch.load(teacher, weights_only=True)
    state["state_dict"]["head.bias"] += 1.0  # a retrained teacher
    torch.save(state, teacher)
    plan = snakemake("--cores", "1", "--configfile", "examples/byo_pool/config.yaml", "--dry-run", cwd=root, env=env)
    assert plan.returncode == 0, output_of(plan)
    assert "meta_train" in output_of(plan).split("Job stats:", 1)[1]
    assert "pool_train" not in output_of(plan)


# --------------------------------------------------------------------------------------------
# The checks, one error each
# --------------------------------------------------------------------------------------------


def _manifest(folder: Path, architecture: str = "conv4", **dataset) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = build_backbone("conv4", 5, 1, 16, width=4)
    torch.save({"state_dict": model.state_dict()}, folder / "t0.pt")
    data = {"format": "purer-pool/1",
            "datasets": [{"name": "glyphs", "offset": 0, "n_classes": 10} | dataset],
            "teachers": [{"index": 0, "architecture": architecture, "arch_kwargs": {"width": 4}, "checkpoint": "t0.pt",
                          "dataset": "glyphs", "classes": [0, 1, 2, 3, 4], "image_size": 16, "channels": 1}]}
    (folder / "manifest.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return folder / "manifest.yaml"


def _config(write_config, manifest: Path, **extra):
    raw = {"pool_manifest": str(manifest), "datasets": {"glyphs": {"train_classes": 10, "image_size": 16}}} | extra
    return write_config(raw)


def test_a_built_in_pool_loads_through_the_config(tmp_path, write_config):
    config = load_config(_config(write_config, _manifest(tmp_path / "pool")))
    manifest = load_config_manifest(config)
    assert manifest.path == tmp_path / "pool" / "manifest.yaml" and len(load_pool(manifest)) == 1


def test_an_unknown_architecture_lists_the_known_ones(tmp_path):
    path = _manifest(tmp_path / "pool", architecture="wide_conv")
    with pytest.raises(ConfigError) as error:
        load_manifest(path)
    assert str(error.value) == (
        f"pool manifest {path}: teachers[0].architecture: unknown 'wide_conv' (valid: ['conv4', 'resnet10', "
        "'resnet18']; declare others under custom_architectures in the config)"
    )


def test_a_manifest_never_causes_an_import(tmp_path):
    """An architecture that looks like a module path is just an unknown name."""
    name = "purer_byo_never_imported"
    (tmp_path / f"{name}.py").write_text("raise SystemExit('imported')\n", encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    try:
        for architecture in (f"{name}:make", name, f"{name}.make"):
            with pytest.raises(ConfigError, match="unknown"):
                load_manifest(_manifest(tmp_path / "pool", architecture=architecture))
        assert name not in sys.modules
    finally:
        sys.path.remove(str(tmp_path))


def test_datasets_must_be_the_configs(tmp_path, write_config):
    path = _manifest(tmp_path / "pool", n_classes=12)
    config = load_config(_config(write_config, path))
    with pytest.raises(CheckpointError) as error:
        load_config_manifest(config)
    assert str(error.value) == (
        f"pool manifest {path}: datasets (name, offset, n_classes) [('glyphs', 0, 12)] do not match the config's "
        "pool.datasets [('glyphs', 0, 10)]; the teachers' class ids must index the config's datasets"
    )


def test_a_missing_teacher_file_is_named(tmp_path, write_config):
    path = _manifest(tmp_path / "pool")
    (tmp_path / "pool" / "t0.pt").unlink()
    with pytest.raises(CheckpointError, match=r"teachers\[0\]\.checkpoint: file not found: .*t0\.pt"):
        load_config_manifest(load_config(_config(write_config, path)))


@pytest.mark.parametrize(
    ("factories", "message"),
    [
        ({"small": "no_such_module_xyz:make"}, "custom_architectures.small: cannot import module 'no_such_module_xyz'"),
        ({"small": "purer.models.backbones:no_such"}, "custom_architectures.small: module 'purer.models.backbones' has no callable 'no_such'"),
        ({"conv4": "purer.models.backbones:Conv4"}, "custom_architectures.conv4: 'conv4' is a built-in architecture"),
    ],
)
def test_bad_factories_name_the_key(factories, message):
    with pytest.raises(ConfigError) as error:
        architecture_registry(factories)
    assert str(error.value).startswith(message)


def test_a_factory_must_be_written_module_colon_callable(write_config, tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(write_config({"custom_architectures": {"small": "byo_nets.make_small_conv"}}))
    assert "custom_architectures.small: expected 'module.path:callable'" in str(error.value)


def test_a_factory_that_returns_no_module_is_refused():
    with pytest.raises(ConfigError, match="the factory returned dict, expected an nn.Module"):
        build_backbone("odd", 5, 1, 16, registry={"odd": lambda *args, **kwargs: {}})


def test_a_custom_architecture_loads_from_the_config(tmp_path, write_config, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from byo_nets import make_small_conv

    path = _manifest(tmp_path / "pool", architecture="small_conv")
    torch.save({"state_dict": make_small_conv(5, 1, 16, True, width=4).state_dict()}, tmp_path / "pool" / "t0.pt")
    config = load_config(_config(write_config, path, custom_architectures={"small_conv": "byo_nets:make_small_conv"}))
    (entry, model), = load_pool(load_config_manifest(config))
    assert type(model).__name__ == "SmallConv" and model(torch.zeros(2, 1, 16, 16)).shape == (2, 5)


def test_pool_training_is_refused_when_the_config_brings_its_pool(tmp_path, write_config, capsys):
    config = _config(write_config, _manifest(tmp_path / "pool"))
    assert purer_main(["pool", "train", "--config", str(config), "--teacher", "0"]) == 2
    assert capsys.readouterr().err.startswith(
        f"purer pool: error: the config brings its own pool (pool_manifest: {tmp_path / 'pool' / 'manifest.yaml'})"
    )


def test_the_workflow_stops_on_a_bad_manifest(tmp_path, write_config):
    path = _manifest(tmp_path / "pool", n_classes=12)
    config = _config(write_config, path)
    result = snakemake("--cores", "1", "--configfile", str(config), "--dry-run", cwd=tmp_path)
    assert result.returncode != 0
    assert "do not match the config's pool.datasets" in output_of(result)
