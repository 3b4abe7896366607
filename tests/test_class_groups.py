"""Pathology and sequence views on a hand-made prediction set."""

import numpy as np
import pytest

from neuropath.class_groups import (
    PATHOLOGY_GROUPS,
    group_labels,
    group_probabilities,
    view_metrics,
)
from neuropath.classes import CLASS_NAMES, short_name

INDEX = {short_name(name): k for k, name in enumerate(CLASS_NAMES)}


def _row(shares):
    """A probability row from ``{short name: probability}``."""
    row = np.zeros(len(CLASS_NAMES))
    for name, value in shares.items():
        row[INDEX[name]] = value
    return row


def _hand_made_set():
    y_true = np.array(
        [INDEX["Glioma T1"], INDEX["NORMAL T2"], INDEX["Schwannoma T1C+"]]
    )
    probabilities = np.stack(
        [
            # Wrong class (Meningioma T1) but Glioma holds 0.6 in total, and
            # T1 is still the most probable sequence.
            _row({"Meningioma T1": 0.4, "Glioma T1C+": 0.3, "Glioma T2": 0.3}),
            # Right class and pathology, but T1 holds 0.65: wrong sequence.
            _row({"NORMAL T2": 0.35, "Glioma T1": 0.33, "Meningioma T1": 0.32}),
            # Wrong pathology (Outros), right sequence (T1C+).
            _row({"Outros T1C+": 0.9, "Schwannoma T2": 0.1}),
        ]
    )
    return y_true, probabilities


def test_group_probabilities_sum_the_classes_of_each_group():
    _, probabilities = _hand_made_set()
    pathology = group_probabilities(probabilities, CLASS_NAMES, "pathology")
    sequence = group_probabilities(probabilities, CLASS_NAMES, "sequence")

    assert pathology.shape == (3, 6) and sequence.shape == (3, 3)
    glioma = PATHOLOGY_GROUPS.index("Glioma")
    assert pathology[0, glioma] == pytest.approx(0.6)
    np.testing.assert_allclose(sequence[1], [0.65, 0.0, 0.35])  # T1, T1C+, T2
    np.testing.assert_allclose(pathology.sum(axis=1), 1.0)


def test_views_score_the_hand_made_set_as_worked_out():
    y_true, probabilities = _hand_made_set()
    assert (probabilities.argmax(axis=1) == y_true).mean() == pytest.approx(1 / 3)

    pathology = view_metrics(y_true, probabilities, CLASS_NAMES, "pathology", 100)
    sequence = view_metrics(y_true, probabilities, CLASS_NAMES, "sequence", 100)

    assert pathology["groups"] == list(PATHOLOGY_GROUPS)
    assert pathology["accuracy"] == pytest.approx(2 / 3)
    assert sorted(pathology["absent_groups"]) == ["Meningioma", "Neurocitoma", "Outros"]
    matrix = np.array(pathology["confusion_matrix"]["rows_true_columns_predicted"])
    g = {name: i for i, name in enumerate(PATHOLOGY_GROUPS)}
    assert matrix[g["Glioma"], g["Glioma"]] == 1
    assert matrix[g["NORMAL"], g["NORMAL"]] == 1
    assert matrix[g["Schwannoma"], g["Outros"]] == 1
    assert matrix.sum() == 3
    assert pathology["per_group"]["Schwannoma"]["recall"] == 0.0
    assert "Outros" not in pathology["per_group"]

    assert sequence["groups"] == ["T1", "T1C+", "T2"]
    assert sequence["accuracy"] == pytest.approx(2 / 3)
    assert np.array(
        sequence["confusion_matrix"]["rows_true_columns_predicted"]
    ).tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]
    assert sequence["absent_groups"] == []
    low, high = sequence["accuracy_ci"]
    assert low <= 2 / 3 <= high


def test_group_labels_and_unknown_views():
    y = np.array([INDEX["NORMAL T1"], INDEX["Outros T2"]])
    assert group_labels(y, CLASS_NAMES, "pathology").tolist() == [5, 4]
    assert group_labels(y, CLASS_NAMES, "sequence").tolist() == [0, 2]
    with pytest.raises(ValueError, match="Unknown view 'grade'"):
        group_labels(y, CLASS_NAMES, "grade")
