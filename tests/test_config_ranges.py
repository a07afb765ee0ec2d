"""Every value a user can write is checked: finite numbers in documented ranges, names that are one
folder, YAML without duplicate keys or alias bombs, floats as people write them, short messages.

Each case is a row of docs/errors.md, "Config values" (the message after ``purer <step>: error: ``).
"""

from __future__ import annotations

import dataclasses
import re
import time
import typing
from pathlib import Path

import pytest
import yaml
from eval_helpers import tiny_config, write_meta_model
from pool_helpers import fake_checkpoint, setup_pool, synthetic_split
from workflow_support import REPO, micro_config, output_of, snakemake

from purer import paths
from purer.cli.main import main
from purer.config import (
    MAX_IMAGE_SIZE,
    MAX_PER_CLASS,
    MAX_SHOWN,
    NAME_PATTERN,
    ExperimentConfig,
    load_config,
)
from purer.data.cache import save_split
from purer.errors import ConfigError, PurerError
from purer.meta.engine import nonfinite_suspects
from purer.meta.meta_test import meta_test
from purer.meta.train import meta_train
from purer.models.manifest import write_manifest
from purer.models.pool import n_teachers, teacher_specs
from purer.models.pretrain import train_teacher

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text(encoding="utf-8"))


def refused(overrides: list[str], path: Path | None = None) -> str:
    """The message of loading the defaults (or ``path``) with ``overrides``, without the file prefix."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    prefix = f"{path if path is not None else '<defaults>'}: "
    assert message.startswith(prefix), message
    return message[len(prefix):]


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Every numeric key: finite (generic, so keys added later get it), documented
# --------------------------------------------------------------------------------------------


def _numeric_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, type]]:
    """(dotted key, number type) of every int/float field, also inside ``X | None`` and ``tuple[X, ...]``."""
    keys = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        hint, key = hints[field.name], f"{prefix}{field.name}"
        if dataclasses.is_dataclass(hint):
            keys += _numeric_keys(hint, key + ".")
            continue
        if typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            keys += _numeric_keys(typing.get_args(hint)[1], key + ".<name>.")
            continue
        inner = {a for a in typing.get_args(hint) if a is not type(None)} or {hint}
        inner = {typing.get_args(a)[0] if typing.get_origin(a) is tuple else a for a in inner}
        if inner & {int, float} and bool not in inner:
            keys.append((key, float if float in inner else int))
    return keys


NUMERIC = _numeric_keys()
FLOATS = [key for key, kind in NUMERIC if kind is float]


def test_the_numeric_keys_are_found():
    assert ("pool.lr", float) in NUMERIC and ("datasets.<name>.image_size", int) in NUMERIC
    assert ("datasets.<name>.mean", float) in NUMERIC and ("meta_test.inner_lr", float) in NUMERIC
    assert len(FLOATS) >= 24


@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("text, shown", [(".inf", "inf"), ("-.inf", "-inf"), (".nan", "nan")])
def test_every_float_key_refuses_non_finite_values(key, text, shown):
    key = key.replace("<name>", "glyphs")
    value = f"[{text}]" if key.endswith((".mean", ".std")) else text
    where = f"{key}[0]" if key.endswith((".mean", ".std")) else key
    assert refused([f"{key}={value}"]) == f"{where}: expected a finite number, got {shown}"


def test_integers_fit_in_64_bits():
    assert refused(["seed=99999999999999999999999"]) == "seed: expected a 64-bit integer, got 99999999999999999999999"


def test_config_readme_states_the_range_of_every_numeric_key():
    text = (REPO / "config" / "README.md").read_text(encoding="utf-8").split("## Value ranges", 1)[1]
    stated = set(re.findall(r"^\| `([a-z0-9_.<>]+)` \| \S", text, re.M))
    assert not {key for key, _ in NUMERIC} - stated


# --------------------------------------------------------------------------------------------
# Ranges
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("pool.grad_clip=-1", "pool.grad_clip: expected a positive number, got -1.0"),
        ("pool.grad_clip=0", "pool.grad_clip: expected a positive number, got 0.0"),
        ("pool.gamma=-0.2", "pool.gamma: expected a decay factor in (0, 1], got -0.2"),
        ("pool.gamma=1.5", "pool.gamma: expected a decay factor in (0, 1], got 1.5"),
        ("pool.milestones=[30, 20]", "pool.milestones: expected increasing epochs of at least 1, got (30, 20)"),
        ("pool.checkpoint_interval=0", "pool.checkpoint_interval: expected at least 1, got 0"),
        ("pool.batch_size=1000000", "pool.batch_size: expected at most 65_536, got 1000000"),
        ("datasets.glyphs.image_size=3200", f"datasets.glyphs.image_size: expected at most {MAX_IMAGE_SIZE}, got 3200"),
        ("datasets.glyphs.images_per_class=4000000", "datasets.glyphs.images_per_class: expected at most 10_000, got 4000000"),
        ("datasets.glyphs.mean=[0.5, 0.5] & datasets.glyphs.std=[1, 1]",
         "datasets.glyphs.mean: expected 1 or 3 value(s), one per channel, got (0.5, 0.5)"),
        ("datasets.glyphs.mean=[0.5] & datasets.glyphs.std=[1, 1, 1]",
         "datasets.glyphs.std: expected 1 value(s), as many as mean, got (1.0, 1.0, 1.0)"),
        ("datasets.glyphs.channels=3 & datasets.glyphs.mean=[0.5] & datasets.glyphs.std=[1]",
         "datasets.glyphs.mean: expected 3 value(s), one per channel, got (0.5,)"),
        ("meta_train.channels=2", "meta_train.channels: expected 1, 3 or null, got 2"),
        ("meta_train.meta_model_width=0", "meta_train.meta_model_width: expected at least 1, got 0"),
        ("meta_train.input_size=8400", "meta_train.input_size: expected at most 512, got 8400"),
        ("meta_train.iterations=600000000", "meta_train.iterations: expected at most 10_000_000, got 600000000"),
        ("meta_train.grid_snapshots=-1", "meta_train.grid_snapshots: expected 0 or more, got -1"),
        ("meta_train.inversion.images_per_class=200000", "meta_train.inversion.images_per_class: expected at most 10_000, got 200000"),
        ("meta_test.episodes=6000000", "meta_test.episodes: expected at most 100_000, got 6000000"),
        ("meta_test.icfil.tv_weight=-1e-4", "meta_test.icfil.tv_weight: expected 0 or more, got -0.0001"),
        ("meta_test.icfil.head_steps=-5", "meta_test.icfil.head_steps: expected 0 or more, got -5"),
        ("grid.shots=[1, 50000]", "grid.shots: expected values of at most 10_000, got (1, 50000)"),
        ("grid.seeds=[0, -1]", "grid.seeds: expected values of at least 0, got (0, -1)"),
        ("seed=-3", "seed: expected 0 or more, got -3"),
    ],
)
def test_values_outside_their_range_are_refused(override, message):
    assert refused(override.split(" & ")) == message


def test_meta_test_inner_lr_zero_is_refused_and_null_means_the_training_value():
    assert refused(["meta_test.inner_lr=0.0"]) == (
        "meta_test.inner_lr: expected a positive number, or null for meta_train.learner.inner_lr "
        "(inner_steps: 0 tests without adaptation), got 0.0"
    )
    assert load_config(None, ["meta_test.inner_lr=null"]).meta_test.inner_lr is None
    assert load_config(None, ["meta_test.inner_lr=0.05"]).meta_test.inner_lr == 0.05
    assert load_config(None, ["meta_test.inner_steps=0"]).meta_test.inner_steps == 0


@pytest.mark.parametrize("inner_lr, used", [(None, 0.1), (0.05, 0.05), (1e-3, 0.001)])
def test_meta_test_uses_the_inner_lr_it_is_given(tmp_path, inner_lr, used):
    """meta_test.inner_lr as given (as validation during meta-training does); null = the checkpoint's (0.1)."""
    _, config = tiny_config(tmp_path, inner_lr=inner_lr)
    write_meta_model(paths.run_dir(config, "purer", 1, 0) / "meta_model.pt")
    metrics = meta_test(config, "purer", 1, 0, "toy", icfil=False)
    assert metrics["learner"]["inner_lr"] == used


