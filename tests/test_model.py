"""The classifier: architecture, training stages, weights and saving."""

import urllib.error

import keras
import numpy as np
import pytest

from neuropathology_model import (
    BACKBONES,
    ImageNetWeightsUnavailableError,
    ModelFileError,
    NeuropathologyClassifier,
    _batchnorm_layers,
)

SIZE = 64


@pytest.fixture(scope="module")
def classifier():
    return NeuropathologyClassifier(weights=None, image_size=SIZE)


def _images(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, SIZE, SIZE, 3)).astype("float32")


def test_head_has_the_documented_layers_and_17_outputs(classifier):
    model = classifier.model
    names = [layer.name for layer in model.layers]
    assert names == [
        "image",
        "preprocessing",
        "backbone",
        "pool",
        "pool_bn",
        "fc1",
        "fc1_dropout",
        "fc2",
        "fc2_bn",
        "fc2_dropout",
        "output",
    ]
    assert model.get_layer("pool").output.shape == (None, 1280)
    assert model.get_layer("fc1").units == 512
    assert model.get_layer("fc2").units == 256
    assert model.get_layer("fc1_dropout").rate == 0.5
    assert model.get_layer("fc2_dropout").rate == 0.3
    assert model.output_shape == (None, 17)
    probabilities = classifier.predict(_images())
    assert probabilities.shape == (4, 17)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "name, features", [("efficientnetb0", 1280), ("resnet50", 2048)]
)
def test_other_backbones_by_name(name, features):
    clf = NeuropathologyClassifier(backbone=name, weights=None, image_size=SIZE)
    assert clf.model.get_layer("pool").output.shape == (None, features)
    assert clf.model.output_shape == (None, 17)


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown backbone 'vgg99'.*mobilenetv2"):
        NeuropathologyClassifier(backbone="vgg99", weights=None)


def test_preprocessing_inside_the_model_matches_the_backbone_function(classifier):
    images = _images()
    inside = classifier.model.get_layer("preprocessing")(images)
    expected = BACKBONES["mobilenetv2"].preprocess(images.copy())
    np.testing.assert_allclose(np.asarray(inside), expected, atol=1e-6)
    assert float(np.min(inside)) >= -1.0 and float(np.max(inside)) <= 1.0


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_frozen_stage_trains_the_head_only():
    clf = NeuropathologyClassifier(weights=None, image_size=SIZE)
    clf.freeze_backbone()
    head = [
        clf.model.get_layer(n) for n in ("pool_bn", "fc1", "fc2", "fc2_bn", "output")
    ]
    assert _trainable_count(clf.model) == sum(_trainable_count(layer) for layer in head)
    # pool_bn 2*1280, fc1 1280*512+512, fc2 512*256+256, fc2_bn 2*256, output 256*17+17
    assert _trainable_count(clf.model) == 2560 + 655872 + 131328 + 512 + 4369


def test_fine_tuning_unfreezes_top_layers_but_keeps_batchnorm_frozen():
    clf = NeuropathologyClassifier(weights=None, image_size=SIZE)
    clf.freeze_backbone()
    head = _trainable_count(clf.model)
    clf.unfreeze_backbone(top_layers=20)
    backbone_layers = clf.backbone.layers
    trainable = [layer for layer in backbone_layers if layer.trainable]
    assert trainable and all(layer in backbone_layers[-20:] for layer in trainable)
    assert not any(
        isinstance(layer, keras.layers.BatchNormalization) for layer in trainable
    )
    assert _trainable_count(clf.model) > head

    clf.unfreeze_backbone(top_layers=None, freeze_batchnorm=False)
    assert all(layer.trainable for layer in backbone_layers)


def test_frozen_batchnorm_stays_in_inference_mode_while_training():
    clf = NeuropathologyClassifier(weights=None, image_size=SIZE)
    clf.unfreeze_backbone(top_layers=None, freeze_batchnorm=True)
    bn = next(
        layer
        for layer in clf.backbone.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    before = keras.ops.convert_to_numpy(bn.moving_mean)
    clf.compile(1e-3)
    clf.model.fit(_images(8), np.eye(17)[np.arange(8)], epochs=1, verbose=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_mean), before)


