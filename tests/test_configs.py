"""The shipped configs: they load, validate, document every key and describe the intended runs."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml
from workflow_support import REPO

from purer.config import ExperimentConfig, load_config, to_dict
from purer.models.pool import n_teachers

DEFAULT = REPO / "config" / "config.yaml"
EXPERIMENTS = sorted((REPO / "config" / "experiments").glob("*.yaml"))
SHIPPED = [DEFAULT, *EXPERIMENTS]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text(encoding="utf-8"))


def _ids(files: list[Path]) -> list[str]:
    return [str(f.relative_to(REPO)) for f in files]


def dotted_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every field of the config dataclasses as a dotted key (``datasets.<name>.field`` for datasets)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        keys.append(key)
        hint = hints[field.name]
        optional = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]  # a section or null
        if dataclasses.is_dataclass(hint) or (typing.get_origin(hint) in (typing.Union, types.UnionType) and optional):
            keys += dotted_keys(hint if dataclasses.is_dataclass(hint) else optional[0], key + ".")
        elif typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            keys += dotted_keys(typing.get_args(hint)[1], key + ".<name>.")
    return keys


@pytest.mark.parametrize("path", SHIPPED, ids=_ids(SHIPPED))
def test_shipped_config_loads_and_validates(path):
    config = load_config(path)
    jsonschema.Draft202012Validator(SCHEMA).validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert config.experiment


def test_experiment_names_are_unique():
    names = [load_config(path).experiment for path in SHIPPED]
    assert len(names) == len(set(names)), names


def test_schema_rejects_what_the_pipeline_cannot_expand():
    validator = jsonschema.Draft202012Validator(SCHEMA)
    raw = yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))
    assert not list(validator.iter_errors(raw))
    for bad in ({"experiment": "a/b"}, {"grid": {"methods": ["maml"]}}, {"grid": {"shots": [0]}},
                {"pool": {"datasets": []}}, {"datasets": {"x": {"source": "imagenet"}}}):
        assert list(validator.iter_errors(raw | bad)), bad


def test_default_config_spells_out_every_key():
    """config/config.yaml mirrors every field of ExperimentConfig (nested sections included)."""
    raw = yaml.safe_load(DEFAULT.read_text(encoding="utf-8"))
    defaults = to_dict(ExperimentConfig())

    def missing(node: dict, reference: dict, prefix: str) -> list[str]:
        out = []
        for key, value in reference.items():
            if key not in node:
                out.append(prefix + key)
            elif isinstance(value, dict) and key != "datasets":
                out += missing(node[key], value, prefix + key + ".")
        return out

    absent = missing(raw, defaults, "")
    for name, dataset in raw["datasets"].items():
        absent += missing(dataset, defaults["datasets"]["glyphs"], f"datasets.{name}.")
    assert not absent


def test_default_config_comments_every_key():
    lines = DEFAULT.read_text(encoding="utf-8").splitlines()
    keys = [line for line in lines if re.match(r"^\s*[A-Za-z0-9_-]+:", line)]
    assert keys and all("#" in line for line in keys), [line for line in keys if "#" not in line]


def test_config_readme_documents_every_key():
    text = (REPO / "config" / "README.md").read_text(encoding="utf-8")
    undocumented = [key for key in dotted_keys() if f"`{key}`" not in text]
    assert not undocumented
    documented = re.findall(r"^\| `([a-z_.<>]+)` \|", text.split("## Keys", 1)[1], re.M)
    assert documented and not set(documented) - set(dotted_keys()), "config/README.md documents a key that does not exist"


def test_default_config_is_the_small_offline_run():
    config = load_config(DEFAULT)
    assert config.datasets["glyphs"].source == "glyphs" and config.datasets["glyphs"].path is None
    assert (config.datasets["glyphs"].image_size, config.datasets["glyphs"].channels) == (32, 1)
    assert config.device == "cpu" and config.pool.architectures == ("conv4",)
    assert n_teachers(config) == 4
    assert set(config.grid.methods) == {"purer", "ei", "random", "average"} and config.grid.shots == (1, 5)
    assert config.grid.icfil_methods == ("purer", "ei") and True in config.grid.icfil
    assert set(config.grid.icfil_controls) == {"matched", "noise", "support"}


def _experiment(name: str) -> ExperimentConfig:
    return load_config(REPO / "config" / "experiments" / f"{name}.yaml")


@pytest.mark.parametrize(
    "name, architectures, init",
    [
        ("ss_cifar_fs", ("conv4",), "average"),
        ("ss_mini_imagenet", ("conv4",), "average"),
        ("sh_cifar_fs", ("conv4", "resnet10", "resnet18"), "random"),
        ("sh_mini_imagenet", ("conv4", "resnet10", "resnet18"), "random"),
        ("mh", ("conv4", "resnet10", "resnet18"), "random"),
        ("model_scale_cifar_fs", ("resnet18",), "random"),
        ("model_scale_mini_imagenet", ("resnet18",), "random"),
    ],
)
def test_paper_scenarios_follow_the_released_settings(name, architectures, init):
    config = _experiment(name)
    mt = config.meta_train
    assert config.pool.architectures == architectures and mt.init == init and mt.meta_model == "conv4"
    assert (mt.iterations, mt.curriculum.warmup, mt.curriculum.adv_scale, mt.curriculum.patience) == (60000, 4000, 10, 6)
    assert mt.curriculum.warmup_fraction is None and mt.inversion.images_per_class is None
    assert (mt.outer_lr, mt.learner.inner_lr, mt.learner.inner_steps, mt.meta_batch_size) == (0.001, 0.01, 1, 4)
    assert config.grid.shots == (1, 5) and config.grid.seeds == (0, 1, 2) and config.meta_test.episodes == 600
    # Average needs one architecture: it runs only where the pool is homogeneous (docs/method.md §6)
    assert ("average" in config.grid.methods) == (len(set(architectures)) == 1 and init == "average")
    sizes = {config.datasets[d].image_size for d in config.pool.datasets}
    assert sizes == ({84} if "mini_imagenet" in name else {32})


def test_mh_pools_both_datasets_at_one_resolution():
    config = _experiment("mh")
    assert config.pool.datasets == ("cifar-fs", "mini-imagenet")
    assert config.test_datasets == ("cifar-fs", "mini-imagenet")


def test_dataset_paths_point_where_the_readme_says():
    for path in EXPERIMENTS:
        for dataset in load_config(path).datasets.values():
            expected = {"mini-imagenet": "../shared/data/mini-imagenet/mini-imagenet.zip",
                        "cifar-fs": "data/raw/cifar-100-python.tar.gz"}[dataset.source]
            assert dataset.path == expected, path


def test_bench_compares_the_methods_on_mini_imagenet_32px():
    config = _experiment("bench")
    assert config.pool.datasets == ("mini-imagenet",) and config.datasets["mini-imagenet"].image_size == 32
    assert set(config.grid.methods) == {"purer", "ei", "random", "average"} and config.grid.shots == (1, 5)
    assert config.grid.icfil == (False, True) and config.grid.icfil_methods == config.grid.methods
    assert config.device == "cpu"
