"""Config loading: defaults, YAML files, overrides and the errors they raise."""

from pathlib import Path

import pytest

from neuropath.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["demo", "mobilenetv2", "efficientnetb0"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.name == name
    assert config.model.dense_units == [512, 256]


def test_gpu_configs_use_imagenet_at_224_and_two_stages():
    for name in ("mobilenetv2", "efficientnetb0"):
        config = load_config(CONFIGS / f"{name}.yaml")
        assert config.model.backbone == name
        assert config.model.weights == "imagenet"
        assert config.data.image_size == 224 and config.train.batch_size == 32
        assert config.train.frozen.epochs > 0 and config.train.fine_tune.epochs > 0
        assert config.train.fine_tune.freeze_batchnorm
        assert config.train.fine_tune.learning_rate < config.train.frozen.learning_rate


def test_overrides_reach_nested_keys_and_parse_yaml_values():
    config = load_config(
        CONFIGS / "demo.yaml",
        [
            "train.fine_tune.epochs=3",
            "model.weights=null",
            "train.frozen.learning_rate=1e-4",
            "model.dense_units=[64, 32]",
        ],
    )
    assert config.train.fine_tune.epochs == 3
    assert config.model.weights is None
    assert config.train.frozen.learning_rate == pytest.approx(1e-4)
    assert config.model.dense_units == [64, 32]


def test_unknown_key_error_names_the_key_and_the_accepted_ones():
    with pytest.raises(ValueError, match=r"train\.epochs.*accepts.*batch_size"):
        load_config(None, ["train.epochs=3"])


def test_wrong_type_error_names_key_and_value():
    with pytest.raises(ValueError, match=r"data\.image_size.*'big'"):
        load_config(None, ["data.image_size=big"])


def test_inconsistent_fractions_and_empty_training_are_refused():
    with pytest.raises(ValueError, match="leave images to train"):
        load_config(None, ["data.val_fraction=0.5", "data.test_fraction=0.5"])
    with pytest.raises(ValueError, match="nothing to train"):
        load_config(None, ["train.frozen.epochs=0", "train.fine_tune.epochs=0"])


def test_malformed_override_is_refused():
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(None, ["train.batch_size"])
