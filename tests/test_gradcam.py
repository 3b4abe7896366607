"""Grad-CAM heat maps, their sanity check, overlays and the explain command."""

import csv
import dataclasses
import html
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import DEMO_DIR, gradient_image, write_mr_dicom
from PIL import Image

from neuropath.cli import main
from neuropath.dataset import load_image
from neuropath.evaluation import evaluate_model
from neuropath.explanation import (
    class_index,
    heatmap_on_original,
    overlay,
    padded_region,
)
from neuropath.gradcam import GradCam, feature_layer_name, normalize_maps
from neuropath.saliency_sanity import (
    RandomisationResult,
    model_randomisation_test,
    randomised_head,
    rank_correlations,
)
from neuropathology_model import BACKBONES, NeuropathologyClassifier

SIZE = 48
TRAIN_PER_CLASS = 120
# A stride-4 layer of the slim MobileNetV2: 12x12 maps at 48 px, where the
# last layer's are 2x2 and too coarse for lesions a few pixels wide.
LOCAL_LAYER = "block_3_expand_relu"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclasses.dataclass
class LesionModel:
    classifier: NeuropathologyClassifier
    path: Path
    class_names: list[str]
    held_out: list[tuple[str, int]]  # (file, class index) of lesion images
    images: np.ndarray  # the held-out images at the model's input
    boxes: np.ndarray  # lesion boxes in input pixels: x0, y0, x1, y1
    box_shares: np.ndarray  # box area / image area, in the original image


def _lesion_boxes() -> dict[str, tuple[int, int, int, int]]:
    with open(DEMO_DIR / "lesions.csv", newline="", encoding="utf-8") as handle:
        return {
            row["path"]: tuple(
                int(row[f"lesion_{k}"]) for k in ("x0", "y0", "x1", "y1")
            )
            for row in csv.DictReader(handle)
            if row["lesion_x0"]
        }


def _box_in_input(box, width: int, height: int) -> tuple[np.ndarray, float]:
    """An inclusive pixel box of the original image, in model input pixels."""
    x0, y0, x1, y1 = box
    top, left, rows, columns = padded_region(height, width, SIZE)
    sx, sy = columns / width, rows / height
    edges = np.array(
        [left + x0 * sx, top + y0 * sy, left + (x1 + 1) * sx, top + (y1 + 1) * sy]
    )
    return edges, (x1 - x0 + 1) * (y1 - y0 + 1) / (width * height)


def _load(files: list[str]) -> np.ndarray:
    return np.stack([load_image(tf.constant(f), SIZE).numpy() for f in files])


@pytest.fixture(scope="module")
def lesion_model(tmp_path_factory) -> LesionModel:
    """A slim MobileNetV2 trained for 12 epochs on five T2 demo classes.

    Glioma, meningioma, neurocytoma, other lesions and normal slices share
    supratentorial slice levels, so the anatomy alone does not tell them
    apart; schwannoma (posterior fossa only) is left out for that reason. The
    first 120 images of each class train the model, from arrays so that the
    order of the batches is seeded; the last 30 of each lesion class are held
    out with their lesion boxes. About a minute on two cores.
    """
    names = sorted(
        p.name
        for p in DEMO_DIR.iterdir()
        if p.name.endswith(" T2") and not p.name.startswith("Schwannoma")
    )
    boxes = _lesion_boxes()
    train_files, train_labels, held_out = [], [], []
    for k, name in enumerate(names):
        files = sorted((DEMO_DIR / name).glob("*.jpg"))
        train_files += [str(f) for f in files[:TRAIN_PER_CLASS]]
        train_labels += [k] * TRAIN_PER_CLASS
        if not name.startswith("NORMAL"):
            held_out += [(str(f), k) for f in files[TRAIN_PER_CLASS:]]

    keras.utils.set_random_seed(0)
    classifier = NeuropathologyClassifier(
        class_names=names,
        weights=None,
        image_size=SIZE,
        dropout_rates=(0.2, 0.1),
        batchnorm_momentum=0.9,
        backbone_options={"alpha": 0.35},
    )
    classifier.compile(3e-3)
    classifier.model.fit(
        _load(train_files),
        keras.utils.to_categorical(train_labels, len(names)),
        batch_size=32,
        epochs=12,
        shuffle=True,
        verbose=0,
    )

    images = _load([f for f, _ in held_out])
    edges, shares = [], []
    for file, _ in held_out:
        with Image.open(file) as image:
            width, height = image.size
        box = boxes[Path(file).relative_to(DEMO_DIR).as_posix()]
        edge, share = _box_in_input(box, width, height)
        edges.append(edge)
        shares.append(share)
    path = classifier.save(tmp_path_factory.mktemp("lesion-model") / "t2.keras")
    return LesionModel(
        classifier, path, names, held_out, images, np.array(edges), np.array(shares)
    )