def test_the_shipped_ranges_and_the_workflow_schema_agree():
    defs, props = SCHEMA["$defs"], SCHEMA["properties"]
    assert defs["name"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_.-]*$" and defs["name"]["maxLength"] == 100
    assert NAME_PATTERN.fullmatch("a" * 100) and not NAME_PATTERN.fullmatch("a" * 101)
    size = props["datasets"]["additionalProperties"]["properties"]["image_size"]
    assert (size["minimum"], size["maximum"]) == (8, MAX_IMAGE_SIZE)
    shots = props["grid"]["properties"]["shots"]["items"]
    assert (shots["minimum"], shots["maximum"]) == (1, MAX_PER_CLASS)
    assert props["seed"]["minimum"] == 0 and props["grid"]["properties"]["seeds"]["items"]["minimum"] == 0


# --------------------------------------------------------------------------------------------
# The YAML loader
# --------------------------------------------------------------------------------------------


def test_float_spellings_people_write_are_numbers(tmp_path):
    path = write(tmp_path, "pool:\n  lr: 1e-3\n  gamma: 5E-1\n  grad_clip: 5e+2\n"
                           "meta_train:\n  outer_lr: 1.5e-3\n  inversion:\n    tv_weight: .5e-4\n")
    config = load_config(path, ["meta_train.learner.inner_lr=1E-2"])
    assert (config.pool.lr, config.pool.gamma, config.pool.grad_clip) == (0.001, 0.5, 500.0)
    assert (config.meta_train.outer_lr, config.meta_train.inversion.tv_weight) == (0.0015, 0.00005)
    assert config.meta_train.learner.inner_lr == 0.01
    assert yaml.safe_load("x: 1e-3")["x"] == "1e-3"  # PyYAML's own loader is left as it was
    assert refused(["meta_train.iterations=5e+2"]) == "meta_train.iterations: expected an integer, got 500.0"


