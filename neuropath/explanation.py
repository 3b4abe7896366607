"""Grad-CAM explanations of image files: overlay figures and an index page.

An *overlay* is the slice in grey with the heat map blended over it in a
perceptually uniform colour map; the heat map, computed on the padded square
the model sees, is cropped back to the slice's own shape first. Inputs are
read as by ``neuropath predict``: files, folders, glob patterns, DICOM.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
import tensorflow as tf

from neuropath.classes import normalize_name, short_name
from neuropath.gradcam import GradCam
from neuropath.prediction import TOP_K, _try_read, expand_inputs
from neuropath.saliency_sanity import RandomisationResult, model_randomisation_test

__all__ = [
    "COLOUR_MAP",
    "Explanation",
    "class_index",
    "explain_files",
    "heatmap_on_original",
    "overlay",
    "overlay_thumbnails",
    "padded_region",
    "read_original",
    "write_index",
]

logger = logging.getLogger(__name__)

COLOUR_MAP = "inferno"
DPI = 110


@dataclasses.dataclass
class Explanation:
    """One input file's explanation.

    Attributes:
        path: the file, as found from the inputs.
        figure: the overlay PNG's name inside the output folder; empty when
            the file could not be read.
        top_classes: the top classes and their probabilities, most probable
            first.
        explained_class: the class whose evidence the heat map shows.
        correlation: the randomisation test's rank correlation, if run.
        error: why the file could not be read; empty otherwise.
    """

    path: str
    figure: str = ""
    top_classes: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    explained_class: str = ""
    correlation: float | None = None
    error: str = ""


def padded_region(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """Where ``tf.image.resize_with_pad`` puts an image in the square input.

    Args:
        height: the image's rows.
        width: the image's columns.
        size: side of the square model input.

    Returns:
        ``(top, left, rows, columns)`` of the resized image in the square.
    """
    ratio = max(width / size, height / size)
    rows, columns = int(np.floor(height / ratio)), int(np.floor(width / ratio))
    top = max(0, int(np.floor((size - height / ratio) / 2)))
    left = max(0, int(np.floor((size - width / ratio) / 2)))
    return top, left, rows, columns


def heatmap_on_original(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Crops the padding off a square heat map and resizes it to an image.

    Args:
        heatmap: shape ``(size, size)``, at the model input.
        height: rows of the image to overlay.
        width: columns of the image to overlay.

    Returns:
        float32 in [0, 1], shape ``(height, width)``.
    """
    top, left, rows, columns = padded_region(height, width, heatmap.shape[0])
    crop = heatmap[top : top + rows, left : left + columns, None]
    resized = tf.image.resize(crop, (height, width)).numpy()[..., 0]
    return np.clip(resized, 0.0, 1.0).astype(np.float32)


def overlay(
    image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, cmap: str = COLOUR_MAP
) -> np.ndarray:
    """The slice in grey with the coloured heat map blended over it.

    Args:
        image: RGB or greyscale pixels in 0-255, shape ``(h, w, 3)`` or
            ``(h, w)``.
        heatmap: values in [0, 1], shape ``(h, w)``.
        alpha: opacity of the heat map, from 0 (slice only) to 1 (heat map
            only); 0.4 by default.
        cmap: a matplotlib colour map name; ``"inferno"`` by default.

    Returns:
        uint8 RGB pixels, shape ``(h, w, 3)``.
    """
    import matplotlib

    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha (--alpha) must lie in [0, 1]; received {alpha}.")
    image = np.asarray(image, dtype=np.float32)
    grey = image.mean(axis=-1) if image.ndim == 3 else image
    if grey.shape != heatmap.shape:
        raise ValueError(
            f"The heat map's shape {heatmap.shape} differs from the image's "
            f"{grey.shape}; resize it with heatmap_on_original first."
        )
    colour = matplotlib.colormaps[cmap](np.clip(heatmap, 0, 1))[..., :3] * 255
    blended = (1 - alpha) * grey[..., None] + alpha * colour
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def read_original(path: str | os.PathLike) -> np.ndarray:
    """An image or DICOM file's pixels at its own size, as uint8 RGB."""
    from PIL import Image

    from neuropath.dicom import is_dicom, read_dicom_slice

    if is_dicom(path):
        return read_dicom_slice(path)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def class_index(name: str, class_names: Sequence[str]) -> int:
    """The index of a class given by its full or short name (``Glioma T2``).

    Raises:
        ValueError: the model has no such class.
    """
    wanted = normalize_name(name).casefold()
    for k, candidate in enumerate(class_names):
        if wanted in (
            normalize_name(candidate).casefold(),
            short_name(candidate).casefold(),
        ):
            return k
    raise ValueError(
        f"--class {name!r} is not one of the model's classes; use a full name or "
        f"a short one: {[short_name(n) for n in class_names]}."
    )