# ---------------------------------------------------------------------------
# Heat maps
# ---------------------------------------------------------------------------

EXPECTED_LAYERS = {
    "mobilenetv2": "out_relu",
    "efficientnetb0": "top_activation",
    "resnet50": "conv5_block3_out",
    "densenet121": "relu",
}


def test_every_backbone_has_a_known_last_feature_layer():
    assert set(EXPECTED_LAYERS) == set(BACKBONES)
    for backbone, expected in EXPECTED_LAYERS.items():
        classifier = NeuropathologyClassifier(
            weights=None, backbone=backbone, image_size=64
        )
        layer = feature_layer_name(classifier.backbone)
        assert layer == expected, backbone
        cam = GradCam(classifier)
        assert cam.feature_shape == (2, 2)
        images = np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 3))
        result = cam.explain(images)
        assert result.heatmaps.shape == (3, 64, 64), backbone
        np.testing.assert_allclose(
            result.probabilities, classifier.predict(images), atol=1e-5
        )


def test_heatmaps_have_the_input_size_and_lie_between_0_and_1(lesion_model):
    cam = GradCam(lesion_model.classifier, LOCAL_LAYER)
    images = lesion_model.images[:10]
    result = cam.explain(images, batch_size=4)

    assert result.heatmaps.shape == (10, SIZE, SIZE)
    assert result.heatmaps.dtype == np.float32
    assert np.isfinite(result.heatmaps).all()
    assert result.heatmaps.min() >= 0 and result.heatmaps.max() <= 1
    # Each map with any structure spans the whole 0-1 range.
    spans = result.heatmaps.max(axis=(1, 2)) - result.heatmaps.min(axis=(1, 2))
    assert np.all((spans == 0) | (np.abs(spans - 1) < 1e-6))
    assert (spans == 1).sum() >= 8
    predicted = lesion_model.classifier.predict(images).argmax(axis=1)
    np.testing.assert_array_equal(result.class_indices, predicted)
    # Batches of 4 and one batch of 10 give the same maps.
    whole = cam.explain(images, batch_size=32)
    np.testing.assert_allclose(whole.heatmaps, result.heatmaps, atol=1e-4)


def test_a_chosen_class_is_explained_and_changes_the_map(lesion_model):
    cam = GradCam(lesion_model.classifier, LOCAL_LAYER)
    images = lesion_model.images[:6]
    first = cam.explain(images, class_indices=0)
    second = cam.explain(images, class_indices=[3] * 6)
    assert first.class_indices.tolist() == [0] * 6
    assert second.class_indices.tolist() == [3] * 6
    assert np.abs(first.heatmaps - second.heatmaps).max() > 0.1
    with pytest.raises(ValueError, match=r"0\.\.4"):
        cam.explain(images, class_indices=5)


def test_constant_and_empty_maps_normalise_to_zeros_without_nan():
    maps = np.stack(
        [np.zeros((5, 5)), np.full((5, 5), 3.0), np.arange(25.0).reshape(5, 5)]
    )
    maps[2, 0, 0] = np.nan
    scaled = normalize_maps(maps)
    assert np.isfinite(scaled).all()
    assert scaled[0].max() == 0 and scaled[1].max() == 0
    assert scaled[2].min() == 0 and scaled[2].max() == 1


def test_an_unknown_layer_is_refused_with_the_last_layers_named(lesion_model):
    with pytest.raises(ValueError, match="'no_such_layer' is not a layer.*out_relu"):
        GradCam(lesion_model.classifier, "no_such_layer")


