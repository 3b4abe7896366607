"""Figures of an evaluation report, drawn with matplotlib into PNG files.

Each function takes numbers already computed by `neuropath.metrics` and a
destination path, and returns the path. Classes are labelled by their short
names (``Glioma T1C+``); *absent* classes, with no true example, are marked
rather than drawn as zero.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "load_thumbnail",
    "plot_confusion_matrix",
    "plot_f1_by_class",
    "plot_mistakes",
    "plot_reliability",
    "plot_roc_curves",
]

DPI = 110
ABSENT_COLOUR = "#e6e6e6"
# One colour per pathology group, in the order of class_groups.PATHOLOGY_GROUPS.
GROUP_COLOURS = {
    "Glioma": "#1f77b4",
    "Meningioma": "#ff7f0e",
    "Neurocitoma": "#2ca02c",
    "Schwannoma": "#9467bd",
    "Outros": "#8c564b",
    "NORMAL": "#7f7f7f",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: str | os.PathLike) -> Path:
    figure.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    _pyplot().close(figure)
    return Path(path)


def _cell_text(count: int, share: float, mode: str) -> str:
    if mode == "counts":
        return str(count)
    if mode == "percent":
        return f"{100 * share:.0f}"
    return f"{100 * share:.0f}%\n({count})"


def plot_confusion_matrix(
    matrix: np.ndarray,
    labels: Sequence[str],
    path: str | os.PathLike,
    normalize: bool = False,
    title: str | None = None,
    noun: str = "class",
) -> Path:
    """Draws a confusion matrix, rows true, with only non-zero cells written.

    Args:
        matrix: counts, shape ``(k, k)``, rows true, columns predicted.
        labels: the ``k`` display names.
        path: the PNG to write.
        normalize: colour and label each cell by its share of the row (the
            recall on the diagonal); counts otherwise. Matrices of up to six
            labels show both share and count in each cell.
        title: the figure title; a default names the image count.
        noun: what a label is, for the axis titles: ``"class"`` or ``"group"``.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=int)
    k = len(labels)
    support = matrix.sum(axis=1)
    shares = matrix / np.maximum(support, 1)[:, None]
    colour = shares if normalize else matrix / max(matrix.max(), 1)
    mode = ("both" if k <= 6 else "percent") if normalize else "counts"

    side = max(4.8, 0.55 * k + 2.6)
    figure, axes = plt.subplots(figsize=(side + 0.8, side))
    axes.imshow(colour, cmap="Blues", vmin=0, vmax=1)
    for row in np.flatnonzero(support == 0):
        axes.axhspan(row - 0.5, row + 0.5, color=ABSENT_COLOUR)
    for row, col in zip(*np.nonzero(matrix), strict=True):
        axes.text(
            col,
            row,
            _cell_text(matrix[row, col], shares[row, col], mode),
            ha="center",
            va="center",
            fontsize=9 if k > 6 else 11,
            color="white" if colour[row, col] > 0.55 else "black",
        )

    row_labels = [
        f"{label} (n={n})" if n else f"{label} (absent)"
        for label, n in zip(labels, support, strict=True)
    ]
    axes.set_xticks(range(k), labels, rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(k), row_labels)
    axes.set_xlabel(f"Predicted {noun}")
    axes.set_ylabel(f"True {noun}")
    # Light grid lines between cells make long rows easy to follow.
    axes.set_xticks(np.arange(-0.5, k), minor=True)
    axes.set_yticks(np.arange(-0.5, k), minor=True)
    axes.grid(which="minor", color="white", linewidth=1.5)
    axes.tick_params(which="minor", length=0)
    if title is None:
        kind = "share of each true class, %" if normalize else "image counts"
        title = f"Confusion matrix, {kind} ({int(matrix.sum())} images)"
    axes.set_title(title, fontsize=12, pad=12)
    return _save(figure, path)


def _roc_curve(is_positive: np.ndarray, scores: np.ndarray):
    from sklearn.metrics import roc_curve

    false_positive_rate, true_positive_rate, _ = roc_curve(is_positive, scores)
    return false_positive_rate, true_positive_rate