def test_the_readme_example_loads(tmp_path):
    """config/README.md writes `1e-4` as a default; written that way in a file it is a number."""
    assert "`1e-4`" in (REPO / "config" / "README.md").read_text(encoding="utf-8")
    path = write(tmp_path, "meta_train:\n  inversion:\n    tv_weight: 1e-4\n")
    assert load_config(path).meta_train.inversion.tv_weight == 1e-4


def test_duplicate_top_level_key_is_refused(tmp_path):
    path = write(tmp_path, "pool:\n  n_way: 5\nseed: 1\npool:\n  epochs: 2\n")
    assert refused([], path) == "duplicate key pool at line 4 (first at line 1)"


def test_duplicate_nested_key_is_refused(tmp_path):
    path = write(tmp_path, "meta_train:\n  learner:\n    inner_lr: 0.01\n    inner_steps: 1\n    inner_lr: 0.1\n")
    assert refused([], path) == "duplicate key meta_train.learner.inner_lr at line 5 (first at line 3)"


def test_duplicate_key_in_an_override_is_refused():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["pool={lr: 1, lr: 2}"])
    assert str(info.value) == "override 'pool={lr: 1, lr: 2}': duplicate key lr at line 1 (first at line 1)"


def test_an_alias_bomb_is_refused_quickly_with_a_short_message(tmp_path):
    path = write(tmp_path, "\n".join(_bomb_lines() + ["experiment: *i"]) + "\n")
    assert len(path.read_bytes()) < 400
    start = time.process_time()
    message = refused([], path)
    assert time.process_time() - start < 30  # not a timing assertion on speed: a bomb would take hours
    assert message == ("the YAML expands to more than 100_000 values through its aliases (*name); "
                       "write the values out or use fewer nested aliases")


def test_a_few_aliases_are_fine(tmp_path):
    path = write(tmp_path, "pool:\n  lr: &rate 0.02\nmeta_train:\n  learner:\n    inner_lr: *rate\n")
    config = load_config(path)
    assert config.pool.lr == config.meta_train.learner.inner_lr == 0.02


def test_a_recursive_alias_is_refused(tmp_path):
    path = write(tmp_path, "pool:\n  milestones: &m [1, *m]\n")
    assert "the YAML expands to more than 100_000 values" in refused([], path)


def _bomb_lines() -> list[str]:
    lines, previous = ["a: &a [" + ",".join(["lol"] * 9) + "]"], "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    return lines