def test_lesion_class_maps_peak_inside_the_lesion_box_more_often_than_chance(
    lesion_model,
):
    classes = np.array([k for _, k in lesion_model.held_out])
    right = lesion_model.classifier.predict(lesion_model.images).argmax(1) == classes
    rates, right_rates = {}, {}
    for layer in (LOCAL_LAYER, None):
        maps = (
            GradCam(lesion_model.classifier, layer)
            .explain(lesion_model.images, classes)
            .heatmaps
        )
        rows, columns = np.unravel_index(
            maps.reshape(len(maps), -1).argmax(axis=1), maps.shape[1:]
        )
        x, y = columns + 0.5, rows + 0.5  # pixel centres
        x0, y0, x1, y1 = lesion_model.boxes.T
        hits = (x0 <= x) & (x <= x1) & (y0 <= y) & (y <= y1)
        rates[layer] = float(hits.mean())
        right_rates[layer] = float(hits[right].mean())
    chance = float(lesion_model.box_shares.mean())
    right_chance = float(lesion_model.box_shares[right].mean())
    print(
        f"\nheld-out accuracy {right.mean():.2f}; peak in lesion box: "
        f"{rates[LOCAL_LAYER]:.3f} ({LOCAL_LAYER}), {rates[None]:.3f} (last layer, "
        f"2x2); chance {chance:.3f} over {len(classes)} images; over the "
        f"{right.sum()} classified right: {right_rates[LOCAL_LAYER]:.3f}, chance "
        f"{right_chance:.3f}"
    )
    # Where the model gets the class right, its evidence should be the lesion.
    # This small model's figure moves with any change to its input pixels
    # (0.04-0.21 over all held-out images, seen so far), hence the margin.
    assert right.sum() >= 20
    assert right_rates[LOCAL_LAYER] > 2 * right_chance


# ---------------------------------------------------------------------------
# The model-randomisation check
# ---------------------------------------------------------------------------


def test_randomisation_check_fails_a_map_that_ignores_the_weights(lesion_model):
    def intensity(images, classes):
        return images.mean(axis=-1)

    result = model_randomisation_test(
        lesion_model.classifier, lesion_model.images[:8], saliency=intensity
    )
    assert result.correlations.shape == (8,)
    np.testing.assert_allclose(result.correlations, 1.0)
    assert not result.passed and result.verdict == "fails"


def test_randomisation_check_passes_grad_cam_and_restores_the_weights(lesion_model):
    classifier = lesion_model.classifier
    images = lesion_model.images[::10]
    before = classifier.predict(images)
    result = model_randomisation_test(classifier, images, layer=LOCAL_LAYER)
    print(
        f"\nrank correlations {np.round(result.correlations, 2).tolist()}, "
        f"mean {result.mean:.3f}"
    )
    assert result.correlations.shape == (len(images),)
    assert np.all(np.abs(result.correlations) <= 1)
    assert result.passed and result.mean < 0.5
    np.testing.assert_array_equal(classifier.predict(images), before)


def test_randomised_head_changes_the_predictions_then_restores_them(lesion_model):
    classifier = lesion_model.classifier
    images = lesion_model.images[:4]
    before = classifier.predict(images)
    with randomised_head(classifier, seed=3) as names:
        assert names == ["fc1", "fc2", "output"]
        assert np.abs(classifier.predict(images) - before).max() > 0.05
    np.testing.assert_array_equal(classifier.predict(images), before)


def test_rank_correlation_of_constant_maps():
    ramp = np.arange(16.0).reshape(1, 4, 4)
    flat = np.zeros((1, 4, 4))
    assert rank_correlations(ramp, ramp).tolist() == [1.0]
    assert rank_correlations(ramp, -ramp).tolist() == [-1.0]
    assert rank_correlations(ramp, flat).tolist() == [0.0]
    assert rank_correlations(flat, flat).tolist() == [1.0]


# ---------------------------------------------------------------------------
# Geometry and overlays
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(130, 112), (112, 144), (40, 40)])
def test_padded_region_is_where_resize_with_pad_puts_the_image(height, width):
    ones = np.ones((height, width, 1), np.float32)
    padded = tf.image.resize_with_pad(ones, SIZE, SIZE).numpy()[..., 0]
    rows, columns = np.nonzero(padded > 0.5)
    top, left, n_rows, n_columns = padded_region(height, width, SIZE)
    assert (rows.min(), columns.min()) == (top, left)
    assert (rows.max() + 1, columns.max() + 1) == (top + n_rows, left + n_columns)


def test_heatmap_on_original_drops_the_padding():
    heatmap = np.zeros((SIZE, SIZE), np.float32)
    top, left, rows, columns = padded_region(120, 60, SIZE)
    heatmap[top : top + rows, left : left + columns] = 1.0
    on_image = heatmap_on_original(heatmap, 120, 60)
    assert on_image.shape == (120, 60)
    assert on_image.min() > 0.99  # the padding, all zeros, is gone


def test_overlay_blends_grey_slice_and_colour_map_by_alpha():
    image = gradient_image(20, 30, channels=3)
    heat = np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30)
    assert np.array_equal(overlay(image, heat, alpha=0.0), image)
    full = overlay(image, heat, alpha=1.0)
    assert full.shape == (20, 30, 3) and full.dtype == np.uint8
    assert tuple(full[-1, -1]) == (252, 255, 164)  # inferno's hottest colour
    assert max(full[0, 0]) < 10  # and its coldest, near black
    half = overlay(image, heat, alpha=0.5).astype(int)
    assert np.abs(half - (image.astype(int) + full) / 2).max() <= 1
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, heat, alpha=1.5)