def plot_roc_curves(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    labels: Sequence[str],
    auc_by_label: Mapping[int, float | None],
    path: str | os.PathLike,
    columns: int = 5,
) -> Path:
    """One-vs-rest ROC curves, one small panel per present class.

    Args:
        y_true: true class indices, shape ``(n,)``.
        probabilities: shape ``(n, n_classes)``.
        labels: the display names of all classes.
        auc_by_label: class index to AUC, for the present classes.
        path: the PNG to write.
        columns: panels per row; 5 by default.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    shown = [k for k, auc in auc_by_label.items() if auc is not None]
    rows = max(1, -(-len(shown) // columns))
    figure, grid = plt.subplots(
        rows,
        columns,
        figsize=(2.6 * columns, 2.6 * rows + 0.6),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    y_true = np.asarray(y_true)
    for axes, k in zip(grid.flat, shown, strict=False):
        is_positive = y_true == k
        fpr, tpr = _roc_curve(is_positive, probabilities[:, k])
        group = labels[k].split(" ")[0]
        axes.plot(fpr, tpr, color=GROUP_COLOURS.get(group, "black"), linewidth=2)
        axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
        axes.set_title(
            f"{labels[k]}\nAUC {auc_by_label[k]:.2f}, n={int(is_positive.sum())}",
            fontsize=9,
        )
        axes.set_aspect("equal")
        axes.set_xticks([0, 0.5, 1])
        axes.set_yticks([0, 0.5, 1])
        axes.grid(alpha=0.3)
    for axes in list(grid.flat)[len(shown) :]:
        axes.axis("off")
    if not shown:
        grid[0, 0].text(0.5, 0.5, "ROC undefined: one class only", ha="center")
    missing = [label for k, label in enumerate(labels) if k not in shown]
    if missing:
        figure.text(
            0.5,
            -0.02,
            "Not drawn (no test image, or no image of any other class): "
            + ", ".join(missing),
            ha="center",
            fontsize=9,
            color="#555555",
            wrap=True,
        )
    figure.supxlabel("False positive rate (1 - specificity)")
    figure.supylabel("True positive rate (sensitivity)")
    figure.suptitle("ROC curves, each class against all others", fontsize=12)
    figure.tight_layout()
    return _save(figure, path)


def plot_reliability(
    bins: Sequence[Mapping[str, float]], ece: float, path: str | os.PathLike
) -> Path:
    """Reliability diagram: accuracy against confidence, with image counts.

    Args:
        bins: the output of `neuropath.metrics.calibration_bins`.
        ece: the expected calibration error of those bins.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(
        2,
        1,
        figsize=(6.2, 7),
        sharex=True,
        gridspec_kw={"height_ratios": [3, 1]},
    )
    filled = [b for b in bins if b["count"]]
    width = bins[0]["upper"] - bins[0]["lower"]
    centres = [(b["lower"] + b["upper"]) / 2 for b in filled]
    top.bar(
        centres,
        [b["accuracy"] for b in filled],
        width=width,
        color="#4c72b0",
        edgecolor="white",
        label="accuracy in bin",
    )
    # The gap between each bar and its mean confidence, as in most papers.
    top.bar(
        centres,
        [b["confidence"] - b["accuracy"] for b in filled],
        bottom=[b["accuracy"] for b in filled],
        width=width,
        color="#c44e52",
        alpha=0.25,
        edgecolor="#c44e52",
        hatch="//",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], color="black", linestyle="--", label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("Accuracy")
    top.set_title(
        f"Reliability diagram: ECE {ece:.3f} ({len(bins)} equal-width bins)",
        fontsize=12,
    )
    top.legend(loc="upper left", fontsize=9)
    top.grid(alpha=0.3)

    bottom.bar(
        [(b["lower"] + b["upper"]) / 2 for b in bins],
        [b["count"] for b in bins],
        width=width,
        color="#8c8c8c",
        edgecolor="white",
    )
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("Confidence (probability of the predicted class)")
    bottom.set_ylabel("Images")
    figure.tight_layout()
    return _save(figure, path)