def _figure_name(number: int, path: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem).strip("._") or "image"
    return f"{number:04d}_{stem[:80]}.png"


def _caption(top: Sequence[tuple[str, float]]) -> str:
    return "   ".join(f"{short_name(n)} {100 * p:.1f}%" for n, p in top)


def render_figure(
    path: str | os.PathLike,
    image: np.ndarray,
    heatmap: np.ndarray,
    explanation: Explanation,
    alpha: float = 0.4,
) -> Path:
    """Draws the slice beside its overlay, the top classes as caption.

    Args:
        path: the PNG to write.
        image: the slice, RGB pixels in 0-255 at its own size.
        heatmap: values in [0, 1] at the same size.
        explanation: supplies the title, explained class and top classes.
        alpha: opacity of the heat map.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = heatmap.shape
    side = 3.6  # inches per panel along the longer image side
    panel = (side * width / max(height, width), side * height / max(height, width))
    figure, (left, right, bar) = plt.subplots(
        1,
        3,
        figsize=(2 * panel[0] + 0.9, panel[1] + 1.1),
        width_ratios=[panel[0], panel[0], 0.12],
        layout="constrained",
    )
    grey = np.asarray(image, dtype=np.float32)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    left.imshow(grey, cmap="gray", vmin=0, vmax=255)
    left.set_title("Slice", fontsize=10)
    right.imshow(overlay(image, heatmap, alpha))
    right.set_title(
        f"Evidence for {short_name(explanation.explained_class)}", fontsize=10
    )
    for axes in (left, right):
        axes.axis("off")
    # The overlay is plain RGB: the colour bar needs its own 0-1 mappable.
    scale = plt.cm.ScalarMappable(cmap=COLOUR_MAP, norm=plt.Normalize(0, 1))
    figure.colorbar(scale, cax=bar, label="Grad-CAM")
    figure.suptitle(Path(explanation.path).name, fontsize=10)
    figure.supxlabel(_caption(explanation.top_classes), fontsize=10)
    figure.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(figure)
    return Path(path)


_PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #18181b; }
.grid { display: grid; grid-template-columns: repeat(auto-fill,
  minmax(420px, 1fr)); gap: 16px; }
.card { border: 1px solid #e4e4e7; padding: 8px; font-size: 0.9em; }
.card img { width: 100%; height: auto; }
.path { color: #71717a; word-break: break-all; }
.error { color: #b91c1c; }
"""


def _sanity_html(sanity: RandomisationResult | None) -> str:
    if sanity is None:
        return ""
    return (
        f"<p><strong>Model-randomisation check {sanity.verdict}</strong>: mean "
        f"rank correlation {sanity.mean:.2f} between the heat maps of the "
        "trained model and of the same model with its head re-initialised "
        f"(threshold {sanity.threshold:.2f}). Low values mean the maps depend "
        "on what the model learnt; values near 1 mean they merely show the "
        "image, and explain nothing.</p>"
    )