@pytest.mark.parametrize(
    "tail, message",
    [
        ("pool:\n  n_way: 2\n", "duplicate key pool at line {line} (first at line {first})"),
        ("\n".join(_bomb_lines()) + "\nexperiment: *i\n", "the YAML expands to more than 100_000 values"),
    ],
    ids=["duplicate", "alias-bomb"],
)
def test_snakemake_refuses_the_yaml_at_parse_time(tmp_path, tail, message):
    """The workflow reads the file as the steps do (its schema check runs on the same data)."""
    text = yaml.safe_dump(micro_config())
    if "experiment: *i" in tail:
        text = text.replace("experiment:", "old_experiment:", 1)
    path = write(tmp_path, text + tail, "bad.yaml")
    lines = path.read_text(encoding="utf-8").splitlines()
    first, line = lines.index("pool:") + 1, len(lines) - 1
    result = snakemake("-n", "--cores", "1", "--configfile", str(path), "--directory", str(tmp_path / "wd"))
    assert result.returncode != 0
    assert f"{path}: {message.format(line=line, first=first)}" in output_of(result)


def test_echoed_values_are_cut_to_80_characters(tmp_path):
    assert refused(["experiment=" + "x" * 5000]) == f"experiment: {NAME_EXPECTED}, got '{'x' * 37}...{'x' * 38}'"
    message = refused(["pool.epochs=[" + ", ".join(["123456789"] * 1000) + "]"])
    assert message.startswith("pool.epochs: expected an integer, got [123456789, 123456789, ")
    value = message.rsplit("got ", 1)[1]
    assert len(value) == MAX_SHOWN and value.endswith("…")
    assert len(refused(["y" * 5000 + "=1"])) < 400
    path = write(tmp_path, "pool:\n  " + "k" * 500 + ": 1\n  " + "k" * 500 + ": 2\n")
    assert refused([], path) == f"duplicate key pool.{'k' * 79}… at line 3 (first at line 2)"


# --------------------------------------------------------------------------------------------
# Names joined into paths
# --------------------------------------------------------------------------------------------

NAME_EXPECTED = ("expected a name usable as one folder name (a letter or digit, then letters, digits, '_', "
                 "'.' or '-'; at most 100 characters)")


@pytest.mark.parametrize(
    "name", ["../../x", "..", ".", ".hidden", "a/b", "a\\b", "/abs", "a\nb", "a\x00b", "tab\t", "a b", "x" * 101]
)
def test_unsafe_experiment_names_are_refused(name):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"experiment={name!r}" if "\n" not in name else "experiment=\"a\\nb\""])
    assert str(info.value).startswith(f"<defaults>: experiment: {NAME_EXPECTED}, got ")


def test_a_config_built_in_code_checks_its_names_too():
    with pytest.raises(ConfigError, match=r"^experiment: expected a name usable as one folder name"):
        ExperimentConfig(experiment="../x")
    with pytest.raises(ConfigError, match=r"^experiment: expected a name usable as one folder name"):
        dataclasses.replace(ExperimentConfig(), experiment="a/b")


def test_empty_experiment_name_is_refused():
    assert refused(["experiment=''"]) == "experiment: expected a non-empty name, got ''"


def test_unsafe_dataset_names_are_refused():
    assert refused(["datasets={'../x': {}}", "pool.datasets=['../x']"]) == f"datasets: {NAME_EXPECTED}, got '../x'"


def test_safe_names_are_accepted_and_every_path_stays_inside_its_root(tmp_path):
    config = load_config(None, ["experiment=run-1.b_2", "datasets={'mini-imagenet.84': {}}",
                                "pool.datasets=['mini-imagenet.84']", f"results_dir={tmp_path / 'r'}",
                                f"data_dir={tmp_path / 'd'}"])
    results, data = (tmp_path / "r").resolve(), (tmp_path / "d").resolve()
    run = paths.run_dir(config, "purer", 1, 0)
    for path in (paths.manifest_path(config), paths.report_dir(config), paths.test_dir(run, "mini-imagenet.84", True)):
        assert path.resolve().is_relative_to(results)
    assert paths.dataset_cache(config, "mini-imagenet.84", "train").resolve().is_relative_to(data)


