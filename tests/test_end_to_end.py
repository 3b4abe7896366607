"""Short training runs through the command line, as a user would start them."""

import csv
import json
from pathlib import Path

import pytest
import yaml

from neuropath.classes import CLASS_NAMES
from neuropath.cli import main

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"

# Small and fast: a slim backbone at 64 px, two epochs.
FAST = [
    "data.image_size=64",
    "train.batch_size=16",
    "train.fine_tune.epochs=2",
    "train.early_stopping_patience=null",
]


def _summary(stdout: str) -> list[str]:
    """The lines printed after training, from the last blank line on."""
    lines = stdout.splitlines()
    start = len(lines) - lines[::-1].index("")
    return lines[start:]


def _split_counts(run_dir):
    with open(run_dir / "split_manifest.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}


def test_demo_subset_trains_evaluates_and_fills_the_run_folder(
    demo_subset, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            "--config",
            str(DEMO_CONFIG),
            "--data-dir",
            str(demo_subset),
            "--run-dir",
            str(run_dir),
            *FAST,
        ]
    )
    out = _summary(capsys.readouterr().out)

    assert code == 0
    assert out[0].startswith("test accuracy: ")
    accuracy = float(out[0].split(": ")[1])
    assert 0.0 <= accuracy <= 1.0
    assert out[1] == f"model: {run_dir / 'model.keras'}"
    for name in [
        "config.yaml",
        "class_names.json",
        "split_manifest.csv",
        "training_log.csv",
        "model.keras",
        "checkpoints/best.keras",
        "checkpoints/last.keras",
        "evaluation/report.json",
        "evaluation/confusion_matrix.png",
        "evaluation/predictions.csv",
        "evaluation/report.html",
        "evaluation/report.md",
    ]:
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "logs" / "train").glob("events.out.tfevents.*"))
    assert json.loads((run_dir / "class_names.json").read_text()) == list(CLASS_NAMES)
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["data"]["image_size"] == 64
    assert _split_counts(run_dir) == {"train": 68, "val": 17, "test": 17}

    with open(run_dir / "training_log.csv", encoding="utf-8") as handle:
        log = list(csv.DictReader(handle))
    assert [row["epoch"] for row in log] == ["0", "1"]
    assert {"loss", "accuracy", "val_loss", "learning_rate"} <= set(log[0])

    report = json.loads((run_dir / "evaluation" / "report.json").read_text())
    assert report["n_images"] == 17
    assert report["accuracy"] == pytest.approx(accuracy, abs=5e-5)

    # Evaluating the run again reuses the manifest's test split.
    assert main(["evaluate", str(run_dir), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["accuracy"] == pytest.approx(report["accuracy"])
    assert again["confusion_matrix"] == report["confusion_matrix"]


def test_real_mri_sample_trains_in_two_stages_and_writes_a_report(
    real_sample, tmp_path, capsys
):
    run_dir = tmp_path / "real"
    code = main(
        [
            "train",
            "--config",
            str(DEMO_CONFIG),
            "--data-dir",
            str(real_sample),
            "--run-dir",
            str(run_dir),
            *FAST,
            "train.frozen.epochs=1",
        ]
    )
    assert code == 0
    assert _summary(capsys.readouterr().out)[0].startswith("test accuracy: ")
    with open(run_dir / "training_log.csv", encoding="utf-8") as handle:
        epochs = [row["epoch"] for row in csv.DictReader(handle)]
    assert epochs == ["0", "1", "2"]  # one frozen epoch, then two fine-tuning

    report = json.loads((run_dir / "evaluation" / "report.json").read_text())
    assert report["n_images"] == 14
    assert len(report["per_class"]) == 14
    assert sorted(report["absent_classes"]) == [
        n for n in CLASS_NAMES if n.startswith("Outros")
    ]

    out = tmp_path / "by-model"
    code = main(
        [
            "evaluate",
            "--model",
            str(run_dir / "model.keras"),
            "--data",
            str(real_sample),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert json.loads((out / "report.json").read_text())["n_images"] == 112


def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys):
    code = main(["train", "--config", str(DEMO_CONFIG), "train.epochs=3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("neuropath: error: Unknown config key")

    code = main(["evaluate", str(tmp_path)])
    assert code == 2
    assert "model.keras is missing" in capsys.readouterr().err