def _card_html(item: Explanation) -> str:
    name = html.escape(item.path)
    if item.error:
        return (
            f'<div class="card"><div class="path">{name}</div>'
            f'<div class="error">unreadable: {html.escape(item.error)}</div></div>'
        )
    lines = [
        f'<a href="{quote(item.figure)}"><img src="{quote(item.figure)}" '
        f'alt="{name}"></a>',
        f'<div class="path">{name}</div>',
        "<div>"
        + ", ".join(
            f"{html.escape(short_name(n))} {100 * p:.1f}%" for n, p in item.top_classes
        )
        + "</div>",
        f"<div>Heat map of: {html.escape(short_name(item.explained_class))}</div>",
    ]
    if item.correlation is not None:
        lines.append(
            f"<div>Randomisation rank correlation: {item.correlation:.2f}</div>"
        )
    return f'<div class="card">{"".join(lines)}</div>'


def write_index(
    out_dir: str | os.PathLike,
    explanations: Sequence[Explanation],
    sanity: RandomisationResult | None = None,
) -> Path:
    """Writes ``index.html``: every figure, linked by its relative name.

    Args:
        out_dir: the folder holding the figures.
        explanations: one per input file, unreadable ones included.
        sanity: the randomisation test's result, if it was run.

    Returns:
        The page's path.
    """
    cards = "".join(_card_html(item) for item in explanations)
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Grad-CAM explanations</title><style>{_PAGE_STYLE}</style>"
        "</head><body><h1>Grad-CAM explanations</h1>"
        "<p>Bright colours mark the regions whose features raised the score of "
        "the class named under each image. Not for diagnosis.</p>"
        f'{_sanity_html(sanity)}<div class="grid">{cards}</div></body></html>\n'
    )
    path = Path(out_dir) / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _top_classes(
    probabilities: np.ndarray, class_names: Sequence[str]
) -> list[tuple[str, float]]:
    order = np.argsort(-probabilities, kind="stable")[:TOP_K]
    return [(class_names[k], float(probabilities[k])) for k in order]


def _draw(
    out_dir: Path,
    item: Explanation,
    model_input: np.ndarray,
    heatmap: np.ndarray,
    alpha: float,
) -> None:
    """Draws one figure on the file at its own size."""
    try:
        original = read_original(item.path)
    except (OSError, ValueError) as err:
        # The model could read it; fall back to the model's own view of it.
        logger.warning("Drawing %s at the model's size: %s", item.path, err)
        original = np.round(model_input).astype(np.uint8)
    on_original = heatmap_on_original(heatmap, *original.shape[:2])
    render_figure(out_dir / item.figure, original, on_original, item, alpha)