def plot_f1_by_class(
    labels: Sequence[str],
    f1: Sequence[float | None],
    support: Sequence[int],
    macro_f1: float,
    path: str | os.PathLike,
) -> Path:
    """Horizontal F1 bars, one per class, coloured by pathology.

    Args:
        labels: display names of all classes, top to bottom.
        f1: each class's F1, ``None`` for an absent class.
        support: each class's number of true examples.
        macro_f1: the macro F1, drawn as a vertical line.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    k = len(labels)
    figure, axes = plt.subplots(figsize=(8, 0.36 * k + 1.4))
    positions = np.arange(k)[::-1]
    for y, label, score, n in zip(positions, labels, f1, support, strict=True):
        if score is None:
            axes.text(
                0.01,
                y,
                "absent from the evaluated images",
                va="center",
                color="#7f7f7f",
                fontsize=9,
                style="italic",
            )
            continue
        colour = GROUP_COLOURS.get(label.split(" ")[0], "#4c72b0")
        axes.barh(y, score, color=colour, height=0.7)
        axes.text(
            score + 0.01,
            y,
            f"{score:.2f}  (n={n})",
            va="center",
            fontsize=9,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5},
            zorder=3,
        )
    axes.axvline(macro_f1, color="black", linestyle="--", linewidth=1)
    axes.text(macro_f1, k - 0.3, f" macro F1 {macro_f1:.2f}", fontsize=9)
    axes.set_yticks(positions, labels)
    axes.set_xlim(0, 1.18)
    axes.set_ylim(-0.7, k)
    axes.set_xticks(np.linspace(0, 1, 6))
    axes.set_xlabel("F1 score (harmonic mean of precision and recall)")
    axes.set_title("F1 score by class", fontsize=12)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def load_thumbnail(path: str | os.PathLike, size: int = 160) -> np.ndarray | None:
    """An RGB thumbnail, longest side ``size``, or ``None`` if it cannot decode."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            return np.asarray(image)
    except (OSError, ValueError):
        return None


def _side_by_side(image: np.ndarray | None, extra: np.ndarray | None):
    """Two RGB images of one height in a row, a white gap between them."""
    if image is None or extra is None:
        return image
    gap = np.full((image.shape[0], max(4, image.shape[1] // 20), 3), 255, np.uint8)
    return np.concatenate([image, gap, extra], axis=1)


def plot_mistakes(
    thumbnails: Sequence[np.ndarray | None],
    captions: Sequence[str],
    path: str | os.PathLike,
    columns: int = 4,
    overlays: Sequence[np.ndarray | None] | None = None,
) -> Path:
    """A gallery of images with a caption under each.

    Args:
        thumbnails: RGB arrays; ``None`` draws an empty frame.
        captions: one caption per image, lines separated by ``\\n``.
        path: the PNG to write.
        columns: images per row; 4 by default.
        overlays: a heat map overlay per image, drawn to the right of its
            thumbnail; ``None`` (or a ``None`` entry) draws the thumbnail alone.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    if overlays is not None:
        thumbnails = [
            _side_by_side(image, extra)
            for image, extra in zip(thumbnails, overlays, strict=True)
        ]
    rows = max(1, -(-len(thumbnails) // columns))
    # Side-by-side pairs are twice as wide, so each row needs less height.
    row_height = 3.6 if overlays is None else 2.5
    figure, grid = plt.subplots(
        rows, columns, figsize=(3.1 * columns, row_height * rows + 0.5), squeeze=False
    )
    for axes in grid.flat:
        axes.axis("off")
    for axes, image, caption in zip(grid.flat, thumbnails, captions, strict=False):
        if image is not None:
            axes.imshow(image)
        else:
            axes.text(0.5, 0.5, "image unreadable", ha="center", va="center")
        axes.set_title(caption, fontsize=9, loc="left")
    figure.suptitle("Most confident wrong predictions", fontsize=12, x=0.02, ha="left")
    figure.tight_layout()
    return _save(figure, path)