def test_a_traversing_experiment_writes_nothing(tmp_path, write_config, capsys):
    config = write_config({"results_dir": str(tmp_path / "deep" / "results"), "data_dir": str(tmp_path / "deep" / "data")})
    before = sorted(tmp_path.rglob("*"))
    assert main(["prepare", "-c", str(config), "--set", "experiment=../../x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"purer prepare: error: {config}: experiment: {NAME_EXPECTED}, got '../../x'"
    assert sorted(tmp_path.rglob("*")) == before


# --------------------------------------------------------------------------------------------
# pool.n_way against the class count
# --------------------------------------------------------------------------------------------


def test_pool_n_way_above_the_class_count_is_refused(tmp_path):
    config = load_config(None, ["datasets.glyphs.train_classes=4", f"data_dir={tmp_path}"])
    with pytest.raises(ConfigError) as info:
        n_teachers(config)
    assert str(info.value) == ("pool.n_way: 5 classes per teacher, but dataset 'glyphs' has only 4 meta-train "
                               "classes; set pool.n_way to at most 4")
    assert n_teachers(load_config(None, ["datasets.glyphs.train_classes=5", f"data_dir={tmp_path}"])) == 1


def test_pool_n_way_above_the_class_count_fails_pool_list(tmp_path, write_config, capsys):
    config = write_config({"data_dir": str(tmp_path / "data"), "results_dir": str(tmp_path / "results"),
                           "datasets": {"glyphs": {"train_classes": 4}}, "pool": {"partition": "overlapping",
                                                                                   "n_teachers": 2}})
    assert main(["pool", "list", "-c", str(config)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "purer pool: error: pool.n_way: 5 classes per teacher, but dataset 'glyphs' has only 4 meta-train "
        "classes; set pool.n_way to at most 4"
    )


# --------------------------------------------------------------------------------------------
# Non-finite training names the settings to check
# --------------------------------------------------------------------------------------------


def test_a_diverging_teacher_names_its_settings(tmp_path):
    _, config = setup_pool(tmp_path, {"toy": 6}, lr=1e30, epochs=3, conv4_width=4)
    with pytest.raises(PurerError) as info:
        train_teacher(config, 0)
    assert str(info.value) == "teacher 0: the training loss is not finite at epoch 1; check pool.lr, pool.grad_clip, precision"
    assert not paths.teacher_path(config, 0).exists()


def test_a_diverging_meta_model_names_its_settings(tmp_path):
    path, config = setup_pool(tmp_path, {"toy": 6}, conv4_width=4)
    for split, n_classes in (("train", 6), ("val", 3), ("test", 3)):
        save_split(paths.dataset_cache(config, "toy", split), synthetic_split(n_classes, 6, 16, 3, 0))
    for spec in teacher_specs(config):
        fake_checkpoint(spec, paths.teacher_path(config, spec.index), seed=spec.index)
    write_manifest(config)
    config = load_config(path, [
        "meta_train.outer_lr=1e30", "meta_train.n_way=3", "meta_train.n_query=2", "meta_train.meta_batch_size=1",
        "meta_train.iterations=3", "meta_train.val_interval=3", "meta_train.val_episodes=2", "meta_train.init=random",
        "meta_train.meta_model_width=4", "meta_train.grid_snapshots=0", "meta_test.n_way=3",
    ])
    out = tmp_path / "run"
    with pytest.raises(PurerError) as info:
        meta_train(config, "ei", 1, 0, out)
    assert re.fullmatch(rf"meta-training {re.escape(str(out))}: the outer \(query\) loss is not finite at "
                        r"meta-iteration 2; check meta_train\.outer_lr, meta_train\.learner\.inner_lr, "
                        r"meta_train\.learner\.inner_steps", str(info.value)), str(info.value)
    assert not (out / "meta_model.pt").exists() and not (out / "summary.json").exists()


@pytest.mark.parametrize(
    "terms, expected",
    [
        (["ce"], "check meta_train.inversion.data_lr, meta_train.inversion.ce_weight, the teachers' weights"),
        (["tv"], "check meta_train.inversion.data_lr, meta_train.inversion.tv_weight"),
        (["l2"], "check meta_train.inversion.data_lr, meta_train.inversion.l2_weight"),
        (["bn"], "check meta_train.inversion.data_lr, meta_train.inversion.bn_weight, "
                 "meta_train.inversion.first_bn_multiplier, the teachers' weights"),
        (["adv"], "check meta_train.inversion.data_lr, meta_train.curriculum.adv_scale, meta_train.outer_lr"),
        (["the image gradient"], "check meta_train.inversion.data_lr, meta_train.curriculum.adv_scale, precision"),
        (["ce", "tv"], "check meta_train.inversion.data_lr, meta_train.inversion.ce_weight, the teachers' weights, "
                       "meta_train.inversion.tv_weight"),
    ],
)
def test_a_nonfinite_data_loss_names_the_settings_behind_its_terms(terms, expected):
    assert nonfinite_suspects(terms) == expected