def explain_files(
    model_path: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    class_name: str | None = None,
    layer: str | None = None,
    alpha: float = 0.4,
    sanity: bool = False,
    batch_size: int = 32,
) -> tuple[list[Explanation], RandomisationResult | None]:
    """Explains every input file into overlay PNGs and ``index.html``.

    Args:
        model_path: a ``.keras`` file saved by neuropath.
        inputs: files, folders and glob patterns, as for ``predict``.
        out_dir: the folder for the figures and the page (created).
        class_name: the class to explain (full or short name); each image's
            predicted class by default.
        layer: the backbone layer to explain; its last 4-D one by default.
        alpha: opacity of the heat map over the slice; 0.4 by default.
        sanity: also run the model-randomisation test on the images.
        batch_size: images per gradient pass.

    Returns:
        One `Explanation` per file, and the randomisation result or ``None``.

    Raises:
        ValueError: no input file, an unknown class or layer, a bad alpha.
    """
    from neuropathology_model import NeuropathologyClassifier

    if not 0 <= alpha <= 1:
        raise ValueError(f"--alpha must lie in [0, 1]; received {alpha}.")
    paths = expand_inputs(inputs)
    if not paths:
        raise ValueError(
            f"No image or DICOM file found in {list(map(str, inputs))}; pass "
            "files, folders or glob patterns such as 'scans/*.dcm'."
        )
    classifier = NeuropathologyClassifier.load(model_path)
    names = list(classifier.class_names)
    chosen = None if class_name is None else class_index(class_name, names)
    cam = GradCam(classifier, layer)
    if min(cam.feature_shape) < 4:
        logger.warning(
            "Layer %r gives %dx%d feature maps at %d px: the heat maps will be "
            "coarse. Pass an earlier layer with --layer for more detail.",
            cam.layer,
            *cam.feature_shape,
            classifier.image_size,
        )

    # Limitation: every readable input is held in memory at once, which suits
    # the handful of slices one inspects; thousands would need chunking here.
    loaded = [_try_read(p, classifier.image_size) for p in paths]
    readable = [k for k, (image, _) in enumerate(loaded) if image is not None]
    images = np.stack([loaded[k][0] for k in readable]) if readable else None
    logger.info("Explaining %d file(s) with Grad-CAM on %s", len(readable), cam.layer)
    if readable:
        # The classes and probabilities shown are those `predict` gives (mirror
        # averaging included); the map explains the class shown first.
        probabilities = classifier.predict(images, batch_size)
        targets = probabilities.argmax(axis=1) if chosen is None else chosen
        result = cam.explain(images, targets, batch_size)

    sanity_result = None
    if sanity and readable:
        sanity_result = model_randomisation_test(
            classifier,
            images,
            layer=cam.layer,
            batch_size=batch_size,
            class_indices=result.class_indices,
        )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    explanations = [
        Explanation(p, error=error) for p, (_, error) in zip(paths, loaded, strict=True)
    ]
    for row, k in enumerate(readable):
        item = explanations[k]
        item.top_classes = _top_classes(probabilities[row], names)
        item.explained_class = names[result.class_indices[row]]
        if sanity_result is not None:
            item.correlation = float(sanity_result.correlations[row])
        item.figure = _figure_name(k + 1, item.path)
        _draw(out_dir, item, images[row], result.heatmaps[row], alpha)
    write_index(out_dir, explanations, sanity_result)
    return explanations, sanity_result


def overlay_thumbnails(
    classifier,
    paths: Sequence[str | os.PathLike],
    thumbnails: Sequence[np.ndarray | None],
    alpha: float = 0.4,
    batch_size: int = 32,
    class_indices: Sequence[int] | None = None,
) -> list[np.ndarray | None]:
    """Grad-CAM overlays of the predicted class on thumbnails, in one pass.

    Args:
        classifier: a `NeuropathologyClassifier`.
        paths: the image files.
        thumbnails: one RGB thumbnail per file, in the file's aspect ratio;
            ``None`` for a file without one.
        class_indices: the class to explain per file, such as the class a
            report shows as predicted; ``None`` explains the model's top class.
        alpha: opacity of the heat map.
        batch_size: images per gradient pass.

    Returns:
        One overlay per file, shaped as its thumbnail; ``None`` where the file
        or its thumbnail is missing.
    """
    loaded = [_try_read(p, classifier.image_size)[0] for p in paths]
    usable = [
        k
        for k, (image, thumbnail) in enumerate(zip(loaded, thumbnails, strict=True))
        if image is not None and thumbnail is not None
    ]
    overlays: list[np.ndarray | None] = [None] * len(loaded)
    if not usable:
        return overlays
    targets = None if class_indices is None else [class_indices[k] for k in usable]
    result = GradCam(classifier).explain(
        np.stack([loaded[k] for k in usable]), targets, batch_size=batch_size
    )
    for row, k in enumerate(usable):
        heatmap = heatmap_on_original(result.heatmaps[row], *thumbnails[k].shape[:2])
        overlays[k] = overlay(thumbnails[k], heatmap, alpha)
    return overlays
