"""Evaluation metrics and the all-or-nothing report folder."""

import json

import numpy as np
import pytest

from neuropath.classes import CLASS_NAMES
from neuropath.evaluation import classification_metrics, write_report_dir


def test_metrics_match_hand_computed_values_and_skip_absent_classes():
    # Classes 0 and 1 present; class 2 only ever predicted; 14 never seen.
    y_true = np.array([0, 0, 0, 0, 1, 1])
    y_pred = np.array([0, 0, 0, 1, 1, 2])
    metrics = classification_metrics(y_true, y_pred, CLASS_NAMES)

    assert metrics["accuracy"] == pytest.approx(4 / 6)
    first, second = (metrics["per_class"][CLASS_NAMES[k]] for k in (0, 1))
    assert first["precision"] == pytest.approx(1.0)
    assert first["recall"] == pytest.approx(0.75)
    assert first["f1-score"] == pytest.approx(2 * 0.75 / 1.75)
    assert second["precision"] == pytest.approx(0.5)
    assert second["recall"] == pytest.approx(0.5)
    assert (first["support"], second["support"]) == (4, 2)
    assert first["short_name"] == "Glioma T1"
    assert metrics["macro_avg"]["recall"] == pytest.approx((0.75 + 0.5) / 2)
    assert len(metrics["absent_classes"]) == 15
    matrix = np.array(metrics["confusion_matrix"]["rows_true_columns_predicted"])
    assert matrix.shape == (17, 17) and matrix.sum() == 6
    assert matrix[0, 0] == 3 and matrix[0, 1] == 1 and matrix[1, 2] == 1


def test_report_folder_is_replaced_whole(tmp_path):
    out = tmp_path / "evaluation"
    write_report_dir(out, {"report.json": {"accuracy": 0.5}, "notes.md": "old"})
    assert json.loads((out / "report.json").read_text()) == {"accuracy": 0.5}

    write_report_dir(out, {"report.json": {"accuracy": 0.9}})
    assert json.loads((out / "report.json").read_text()) == {"accuracy": 0.9}
    assert out.stat().st_mode & 0o055 == 0o055  # others may open it, as usual
    assert not (out / "notes.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation"]


def test_a_failure_while_writing_leaves_the_previous_report_intact(tmp_path):
    out = tmp_path / "evaluation"
    write_report_dir(out, {"report.json": {"accuracy": 0.5}})

    def crash(path):
        path.write_text("half a figure")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_report_dir(out, {"report.json": {"accuracy": 0.9}, "figure.png": crash})
    assert json.loads((out / "report.json").read_text()) == {"accuracy": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evaluation"]
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
