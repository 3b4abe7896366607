"""Batch prediction: inputs, mixed formats, broken files, DICOM privacy."""

import csv
import logging

import numpy as np
import pytest
from conftest import FAKE_PATIENT, gradient_image, save_image, write_mr_dicom

from neuropath.classes import CLASS_NAMES
from neuropath.cli import main
from neuropath.dataset import Record
from neuropath.evaluation import predict_records
from neuropath.prediction import expand_inputs, predict_files, read_slice
from neuropathology_model import NeuropathologyClassifier


@pytest.fixture(scope="module")
def classifier(small_model_file):
    return NeuropathologyClassifier.load(small_model_file)


@pytest.fixture
def mixed_folder(tmp_path):
    """JPEG, PNG, two DICOM slices, a broken JPEG and files to pass over."""
    folder = tmp_path / "scans"
    save_image(folder / "axial.jpg", gradient_image(120, 90, 3), quality=90)
    save_image(folder / "coronal.png", gradient_image(64, 64))
    ramp = np.add.outer(np.arange(64), np.arange(64)) * 16
    write_mr_dicom(folder / "series" / "IM0001", ramp)
    write_mr_dicom(
        folder / "series" / "slice2.dcm", ramp, WindowCenter=800, WindowWidth=1200
    )
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
    (folder / "notes.txt").write_text("not an image")
    save_image(folder / ".hidden.png", gradient_image(8, 8))
    return folder


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_folders_are_searched_and_other_files_passed_over(mixed_folder):
    found = expand_inputs([mixed_folder])
    names = sorted(p.rsplit("/", 1)[-1] for p in found)
    assert names == ["IM0001", "axial.jpg", "broken.jpg", "coronal.png", "slice2.dcm"]


def test_globs_and_missing_paths(mixed_folder, tmp_path):
    found = expand_inputs(
        [str(mixed_folder / "*.png"), str(tmp_path / "nope.jpg"), "none/*.dcm"]
    )
    assert found == [
        str(mixed_folder / "coronal.png"),
        str(tmp_path / "nope.jpg"),
        "none/*.dcm",
    ]
    assert expand_inputs([mixed_folder / "axial.jpg"] * 2) == [
        str(mixed_folder / "axial.jpg")
    ]


def test_mixed_folder_through_the_command_line(
    mixed_folder, small_model_file, tmp_path, capsys, caplog
):
    out = tmp_path / "out" / "predictions.csv"
    with caplog.at_level(logging.DEBUG):
        code = main(
            ["predict", str(small_model_file), str(mixed_folder), "--out", str(out)]
        )
    captured = capsys.readouterr()
    rows = _rows(out)

    assert code == 0
    assert list(rows[0]) == [
        "path",
        "class_1",
        "probability_1",
        "class_2",
        "probability_2",
        "class_3",
        "probability_3",
        "error",
    ]
    by_name = {row["path"].rsplit("/", 1)[-1]: row for row in rows}
    assert sorted(by_name) == [
        "IM0001",
        "axial.jpg",
        "broken.jpg",
        "coronal.png",
        "slice2.dcm",
    ]
    broken = by_name.pop("broken.jpg")
    assert broken["error"] and broken["class_1"] == "" and broken["probability_1"] == ""
    for row in by_name.values():
        assert row["error"] == ""
        assert {row[f"class_{k}"] for k in (1, 2, 3)} <= set(CLASS_NAMES)
        top = [float(row[f"probability_{k}"]) for k in (1, 2, 3)]
        assert top == sorted(top, reverse=True) and 0 < sum(top) <= 1 + 1e-6

    assert "predicted 4 of 5 file(s)" in captured.out
    assert "unreadable: 1" in captured.out
    counts = [
        int(line.split()[-1])
        for line in captured.out.splitlines()
        if line.startswith("  ")
    ]
    assert sum(counts) == 4
    assert "broken.jpg" in caplog.text  # the skipped file is logged

    # No identifying header value reaches the CSV, the terminal or the log.
    written = out.read_text(encoding="utf-8")
    for value in FAKE_PATIENT.values():
        for text in (written, captured.out, captured.err, caplog.text):
            assert value not in text
            assert value.split("^")[0] not in text


def test_a_dicom_without_pixels_is_an_error_row_that_names_no_one(
    small_model_file, tmp_path, capsys
):
    empty = write_mr_dicom(tmp_path / "header-only.dcm", None)
    out = tmp_path / "p.csv"
    assert (
        main(
            [
                "predict",
                str(small_model_file),
                str(empty),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    (row,) = _rows(out)
    assert "no pixel data" in row["error"]
    text = out.read_text() + capsys.readouterr().err
    assert all(value not in text for value in FAKE_PATIENT.values())


def test_prediction_matches_evaluation_on_real_slices(classifier, real_sample):
    records = [
        Record(path.relative_to(real_sample).as_posix(), CLASS_NAMES[0])
        for path in sorted(real_sample.rglob("*.jp*g"))[:6]
    ]
    kept, expected = predict_records(classifier, records, real_sample)
    predicted = predict_files(
        classifier, [str(real_sample / r.path) for r in records], batch_size=4
    )
    assert kept.tolist() == list(range(6))
    np.testing.assert_allclose(
        np.stack([p.probabilities for p in predicted]), expected, rtol=1e-5, atol=1e-6
    )


def test_nothing_to_predict_is_a_usage_error(small_model_file, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(
        [
            "predict",
            str(small_model_file),
            str(tmp_path / "empty"),
            "--out",
            str(tmp_path / "p.csv"),
        ]
    )
    assert code == 2
    assert "No image or DICOM file found" in capsys.readouterr().err


def test_a_missing_file_and_an_empty_pattern_get_their_own_reasons(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_slice(tmp_path / "nope.jpg", 32)
    with pytest.raises(FileNotFoundError, match="no file matches this pattern"):
        read_slice(tmp_path / "*.png", 32)