def test_batchnorm_momentum_reaches_every_batchnorm_layer():
    clf = NeuropathologyClassifier(
        weights=None, image_size=SIZE, batchnorm_momentum=0.9
    )
    layers = _batchnorm_layers(clf.model)
    assert len(layers) == 2 + len(_batchnorm_layers(clf.backbone)) > 30
    assert {layer.momentum for layer in layers} == {0.9}


def test_save_and_load_round_trip_gives_identical_predictions(classifier, tmp_path):
    images = _images(6, seed=1)
    expected = classifier.predict(images)
    path = classifier.save(tmp_path / "model.keras", extra={"config": {"name": "t"}})
    loaded = NeuropathologyClassifier.load(path)
    np.testing.assert_array_equal(loaded.predict(images), expected)
    assert loaded.class_names == classifier.class_names
    assert loaded.image_size == SIZE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]
    assert path.stat().st_mode & 0o044 == 0o044  # readable by others, as usual


def test_loading_a_file_that_is_not_a_neuropath_model_fails_clearly(tmp_path):
    plain = tmp_path / "plain.keras"
    keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save(plain)
    with pytest.raises(ModelFileError, match="not a model saved by neuropath"):
        NeuropathologyClassifier.load(plain)
    with pytest.raises(ModelFileError, match="does not exist"):
        NeuropathologyClassifier.load(tmp_path / "missing.keras")


def test_local_weights_file_is_loaded_into_the_backbone(tmp_path):
    source = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
    )
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    clf = NeuropathologyClassifier(weights=path, image_size=SIZE)
    for ours, theirs in zip(clf.backbone.weights, source.weights, strict=True):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs)
        )


def test_missing_weights_file_is_named():
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        NeuropathologyClassifier(weights="nowhere.h5", image_size=SIZE)


def test_imagenet_offline_fails_with_one_actionable_message(monkeypatch, tmp_path):
    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(keras_config, "keras_home", lambda: str(tmp_path))
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(ImageNetWeightsUnavailableError) as info:
        NeuropathologyClassifier(weights="imagenet", image_size=96)
    message = str(info.value)
    assert "model.weights=PATH" in message and "model.weights=null" in message
    assert info.value.__cause__ is None


def test_test_time_flip_averages_the_image_and_its_mirror(tmp_path):
    flipping = NeuropathologyClassifier(
        weights=None, image_size=SIZE, test_time_flip=True
    )
    path = flipping.save(tmp_path / "flip.keras")
    loaded = NeuropathologyClassifier.load(path)
    assert loaded.settings["test_time_flip"] is True

    # A fresh MobileNetV2 predicts about 1/17 for any image, mirrored or not;
    # a dense layer on the raw pixels tells an image from its mirror image.
    loaded.model = keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(
                17, activation="softmax", kernel_initializer="he_normal"
            ),
        ]
    )
    images = _images(5, seed=3)
    plain = loaded.model.predict(images, verbose=0)
    mirrored = loaded.model.predict(images[:, :, ::-1, :].copy(), verbose=0)
    assert not np.allclose(plain, mirrored, atol=1e-3)
    expected = (plain + mirrored) / 2
    np.testing.assert_allclose(loaded.probabilities(images), expected, rtol=1e-5)
    np.testing.assert_allclose(loaded.predict(images, batch_size=2), expected, 1e-5)

    # A mirror-symmetric image is left as it is.
    half = SIZE // 2
    symmetric = np.concatenate([images[:, :, :half], images[:, :, half - 1 :: -1]], 2)
    np.testing.assert_allclose(
        loaded.predict(symmetric), loaded.model.predict(symmetric, verbose=0), 1e-5
    )


def test_without_test_time_flip_predictions_are_the_model_outputs(classifier):
    images = _images(3, seed=4)
    assert classifier.settings["test_time_flip"] is False
    np.testing.assert_allclose(
        classifier.predict(images), classifier.model.predict(images, verbose=0), 1e-5
    )
