"""Classification metrics as pure functions over NumPy arrays.

*Labels* are integer indices, shape ``(n,)``; *probabilities* are softmax
outputs, shape ``(n, n_labels)``. A label is *present* when it has at least
one true example; per-label scores and macro averages cover the present labels
only, the others being *absent* (not scored as zero). *Calibration bins* are
equal-width bins of the top-1 probability on [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
    roc_auc_score,
    top_k_accuracy_score,
)

__all__ = [
    "BOOTSTRAP_STATISTICS",
    "DEFAULT_CALIBRATION_BINS",
    "accuracy_from_confusion",
    "balanced_accuracy_from_confusion",
    "bootstrap_intervals",
    "calibration_bins",
    "check_predictions",
    "expected_calibration_error",
    "label_metrics",
    "macro_f1_from_confusion",
    "present_labels",
    "probability_metrics",
    "roc_auc_by_label",
]

# Fifteen bins, as in most published calibration tables of deep classifiers.
DEFAULT_CALIBRATION_BINS = 15


def _check_labels(y: Any, n_labels: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{name} must be a 1-D array of integer labels; received dtype "
            f"{y.dtype} and shape {y.shape}. Pass class indices, not names."
        )
    if y.size and (y.min() < 0 or y.max() >= n_labels):
        raise ValueError(
            f"{name} holds labels from {y.min()} to {y.max()}; they must lie in "
            f"0..{n_labels - 1} (one per name or probability column)."
        )
    return y.astype(np.int64)


def _check_probabilities(probabilities: Any, n_rows: int) -> np.ndarray:
    """Float64 probabilities whose rows sum to exactly one."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != n_rows:
        raise ValueError(
            f"probabilities must have shape (n_images, n_labels) with "
            f"n_images={n_rows}; received shape {p.shape}."
        )
    if not np.all(np.isfinite(p)) or p.min() < 0:
        raise ValueError(
            "probabilities must be finite and non-negative (softmax outputs); "
            "received NaN, infinite or negative values."
        )
    # float32 softmax rows sum to one within 1e-6; scikit-learn checks tighter.
    return p / p.sum(axis=1, keepdims=True)


