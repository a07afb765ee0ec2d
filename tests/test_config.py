"""Config strictness: unknown keys, wrong types and impossible values name the key."""

import pytest

from purer.config import ExperimentConfig, load_config, to_dict
from purer.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_load():
    config = load_config(None)
    assert isinstance(config, ExperimentConfig)
    assert config.meta_train.inversion.data_lr == 0.25
    assert config.meta_train.curriculum.patience == 6


def test_yaml_values_and_override(tmp_path):
    path = write(tmp_path, "seed: 7\nmeta_train:\n  outer_lr: 0.002\n")
    config = load_config(path, ["meta_train.learner.inner_steps=5", "pool.milestones=[1, 2]"])
    assert config.seed == 7
    assert config.meta_train.outer_lr == 0.002
    assert config.meta_train.learner.inner_steps == 5
    assert config.pool.milestones == (1, 2)


def test_config_is_frozen():
    config = load_config(None)
    with pytest.raises(AttributeError):
        config.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("meta_train:\n  outer_lrr: 0.1\n", "unknown key meta_train.outer_lrr"),
        ("bogus: 1\n", "unknown key bogus"),
        ("pool:\n  epochs: ten\n", "pool.epochs: expected an integer"),
        ("meta_train:\n  outer_lr: -1\n", "meta_train.outer_lr: expected a positive number"),
        ("meta_train:\n  learner:\n    algorithm: reptile\n", "meta_train.learner.algorithm: expected one of"),
        ("meta_test:\n  n_way: 1\n", "meta_test.n_way: expected at least 2"),
        ("grid:\n  shots: [0]\n", "grid.shots: expected values of at least 1"),
        ("pool:\n  datasets: [nope]\n", "dataset 'nope' is used but not defined"),
        ("datasets:\n  glyphs:\n    channels: 2\n", "datasets.glyphs.channels: expected 1, 3 or null"),
        ("meta_test:\n  icfil:\n    temperature: 0\n", "meta_test.icfil.temperature"),
        ("device: tpu\n", "device: expected cpu or cuda"),
        ("pool:\n  channels_last: true\n", "unknown key pool.channels_last"),
        ("pool:\n  partition: overlapping\n", "pool.n_teachers"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_bool_is_not_an_int(tmp_path):
    with pytest.raises(ConfigError, match="pool.epochs: expected an integer"):
        load_config(write(tmp_path, "pool:\n  epochs: true\n"))


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["meta_train.outer_lr"])


def test_round_trip_through_dict(tmp_path):
    import yaml

    config = load_config(None, ["meta_train.iterations=12"])
    path = write(tmp_path, yaml.safe_dump(to_dict(config)))
    assert load_config(path) == config
