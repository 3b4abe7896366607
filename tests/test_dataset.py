"""Data set scanning, splitting, manifests, decoding and class weights."""

import unicodedata
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
from conftest import gradient_image, save_image

from neuropath.classes import CLASS_NAMES
from neuropath.dataset import (
    Record,
    class_weights,
    load_image,
    make_augmentation,
    make_dataset,
    read_manifest,
    scan_dataset,
    split_records,
    write_manifest,
)

OUTROS_T1 = CLASS_NAMES[11]


def test_scan_of_real_sample_finds_14_classes_and_names_the_missing(real_sample):
    scan = scan_dataset(real_sample)
    counts = scan.counts()
    assert len(scan.records) == 112
    assert len(counts) == 14 and set(counts.values()) == {8}
    assert scan.missing_classes == [n for n in CLASS_NAMES if n.startswith("Outros")]
    assert scan.unusable == [] and scan.unknown_folders == []


def test_scan_matches_nfd_folders_skips_hidden_and_reads_nested(tmp_path):
    nfd = unicodedata.normalize("NFD", OUTROS_T1)
    save_image(tmp_path / nfd / "a.png", gradient_image(40, 50))
    save_image(tmp_path / nfd / "nested" / "b.JPG", gradient_image(40, 40, 3))
    save_image(tmp_path / nfd / ".hidden.png", gradient_image(8, 8))
    (tmp_path / nfd / "notes.txt").write_text("not an image")
    save_image(tmp_path / "Unrelated" / "c.png", gradient_image(8, 8))
    (tmp_path / "NORMAL T1").mkdir()

    scan = scan_dataset(tmp_path)

    assert [(r.class_name, r.path.split("/", 1)[1]) for r in scan.records] == [
        (OUTROS_T1, "a.png"),
        (OUTROS_T1, "nested/b.JPG"),
    ]
    assert scan.unknown_folders == ["Unrelated"]
    assert "NORMAL T1" in scan.missing_classes and len(scan.missing_classes) == 16


def test_scan_leaves_out_broken_files_with_their_reason(tmp_path):
    folder = tmp_path / "NORMAL T2"
    good = save_image(folder / "good.jpg", gradient_image(64, 64))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a JPEG")
    (folder / "truncated.jpg").write_bytes(good.read_bytes()[:300])

    scan = scan_dataset(tmp_path)

    assert [r.path for r in scan.records] == ["NORMAL T2/good.jpg"]
    reasons = dict(scan.unusable)
    assert reasons["NORMAL T2/empty.jpg"] == "empty file"
    assert reasons["NORMAL T2/text.jpg"] == "not an image (text/unknown format)"
    assert "truncated" in reasons["NORMAL T2/truncated.jpg"].lower()


def _records(per_class):
    return [
        Record(f"{name}/{i}.png", name)
        for name, n in zip(CLASS_NAMES, per_class, strict=False)
        for i in range(n)
    ]


def test_split_is_stratified_at_70_15_15():
    records = _records([40] * 17)
    split = split_records(records, 0.15, 0.15, seed=1)
    for name in CLASS_NAMES:
        counts = Counter(r.split for r in split if r.class_name == name)
        assert counts == {"train": 28, "val": 6, "test": 6}


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    records = _records([10, 25, 7, 3])
    first = split_records(records, seed=7)
    assert first == split_records(records, seed=7)
    assert first != split_records(records, seed=8)
    assert [r.path for r in first] == [r.path for r in records]


def test_small_classes_keep_one_image_in_every_split_and_one_to_train():
    split = split_records(_records([3, 2, 1]), 0.15, 0.15, seed=0)
    by_class = {}
    for r in split:
        by_class.setdefault(r.class_name, Counter())[r.split] += 1
    assert by_class[CLASS_NAMES[0]] == {"train": 1, "val": 1, "test": 1}
    assert by_class[CLASS_NAMES[1]]["train"] >= 1
    assert by_class[CLASS_NAMES[2]] == {"train": 1}


def test_manifest_round_trips_with_labels_in_model_order(tmp_path):
    records = split_records(_records([5, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4]), seed=3)
    path = write_manifest(records, tmp_path / "split_manifest.csv", CLASS_NAMES)
    assert read_manifest(path) == records
    rows = path.read_text(encoding="utf-8").splitlines()
    assert rows[0] == "path,class_name,label,split,duplicate_group"
    assert any(row.split(",")[-3] == "11" for row in rows if "Lesões" in row)