def check_predictions(
    y_true: Any, probabilities: Any, n_labels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validates true labels against probabilities before any metric.

    Args:
        y_true: true labels, shape ``(n,)``.
        probabilities: shape ``(n, n_labels)``.
        n_labels: number of possible labels (class names).

    Returns:
        ``(y_true, probabilities)`` as int64 and row-normalised float64.

    Raises:
        ValueError: a shape, a label or a probability is wrong.
    """
    y_true = _check_labels(y_true, n_labels, "y_true")
    probabilities = _check_probabilities(probabilities, len(y_true))
    if probabilities.shape[1] != n_labels:
        raise ValueError(
            f"probabilities have {probabilities.shape[1]} columns but there are "
            f"{n_labels} class names; pass the model's own class names."
        )
    if len(y_true) == 0:
        raise ValueError("No predictions to score: y_true is empty.")
    return y_true, probabilities


def present_labels(y_true: np.ndarray, n_labels: int) -> np.ndarray:
    """The labels with at least one true example, sorted.

    Args:
        y_true: true labels, shape ``(n,)``.
        n_labels: number of possible labels.

    Returns:
        The present labels, shape ``(n_present,)``.
    """
    y_true = _check_labels(y_true, n_labels, "y_true")
    return np.flatnonzero(np.bincount(y_true, minlength=n_labels))


def label_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    names: Sequence[str],
    display_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, per-label table and confusion matrix over the present labels.

    Args:
        y_true: true labels, shape ``(n,)``.
        y_pred: predicted labels, shape ``(n,)``.
        names: one name per label, in label order.
        display_names: shorter names for figures; ``names`` by default.

    Returns:
        A JSON-ready dict: ``accuracy``, ``balanced_accuracy``, ``per_class``
        (precision, recall, ``f1-score`` and support of each present label,
        keyed by name), ``macro_avg`` and ``weighted_avg`` over the present
        labels, ``absent_classes`` and ``confusion_matrix`` (every label, rows
        true, columns predicted).
    """
    n_labels = len(names)
    y_true = _check_labels(y_true, n_labels, "y_true")
    y_pred = _check_labels(y_pred, n_labels, "y_pred")
    display_names = list(display_names or names)
    present = present_labels(y_true, n_labels).tolist()

    table = classification_report(
        y_true,
        y_pred,
        labels=present,
        target_names=[names[k] for k in present],
        output_dict=True,
        zero_division=0,
    )
    per_class = {
        names[k]: {
            "short_name": display_names[k],
            **{m: float(v) for m, v in table[names[k]].items()},
        }
        for k in present
    }
    return {
        "n_images": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # Balanced accuracy is the mean recall of the present labels.
        "balanced_accuracy": float(table["macro avg"]["recall"]),
        "macro_avg": {m: float(v) for m, v in table["macro avg"].items()},
        "weighted_avg": {m: float(v) for m, v in table["weighted avg"].items()},
        "per_class": per_class,
        "absent_classes": [n for k, n in enumerate(names) if k not in present],
        "confusion_matrix": {
            "labels": display_names,
            "rows_true_columns_predicted": confusion_matrix(
                y_true, y_pred, labels=list(range(n_labels))
            ).tolist(),
        },
    }


def roc_auc_by_label(
    y_true: np.ndarray, probabilities: np.ndarray
) -> dict[int, float | None]:
    """One-vs-rest ROC AUC of each present label.

    Args:
        y_true: true labels, shape ``(n,)``.
        probabilities: shape ``(n, n_labels)``.

    Returns:
        Present label to its AUC; ``None`` for every label when only one label
        is present (there are no negatives to rank against).
    """
    probabilities = _check_probabilities(probabilities, len(y_true))
    present = present_labels(y_true, probabilities.shape[1])
    if len(present) < 2:
        return {int(k): None for k in present}
    indicator = (y_true[:, None] == present[None, :]).astype(int)
    scores = roc_auc_score(indicator, probabilities[:, present], average=None)
    return {int(k): float(s) for k, s in zip(present, scores, strict=True)}


def calibration_bins(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    n_bins: int = DEFAULT_CALIBRATION_BINS,
) -> list[dict[str, float]]:
    """Accuracy against confidence in equal-width bins of the top-1 probability.

    Bin ``b`` holds the images whose top-1 probability lies in
    ``[b / n_bins, (b + 1) / n_bins)``; the last bin also holds 1.0.

    Args:
        y_true: true labels, shape ``(n,)``.
        probabilities: shape ``(n, n_labels)``.
        n_bins: number of bins; 15 by default.

    Returns:
        One dict per bin: ``lower``, ``upper``, ``count``, and for a non-empty
        bin ``accuracy`` and ``confidence`` (mean top-1 probability), else
        ``None`` for both.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; received {n_bins}.")
    probabilities = _check_probabilities(probabilities, len(y_true))
    y_true = _check_labels(y_true, probabilities.shape[1], "y_true")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    index = np.minimum((confidence * n_bins).astype(int), n_bins - 1)

    bins = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        bins.append(
            {
                "lower": b / n_bins,
                "upper": (b + 1) / n_bins,
                "count": count,
                "accuracy": float(correct[members].mean()) if count else None,
                "confidence": float(confidence[members].mean()) if count else None,
            }
        )
    return bins


def expected_calibration_error(bins: Sequence[dict[str, float]]) -> float:
    """The share-weighted mean gap between accuracy and confidence over bins.

    Args:
        bins: the output of `calibration_bins`.

    Returns:
        ECE in [0, 1]: 0 when every bin's accuracy equals its mean confidence.
    """
    total = sum(b["count"] for b in bins)
    if total == 0:
        raise ValueError("The calibration bins hold no images; ECE is undefined.")
    return float(
        sum(
            b["count"] / total * abs(b["accuracy"] - b["confidence"])
            for b in bins
            if b["count"]
        )
    )


def _top_k_accuracy(y_true: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    n_labels = probabilities.shape[1]
    if k >= n_labels:
        return 1.0
    return float(
        top_k_accuracy_score(y_true, probabilities, k=k, labels=np.arange(n_labels))
    )


def probability_metrics(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    n_bins: int = DEFAULT_CALIBRATION_BINS,
) -> dict[str, Any]:
    """Metrics that need the probabilities, not just the predicted label.

    Args:
        y_true: true labels, shape ``(n,)``.
        probabilities: shape ``(n, n_labels)``.
        n_bins: calibration bins; 15 by default.

    Returns:
        A JSON-ready dict: ``top_2_accuracy``, ``top_3_accuracy``,
        ``log_loss`` (natural log, mean over images), ``roc_auc`` (``by_label``
        for the present labels, and their ``macro`` and support-``weighted``
        means, ``None`` when undefined) and ``calibration`` (``bins``,
        ``n_bins``, ``expected_calibration_error``).
    """
    probabilities = _check_probabilities(probabilities, len(y_true))
    n_labels = probabilities.shape[1]
    y_true = _check_labels(y_true, n_labels, "y_true")

    auc = roc_auc_by_label(y_true, probabilities)
    defined = {k: v for k, v in auc.items() if v is not None}
    support = np.bincount(y_true, minlength=n_labels)
    bins = calibration_bins(y_true, probabilities, n_bins)
    return {
        "top_2_accuracy": _top_k_accuracy(y_true, probabilities, 2),
        "top_3_accuracy": _top_k_accuracy(y_true, probabilities, 3),
        "log_loss": float(log_loss(y_true, probabilities, labels=range(n_labels))),
        "roc_auc": {
            "by_label": auc,
            "macro": float(np.mean(list(defined.values()))) if defined else None,
            "weighted": (
                float(
                    np.average(list(defined.values()), weights=support[list(defined)])
                )
                if defined
                else None
            ),
        },
        "calibration": {
            "n_bins": n_bins,
            "bins": bins,
            "expected_calibration_error": expected_calibration_error(bins),
        },
    }


# Statistics of a stack of confusion matrices, shape (..., n_labels, n_labels),
# rows true. They equal scikit-learn's accuracy_score, balanced_accuracy_score
# and f1_score(average="macro", zero_division=0) over the present labels, and
# run on a thousand bootstrap resamples at once.


def accuracy_from_confusion(matrix: np.ndarray) -> np.ndarray:
    """Share of images on the diagonal."""
    return np.trace(matrix, axis1=-2, axis2=-1) / matrix.sum(axis=(-2, -1))


def _diagonal_and_support(matrix: np.ndarray):
    diagonal = np.diagonal(matrix, axis1=-2, axis2=-1)
    support = matrix.sum(axis=-1)
    # Stratified resamples keep the support, so present labels never change.
    present = support.reshape(-1, support.shape[-1]).max(axis=0) > 0
    return diagonal[..., present], support[..., present], present


def balanced_accuracy_from_confusion(matrix: np.ndarray) -> np.ndarray:
    """Mean recall over the labels with true examples."""
    diagonal, support, _ = _diagonal_and_support(matrix)
    return (diagonal / support).mean(axis=-1)


def macro_f1_from_confusion(matrix: np.ndarray) -> np.ndarray:
    """Mean F1, ``2 TP / (true + predicted)``, over the labels with true examples."""
    diagonal, support, present = _diagonal_and_support(matrix)
    predicted = matrix.sum(axis=-2)[..., present]
    return (2 * diagonal / (support + predicted)).mean(axis=-1)


BOOTSTRAP_STATISTICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "accuracy": accuracy_from_confusion,
    "balanced_accuracy": balanced_accuracy_from_confusion,
    "macro_f1": macro_f1_from_confusion,
}


def _stratified_resamples(
    strata: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Image indices, shape ``(n_resamples, n)``, drawn within each stratum."""
    columns = []
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        draws = rng.integers(0, len(members), size=(n_resamples, len(members)))
        columns.append(members[draws])
    return np.concatenate(columns, axis=1)


def _confusion_stack(
    y_true: np.ndarray, y_pred: np.ndarray, n_labels: int
) -> np.ndarray:
    """Confusion matrices of each row of labels, shape ``(rows, k, k)``."""
    rows = y_true.shape[0]
    # One bincount for all rows: offset each row's codes into its own block.
    codes = y_true * n_labels + y_pred + np.arange(rows)[:, None] * n_labels**2
    counts = np.bincount(codes.ravel(), minlength=rows * n_labels**2)
    return counts.reshape(rows, n_labels, n_labels)


def bootstrap_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_labels: int,
    statistics: Sequence[str] = tuple(BOOTSTRAP_STATISTICS),
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> dict[str, list[float]]:
    """Percentile bootstrap confidence intervals, resampling within strata.

    Each resample draws, with replacement, as many images from each stratum
    (by default each true label) as it holds, so every resample keeps the
    class balance of the evaluated set and the same present labels.

    Args:
        y_true: true labels, shape ``(n,)``.
        y_pred: predicted labels, shape ``(n,)``.
        n_labels: number of possible labels.
        statistics: names from `BOOTSTRAP_STATISTICS`.
        n_resamples: bootstrap resamples; 1,000 by default.
        confidence: coverage of the interval; 0.95 by default.
        seed: the resampling seed; the same seed gives the same intervals.
        strata: a stratum per image, shape ``(n,)``; ``y_true`` by default.

    Returns:
        Statistic name to ``[low, high]``.

    Example:

    >>> bootstrap_intervals([0, 0, 1, 1], [0, 1, 1, 1], 2, ["accuracy"], 200)
    {'accuracy': [0.5, 1.0]}
    """
    y_true = _check_labels(y_true, n_labels, "y_true")
    y_pred = _check_labels(y_pred, n_labels, "y_pred")
    unknown = sorted(set(statistics) - set(BOOTSTRAP_STATISTICS))
    if unknown:
        raise ValueError(
            f"Unknown statistics {unknown}; expected names from "
            f"{sorted(BOOTSTRAP_STATISTICS)}."
        )
    if n_resamples < 1 or not 0 < confidence < 1:
        raise ValueError(
            "n_resamples must be >= 1 and confidence in (0, 1); received "
            f"n_resamples={n_resamples}, confidence={confidence}."
        )
    if len(y_pred) != len(y_true) or len(y_true) == 0:
        raise ValueError(
            f"y_true and y_pred must be non-empty and of one length; received "
            f"{len(y_true)} and {len(y_pred)}."
        )
    strata = y_true if strata is None else np.asarray(strata)

    samples = _stratified_resamples(strata, n_resamples, np.random.default_rng(seed))
    matrices = _confusion_stack(y_true[samples], y_pred[samples], n_labels)
    tail = (1 - confidence) / 2
    intervals = {}
    for name in statistics:
        values = BOOTSTRAP_STATISTICS[name](matrices)
        low, high = np.quantile(values, [tail, 1 - tail])
        intervals[name] = [float(low), float(high)]
    return intervals
