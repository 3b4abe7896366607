"""Report metrics: scikit-learn's values, absent classes, calibration, bootstrap."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from neuropath.classes import CLASS_NAMES
from neuropath.evaluation import summarize_predictions, worst_mistakes
from neuropath.metrics import (
    accuracy_from_confusion,
    balanced_accuracy_from_confusion,
    bootstrap_intervals,
    calibration_bins,
    expected_calibration_error,
    macro_f1_from_confusion,
)


def _predictions(counts, skill=2.0, seed=0):
    """Softmax outputs of a middling classifier on classes of given sizes."""
    rng = np.random.default_rng(seed)
    y_true = np.repeat(np.arange(len(counts)), counts)
    logits = rng.normal(0.0, 1.0, (len(y_true), len(counts)))
    logits[np.arange(len(y_true)), y_true] += skill
    probabilities = np.exp(logits)
    return y_true, probabilities / probabilities.sum(axis=1, keepdims=True)


# Unequal classes like the public test split: from 7 to 70 images.
COUNTS = [70, 45, 60, 52, 7, 20, 66, 61, 25, 30, 58, 35, 9, 12, 28, 40, 38]


def test_every_metric_equals_scikit_learn_on_fixed_predictions():
    y_true, probabilities = _predictions(COUNTS)
    y_pred = probabilities.argmax(axis=1)
    report = summarize_predictions(y_true, probabilities, CLASS_NAMES, n_resamples=50)

    assert report["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert report["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(y_true, y_pred)
    )
    for average, key in (("macro", "macro_avg"), ("weighted", "weighted_avg")):
        precision, recall, f1, _ = precision_recall_fscore_support(
            y_true, y_pred, average=average, zero_division=0
        )
        assert report[key]["precision"] == pytest.approx(precision)
        assert report[key]["recall"] == pytest.approx(recall)
        assert report[key]["f1-score"] == pytest.approx(f1)
        assert report[key]["roc_auc"] == pytest.approx(
            roc_auc_score(y_true, probabilities, multi_class="ovr", average=average)
        )
    for k in (2, 3):
        assert report[f"top_{k}_accuracy"] == pytest.approx(
            top_k_accuracy_score(y_true, probabilities, k=k)
        )
    assert report["log_loss"] == pytest.approx(log_loss(y_true, probabilities))

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, zero_division=0
    )
    for k, name in enumerate(CLASS_NAMES):
        row = report["per_class"][name]
        assert row["precision"] == pytest.approx(precision[k])
        assert row["recall"] == pytest.approx(recall[k])
        assert row["f1-score"] == pytest.approx(f1[k])
        assert row["support"] == support[k] == COUNTS[k]
        assert row["roc_auc"] == pytest.approx(
            roc_auc_score(y_true == k, probabilities[:, k])
        )
    assert report["absent_classes"] == []


def test_absent_classes_are_left_out_of_every_macro_average():
    # Only classes 0, 3 and 7 are in the data; 5 is predicted but never true.
    y_true = np.array([0] * 6 + [3] * 4 + [7] * 5)
    y_pred = np.array([0, 0, 0, 0, 5, 3] + [3, 3, 0, 5] + [7, 7, 7, 7, 0])
    probabilities = np.full((len(y_true), 17), 0.02)
    probabilities[np.arange(len(y_true)), y_pred] = 0.5
    probabilities[np.arange(len(y_true)), y_true] += 0.1  # true class ranks 2nd
    present = [0, 3, 7]

    report = summarize_predictions(y_true, probabilities, CLASS_NAMES, n_resamples=50)

    assert sorted(report["per_class"]) == sorted(CLASS_NAMES[k] for k in present)
    assert len(report["absent_classes"]) == 14
    assert CLASS_NAMES[5] in report["absent_classes"]
    macro_f1 = f1_score(y_true, y_pred, labels=present, average="macro")
    assert report["macro_avg"]["f1-score"] == pytest.approx(macro_f1)
    # Scoring the 14 absent classes as zero would drag the average down.
    zero_filled = f1_score(
        y_true, y_pred, labels=range(17), average="macro", zero_division=0
    )
    assert zero_filled < macro_f1 / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        expected_balanced = balanced_accuracy_score(y_true, y_pred)
    assert report["balanced_accuracy"] == pytest.approx(expected_balanced)
    assert report["balanced_accuracy"] == pytest.approx((4 / 6 + 2 / 4 + 4 / 5) / 3)
    aucs = [roc_auc_score(y_true == k, probabilities[:, k]) for k in present]
    assert report["macro_avg"]["roc_auc"] == pytest.approx(np.mean(aucs))
    assert report["weighted_avg"]["roc_auc"] == pytest.approx(
        np.average(aucs, weights=[6, 4, 5])
    )
    assert "roc_auc" not in report["per_class"].get(CLASS_NAMES[5], {})


def test_confusion_statistics_equal_scikit_learn_with_absent_classes():
    rng = np.random.default_rng(3)
    y_true = rng.choice([0, 2, 4, 5], size=300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 6, 300))
    matrix = np.zeros((6, 6), dtype=int)
    np.add.at(matrix, (y_true, y_pred), 1)
    present = [0, 2, 4, 5]

    assert accuracy_from_confusion(matrix) == pytest.approx(
        accuracy_score(y_true, y_pred)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        expected_balanced = balanced_accuracy_score(y_true, y_pred)
    assert balanced_accuracy_from_confusion(matrix) == pytest.approx(expected_balanced)
    assert macro_f1_from_confusion(matrix) == pytest.approx(
        f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
    )


def test_calibration_bins_and_error_by_hand():
    # Top-1 probabilities 0.9 (right), 0.9 (wrong), 0.6 (right), 0.3 (right).
    probabilities = np.array(
        [
            [0.9, 0.05, 0.03, 0.02],
            [0.9, 0.05, 0.03, 0.02],
            [0.6, 0.2, 0.1, 0.1],
            [0.3, 0.25, 0.25, 0.2],
        ]
    )
    y_true = np.array([0, 1, 0, 0])
    bins = calibration_bins(y_true, probabilities, n_bins=10)

    assert [b["count"] for b in bins] == [0, 0, 0, 1, 0, 0, 1, 0, 0, 2]
    assert bins[9]["accuracy"] == 0.5 and bins[9]["confidence"] == pytest.approx(0.9)
    assert bins[0]["accuracy"] is None
    # (2 x |0.5 - 0.9| + |1 - 0.6| + |1 - 0.3|) / 4
    assert expected_calibration_error(bins) == pytest.approx(0.475)
    # A probability of exactly 1 falls in the last bin, not past it.
    certain = calibration_bins(np.array([0]), np.array([[1.0, 0.0]]), n_bins=5)
    assert certain[-1]["count"] == 1


def test_bootstrap_interval_contains_the_estimate_and_repeats_with_its_seed():
    y_true, probabilities = _predictions(COUNTS, skill=1.5)
    y_pred = probabilities.argmax(axis=1)
    first = bootstrap_intervals(y_true, y_pred, 17, seed=7)
    again = bootstrap_intervals(y_true, y_pred, 17, seed=7)
    other = bootstrap_intervals(y_true, y_pred, 17, seed=8)

    assert first == again
    assert first != other
    estimates = {
        "accuracy": accuracy_score(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
        "macro_f1": f1_score(y_true, y_pred, average="macro"),
    }
    for name, estimate in estimates.items():
        low, high = first[name]
        assert low < estimate < high, name
        assert high - low < 0.15, name  # about 660 images: a few points wide


def test_bootstrap_resamples_within_each_true_class():
    # Class 0 always right, class 1 always wrong: every stratified resample
    # has exactly 30 right of 40, so the interval has no width at all.
    y_true = np.array([0] * 30 + [1] * 10)
    y_pred = np.array([0] * 30 + [0] * 10)
    interval = bootstrap_intervals(y_true, y_pred, 2, ["accuracy"], n_resamples=300)
    assert interval["accuracy"] == [0.75, 0.75]


def test_bootstrap_and_report_reject_bad_arguments():
    with pytest.raises(ValueError, match="Unknown statistics"):
        bootstrap_intervals([0, 1], [0, 1], 2, ["auc"])
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_intervals([0, 1], [0, 1], 2, n_resamples=0)
    with pytest.raises(ValueError, match="labels from 0 to 2"):
        bootstrap_intervals([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="shape"):
        summarize_predictions(np.array([0, 1]), np.ones((3, 17)) / 17, CLASS_NAMES)


def test_report_holds_documented_intervals_and_calibration():
    y_true, probabilities = _predictions(COUNTS)
    report = summarize_predictions(
        y_true, probabilities, CLASS_NAMES, n_resamples=200, seed=3
    )
    intervals = report["confidence_intervals"]
    assert (intervals["level"], intervals["n_resamples"], intervals["seed"]) == (
        0.95,
        200,
        3,
    )
    assert set(intervals) >= {"accuracy", "balanced_accuracy", "macro_f1"}
    assert report["calibration"]["n_bins"] == 15
    assert "equal-width" in report["calibration"]["binning"]
    assert sum(b["count"] for b in report["calibration"]["bins"]) == len(y_true)


def test_worst_mistakes_are_the_most_confident_wrong_predictions():
    probabilities = np.array(
        [[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7], [0.95, 0.05]]
    )
    y_true = np.array([1, 0, 0, 1, 0])
    # Wrong: 0 (p 0.9), 1 (p 0.8), 2 (p 0.6); 3 and 4 are right.
    assert worst_mistakes(y_true, probabilities).tolist() == [0, 1, 2]
    assert worst_mistakes(y_true, probabilities, n=2).tolist() == [0, 1]
