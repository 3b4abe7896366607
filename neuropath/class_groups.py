"""Coarser views of the 17 classes: by pathology and by MRI sequence.

A *view* sorts every class into a *group*: its pathology (``Glioma`` ...
``NORMAL``) or its sequence (``T1``, ``T1C+``, ``T2``). A group's probability
is the sum of its classes' probabilities; the predicted group is the most
probable group, which need not be the group of the most probable class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from neuropath.classes import SEQUENCES, pathology_of, sequence_of
from neuropath.metrics import bootstrap_intervals, label_metrics

__all__ = [
    "PATHOLOGY_GROUPS",
    "VIEWS",
    "group_labels",
    "group_probabilities",
    "view_metrics",
]

PATHOLOGY_GROUPS = (
    "Glioma",
    "Meningioma",
    "Neurocitoma",
    "Schwannoma",
    "Outros",
    "NORMAL",
)

# View name to its groups, in display order, and the group of a class name.
VIEWS: dict[str, tuple[tuple[str, ...], Callable[[str], str]]] = {
    "pathology": (PATHOLOGY_GROUPS, pathology_of),
    "sequence": (SEQUENCES, sequence_of),
}


def _check_view(view: str) -> tuple[tuple[str, ...], Callable[[str], str]]:
    if view not in VIEWS:
        raise ValueError(f"Unknown view {view!r}; expected one of {sorted(VIEWS)}.")
    return VIEWS[view]


def _membership(class_names: Sequence[str], view: str) -> np.ndarray:
    """A 0/1 matrix, shape ``(n_classes, n_groups)``: class k is in group g."""
    groups, group_of = _check_view(view)
    matrix = np.zeros((len(class_names), len(groups)))
    for k, name in enumerate(class_names):
        group = group_of(name)
        if group not in groups:
            raise ValueError(
                f"Class {name!r} falls in group {group!r}, which is not one of "
                f"the {view} groups {list(groups)}."
            )
        matrix[k, groups.index(group)] = 1.0
    return matrix


def group_probabilities(
    probabilities: np.ndarray, class_names: Sequence[str], view: str
) -> np.ndarray:
    """Sums class probabilities within each group of a view.

    Args:
        probabilities: class probabilities, shape ``(n, n_classes)``.
        class_names: the class names in output order.
        view: ``"pathology"`` or ``"sequence"``.

    Returns:
        Group probabilities, shape ``(n, n_groups)``, groups in `VIEWS` order.
    """
    return np.asarray(probabilities, dtype=np.float64) @ _membership(class_names, view)


def group_labels(y: np.ndarray, class_names: Sequence[str], view: str) -> np.ndarray:
    """Maps class indices, shape ``(n,)``, to group indices of a view."""
    lookup = _membership(class_names, view).argmax(axis=1)
    return lookup[np.asarray(y, dtype=int)]


def view_metrics(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    view: str,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Scores the predictions again after merging classes into groups.

    Args:
        y_true: true class indices, shape ``(n,)``.
        probabilities: class probabilities, shape ``(n, n_classes)``.
        class_names: the class names in output order.
        view: ``"pathology"`` or ``"sequence"``.
        n_resamples: bootstrap resamples for the accuracy interval, drawn
            within each true class; 1,000 by default.
        seed: the bootstrap seed.

    Returns:
        A JSON-ready dict: ``groups``, ``accuracy``, ``accuracy_ci`` (95%),
        ``balanced_accuracy``, ``per_group`` (precision, recall, ``f1-score``,
        support), ``absent_groups`` and ``confusion_matrix`` (rows true).
    """
    groups, _ = _check_view(view)
    true_groups = group_labels(y_true, class_names, view)
    predicted_groups = group_probabilities(probabilities, class_names, view).argmax(
        axis=1
    )
    scores = label_metrics(true_groups, predicted_groups, groups)
    interval = bootstrap_intervals(
        true_groups,
        predicted_groups,
        len(groups),
        ["accuracy"],
        n_resamples=n_resamples,
        seed=seed,
        strata=np.asarray(y_true),
    )
    return {
        "groups": list(groups),
        "accuracy": scores["accuracy"],
        "accuracy_ci": interval["accuracy"],
        "balanced_accuracy": scores["balanced_accuracy"],
        "per_group": {
            name: {m: v for m, v in row.items() if m != "short_name"}
            for name, row in scores["per_class"].items()
        },
        "absent_groups": scores["absent_classes"],
        "confusion_matrix": scores["confusion_matrix"],
    }