def test_manifest_with_unknown_class_names_the_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,class_name,label,split\na.png,NORMAL T3,0,test\n")
    with pytest.raises(ValueError, match="line 2.*NORMAL T3"):
        read_manifest(path)


@pytest.mark.parametrize(
    "name, array",
    [
        ("grey.png", gradient_image(300, 200)),
        ("rgb.jpg", gradient_image(200, 300, 3)),
        # Opaque: transparency is composited on black (tests/test_bad_inputs.py).
        (
            "rgba.png",
            np.dstack([gradient_image(50, 50, 3), np.full((50, 50), 255, np.uint8)]),
        ),
        ("grey.tif", gradient_image(120, 90)),
        ("rgb.webp", gradient_image(64, 64, 3)),
        ("grey.bmp", gradient_image(33, 77)),
    ],
)
def test_images_of_any_format_become_square_rgb(tmp_path, name, array):
    path = save_image(tmp_path / name, array)
    image = load_image(str(path), 64).numpy()
    assert image.shape == (64, 64, 3) and image.dtype == np.float32
    assert 0 <= image.min() and image.max() <= 255 and image.max() > 50
    if array.ndim == 2:
        assert np.array_equal(image[..., 0], image[..., 1])


def test_non_square_images_are_padded_not_stretched(tmp_path):
    wide = np.full((100, 200), 200, dtype=np.uint8)
    image = load_image(str(save_image(tmp_path / "wide.png", wide)), 100).numpy()
    # The 2:1 slice fills the middle half of the rows; the rest is black.
    assert image[:20].max() == 0 and image[-20:].max() == 0
    assert image[30:70].min() > 190


def test_dataset_batches_one_hot_labels_and_drops_undecodable_files(tmp_path):
    paths = [
        save_image(tmp_path / f"{i}.png", gradient_image(40, 40)) for i in range(5)
    ]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    dataset = make_dataset(
        [*paths, broken], [0, 1, 2, 3, 4, 5], n_classes=17, image_size=32, batch_size=4
    )
    batches = list(dataset)
    images = np.concatenate([b[0].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches])
    assert images.shape == (5, 32, 32, 3)
    assert labels.shape == (5, 17)
    assert labels.argmax(axis=1).tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("training", [False, True])
def test_an_image_too_thin_to_resize_is_dropped_not_fed_as_nan(tmp_path, training):
    # 32 x 8000 pixels: resized to 48 px its 32 rows would round to none.
    thin = save_image(tmp_path / "thin.png", gradient_image(32, 8000))
    # 64 x 3000, a JPEG decoded at 1/8 scale to 8 x 375: its rows resize to 1.
    barely = save_image(tmp_path / "barely.jpg", gradient_image(64, 3000))
    fine = save_image(tmp_path / "fine.png", gradient_image(40, 40))
    dataset = make_dataset(
        [thin, barely, fine],
        [0, 1, 2],
        n_classes=17,
        image_size=48,
        batch_size=4,
        training=training,
        augmentation=make_augmentation(seed=1) if training else None,
    )
    images, labels = next(iter(dataset))
    assert sorted(labels.numpy().argmax(axis=1).tolist()) == [1, 2]
    assert np.isfinite(images.numpy()).all()
    with pytest.raises(tf.errors.InvalidArgumentError, match="thin.png"):
        load_image(tf.constant(str(thin)), 48)


@pytest.mark.parametrize("cache", [None, "memory"])
def test_augmentation_changes_training_images_but_keeps_shape(tmp_path, cache):
    # Uncached, the augmentation is part of each image's resize; cached, it
    # warps the batches read from the cache.
    paths = [save_image(tmp_path / "a.png", gradient_image(64, 64))]
    plain = make_dataset(paths, [0], 17, 48, 1)
    augmented = make_dataset(
        paths,
        [0],
        17,
        48,
        1,
        training=True,
        augmentation=make_augmentation(seed=1),
        cache=cache,
    )
    a = next(iter(plain))[0].numpy()
    b = next(iter(augmented))[0].numpy()
    assert a.shape == b.shape == (1, 48, 48, 3)
    assert np.abs(a - b).mean() > 1.0


def test_balanced_class_weights_follow_inverse_frequency():
    weights = class_weights([0, 0, 0, 1], n_classes=3)
    assert weights[0] == pytest.approx(4 / (2 * 3))
    assert weights[1] == pytest.approx(4 / (2 * 1))
    assert weights[2] == 1.0