def test_classes_are_found_by_full_or_short_name(lesion_model):
    names = lesion_model.class_names
    assert class_index("glioma t2", names) == 0
    assert class_index(names[3], names) == 3
    with pytest.raises(ValueError, match="Outros T2"):
        class_index("Glioma T1", names)


# ---------------------------------------------------------------------------
# The explain command and the report gallery
# ---------------------------------------------------------------------------


def _inputs(lesion_model, real_sample: Path, folder: Path) -> list[str]:
    """Two demo slices, two real ones, a DICOM, an oddly named copy, a gap."""
    demo = [f for f, _ in lesion_model.held_out[:2]]
    real = [
        str(sorted((real_sample / name).glob("*.jp*g"))[0])
        for name in lesion_model.class_names[:2]
    ]
    pixels = (np.add.outer(np.arange(96), np.arange(80)) * 20 % 4096).astype(np.uint16)
    dicom = write_mr_dicom(folder / "series" / "IM0001", pixels)
    odd = folder / "a <b> & 'c'.jpg"
    shutil.copy(demo[0], odd)
    return [*demo, *real, str(dicom), str(odd), str(folder / "missing.jpg")]


def test_explain_writes_an_overlay_per_image_and_an_index_page(
    lesion_model, real_sample, tmp_path, capsys
):
    inputs = _inputs(lesion_model, real_sample, tmp_path / "in")
    out = tmp_path / "out"
    command = ["explain", str(lesion_model.path), *inputs, "--out", str(out)]
    assert main([*command, "--layer", LOCAL_LAYER, "--sanity", "--alpha", "0.5"]) == 0

    printed = capsys.readouterr().out
    assert "explained 6 of 7 file(s)" in printed
    assert "unreadable: 1" in printed
    assert len(re.findall(r"^\s+rank correlation [+-]\d\.\d\d", printed, re.M)) == 6
    assert re.search(
        r"randomisation check (passes|fails): mean rank correlation", printed
    )

    figures = sorted(out.glob("*.png"))
    assert len(figures) == 6
    for figure in figures:
        assert figure.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(figure) as image:
            assert image.width > 600 and image.height > 300

    page = (out / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'src="([^"]+)"', page)
    assert sorted(links) == sorted(f.name for f in figures)  # relative, no folder
    assert html.escape("a <b> & 'c'.jpg") in page and "<b>" not in page
    assert "missing.jpg" in page and "unreadable" in page
    assert "Model-randomisation check" in page


def test_explain_a_chosen_class_by_short_name(lesion_model, tmp_path, capsys):
    demo = [f for f, _ in lesion_model.held_out[-3:]]
    out = tmp_path / "out"
    command = ["explain", str(lesion_model.path), *demo, "--out", str(out)]
    assert main([*command, "--class", "Meningioma T2"]) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count("Heat map of: Meningioma T2") == 3

    assert main([*command, "--class", "Glioma T1"]) == 2
    assert "Glioma T2" in capsys.readouterr().err


def test_the_report_gallery_shows_an_overlay_beside_each_mistake(
    lesion_model, tmp_path
):
    data = tmp_path / "data"
    for name in lesion_model.class_names:
        for file in sorted((DEMO_DIR / name).glob("*.jpg"))[-6:]:
            (data / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(file, data / name / file.name)
    report, out = evaluate_model(
        lesion_model.path, data, tmp_path / "report", n_resamples=20
    )

    mistakes = report["worst_mistakes"]
    assert mistakes
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('<div class="pair">') == len(mistakes)
    assert page.count('alt="Grad-CAM of ') == len(mistakes)
    with Image.open(out / "mistakes.png") as gallery:
        assert gallery.width > 1000


@pytest.mark.parametrize("correlation, status", [(0.9, 1), (0.1, 0)])
def test_explain_exits_1_when_the_randomisation_check_fails(
    monkeypatch, tmp_path, capsys, correlation, status
):
    def explained(*args, **kwargs):
        return [], RandomisationResult(np.array([correlation]))

    monkeypatch.setattr("neuropath.explanation.explain_files", explained)
    command = ["explain", "model.keras", "a.jpg", "--out", str(tmp_path), "--sanity"]
    assert main(command) == status
    verdict = "fails" if status else "passes"
    assert f"randomisation check {verdict}" in capsys.readouterr().out
