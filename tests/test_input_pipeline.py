"""The training pipeline's streaming shuffle and the benchmark's loaders."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import gradient_image, save_image

from neuropath.dataset import make_dataset
from neuropath.pipeline_benchmark import (
    NaiveLoader,
    decode_bound_dataset,
    images_per_second,
    interleaved_rates,
    naive_batches,
    repeat_to,
    round_ratios,
)


@pytest.fixture
def numbered_images(tmp_path):
    """Twelve PNGs whose pixels all equal their number times 10."""
    return [
        save_image(tmp_path / f"{i}.png", np.full((40, 36), i * 10, np.uint8))
        for i in range(12)
    ]


def _numbers(dataset) -> list[int]:
    images = np.concatenate([batch[0].numpy() for batch in dataset])
    return [int(round(image.max() / 10)) for image in images]


@pytest.mark.parametrize("cache", [None, "memory"])
def test_training_epochs_hold_every_image_once_in_a_new_order(numbered_images, cache):
    dataset = make_dataset(
        numbered_images, list(range(12)), 17, 32, 5, training=True, cache=cache
    )
    first, second = _numbers(dataset), _numbers(dataset)
    assert sorted(first) == sorted(second) == list(range(12))
    assert first != second


def test_evaluation_keeps_the_file_order(numbered_images):
    dataset = make_dataset(numbered_images, list(range(12)), 17, 32, 5)
    assert _numbers(dataset) == list(range(12))


def test_repeat_to_cycles_in_order():
    assert repeat_to(["a", "b", "c"], 7) == ["a", "b", "c", "a", "b", "c", "a"]
    with pytest.raises(ValueError, match="empty"):
        repeat_to([], 3)


def test_measurements_take_turns_round_by_round():
    calls = []

    def measure(key):
        def rate():
            calls.append(key)
            return float(len(calls))

        return rate

    rates = interleaved_rates({"bound": measure("bound"), "aug": measure("aug")}, 3)

    assert calls == ["bound", "aug"] * 3
    assert rates == {"bound": [1.0, 3.0, 5.0], "aug": [2.0, 4.0, 6.0]}


def test_round_ratios_divide_by_the_fastest_comparison_of_the_same_round():
    pipeline = [600.0, 900.0, 700.0]
    bound, bound_full = [1000.0, 1500.0, 1000.0], [1200.0, 1000.0, 800.0]

    ratios = round_ratios(pipeline, [bound, bound_full])

    assert ratios == pytest.approx([0.5, 0.6, 0.7])
    with pytest.raises(ValueError, match="3 rounds"):
        round_ratios(pipeline, [bound, [1.0, 2.0]])


def test_decode_bound_and_naive_loader_yield_the_pipeline_images(tmp_path):
    path = save_image(tmp_path / "ramp.jpg", gradient_image(120, 80, 3))
    paths = repeat_to([str(path)], 10)
    bound = np.concatenate([b[0].numpy() for b in decode_bound_dataset(paths, 48, 4)])
    full = np.concatenate(
        [b[0].numpy() for b in decode_bound_dataset(paths, 48, 4, full_size=True)]
    )
    labels = np.eye(17, dtype="float32")[[0] * 10]
    loader = NaiveLoader(paths, labels, 48, 4)
    naive = np.concatenate([images for images, _ in naive_batches(loader, 2)])
    assert bound.shape == full.shape == naive.shape == (10, 48, 48, 3)
    # Three ways of decoding and resizing the same picture agree closely.
    assert np.abs(bound - full).mean() < 8 and np.abs(naive - full).mean() < 8

    augmented = NaiveLoader(paths, labels, 48, 4, augment=True, seed=1)
    changed = np.concatenate([images for images, _ in naive_batches(augmented)])
    assert changed.shape == naive.shape and np.abs(changed - naive).mean() > 1
    assert images_per_second(naive_batches(loader)) > 0


def test_the_naive_loaders_numpy_and_pillow_augmentations_agree(tmp_path):
    path = save_image(tmp_path / "ramp.png", gradient_image(96, 96, 3))
    paths = repeat_to([str(path)], 8)
    labels = np.eye(17, dtype="float32")[[0] * 8]

    def images(**options):
        loader = NaiveLoader(
            paths, labels, 64, 8, rotation_degrees=25, zoom=0, **options
        )
        return loader[0][0]

    plain = images()
    numpy_way = images(augment=True, seed=2, augment_with="numpy")
    pillow_way = images(augment=True, seed=2, augment_with="pillow")
    # Same draws, same flip and rotation: the two resamplings differ by
    # interpolation round-off, far less than either differs from the input.
    inside = (slice(None), slice(12, 52), slice(12, 52))
    gap = np.abs(numpy_way - pillow_way)[inside].mean()
    assert gap < 3 and np.abs(numpy_way - plain)[inside].mean() > 5 * gap
    with pytest.raises(ValueError, match="augment_with"):
        NaiveLoader(paths, labels, 64, 8, augment_with="opencv")
