"""Evaluation of a trained classifier on a labelled set of images.

The *report* folder holds ``report.json`` (accuracy, the per-class precision,
recall and F1 table, the confusion matrix), ``predictions.csv`` and
``confusion_matrix.png``. Metrics come from scikit-learn; a class absent from
the evaluated images is listed as absent rather than scored.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

from neuropath.classes import short_name
from neuropath.dataset import Record, load_image

__all__ = [
    "classification_metrics",
    "evaluate_model",
    "evaluate_records",
    "evaluate_run",
    "predict_records",
    "write_report_dir",
]

logger = logging.getLogger(__name__)


def predict_records(
    classifier, records: Sequence[Record], root: str | os.PathLike, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities for each record that decodes.

    Args:
        classifier: a `NeuropathologyClassifier`.
        records: the images, paths relative to ``root``.
        root: the data set folder.
        batch_size: images per forward pass.

    Returns:
        ``(kept, probabilities)``: indices into ``records`` of the images that
        decoded, shape ``(n,)``, and their probabilities ``(n, n_classes)``.
    """
    root = Path(root)
    size = classifier.image_size
    paths = [str(root / r.path) for r in records]
    dataset = (
        tf.data.Dataset.from_tensor_slices((paths, np.arange(len(paths))))
        .map(
            lambda path, i: (load_image(path, size), i),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .ignore_errors(log_warning=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    kept, probabilities = [], []
    for images, indices in dataset:
        probabilities.append(classifier.model(images, training=False).numpy())
        kept.append(indices.numpy())
    if not kept:
        return np.zeros(0, int), np.zeros((0, len(classifier.class_names)))
    return np.concatenate(kept), np.concatenate(probabilities)


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, per-class table and confusion matrix over the present classes.

    Args:
        y_true: true class indices, shape ``(n,)``.
        y_pred: predicted class indices, shape ``(n,)``.
        class_names: names in output order.

    Returns:
        A JSON-ready dict. ``per_class`` and the macro averages cover only the
        classes with at least one true example; the others are listed in
        ``absent_classes``. The confusion matrix spans every class, rows true.
    """
    present = sorted(set(int(k) for k in y_true))
    table = classification_report(
        y_true,
        y_pred,
        labels=present,
        target_names=[class_names[k] for k in present],
        output_dict=True,
        zero_division=0,
    )
    per_class = {
        class_names[k]: {
            "short_name": short_name(class_names[k]),
            **{m: float(v) for m, v in table[class_names[k]].items()},
        }
        for k in present
    }
    return {
        "n_images": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_avg": {m: float(v) for m, v in table["macro avg"].items()},
        "weighted_avg": {m: float(v) for m, v in table["weighted avg"].items()},
        "per_class": per_class,
        "absent_classes": [
            name for k, name in enumerate(class_names) if k not in present
        ],
        "confusion_matrix": {
            "labels": [short_name(name) for name in class_names],
            "rows_true_columns_predicted": confusion_matrix(
                y_true, y_pred, labels=list(range(len(class_names)))
            ).tolist(),
        },
    }


def plot_confusion_matrix(
    matrix: np.ndarray, labels: Sequence[str], path: Path
) -> None:
    """Draws a confusion matrix of counts with short class names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(6.0, 0.55 * len(labels))
    figure, axes = plt.subplots(figsize=(size, size * 0.9))
    display = ConfusionMatrixDisplay(matrix, display_labels=list(labels))
    display.plot(
        ax=axes, cmap="Blues", colorbar=False, xticks_rotation=60, values_format="d"
    )
    axes.set_title(f"Confusion matrix ({int(matrix.sum())} images)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report_dir(out_dir: str | os.PathLike, files: dict[str, Any]) -> Path:
    """Writes a report folder whole or not at all.

    Files are written into a temporary sibling folder that replaces
    ``out_dir`` only once every file is complete.

    Args:
        out_dir: the report folder.
        files: file name to content: a dict (JSON), a str (text), or a
            callable taking the destination path.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    # mkdtemp makes an owner-only folder; a report is meant to be shared.
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        for name, content in files.items():
            target = staging / name
            if isinstance(content, dict):
                target.write_text(json.dumps(content, indent=2, ensure_ascii=False))
            elif isinstance(content, str):
                target.write_text(content, encoding="utf-8")
            else:
                content(target)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
        os.replace(staging, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _predictions_writer(records, kept, probabilities, class_names):
    def write(path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                ["path", "true_class", "predicted_class", "confidence"]
                + [short_name(name) for name in class_names]
            )
            for index, row in zip(kept, probabilities, strict=True):
                writer.writerow(
                    [
                        records[index].path,
                        records[index].class_name,
                        class_names[int(np.argmax(row))],
                        f"{row.max():.6f}",
                    ]
                    + [f"{p:.6f}" for p in row]
                )

    return write


def evaluate_records(
    classifier,
    records: Sequence[Record],
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    batch_size: int = 32,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluates a classifier on labelled images and writes the report folder.

    Args:
        classifier: a `NeuropathologyClassifier`.
        records: the labelled images, paths relative to ``root``.
        root: the data set folder.
        out_dir: the report folder (replaced whole).
        batch_size: images per forward pass.
        provenance: where the model and data came from, stored in the report.

    Returns:
        The report as written to ``report.json``.
    """
    if not records:
        raise ValueError(f"No images to evaluate under {str(root)!r}.")
    class_names = list(classifier.class_names)
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({r.class_name for r in records} - set(index))
    if unknown:
        raise ValueError(
            f"The model's classes do not include {unknown}; it knows {class_names}."
        )

    kept, probabilities = predict_records(classifier, records, root, batch_size)
    y_true = np.array([index[records[i].class_name] for i in kept], dtype=int)
    y_pred = probabilities.argmax(axis=1)
    unreadable = sorted(set(range(len(records))) - set(kept.tolist()))
    if unreadable:
        logger.warning(
            "%d image(s) could not be decoded and were not scored", len(unreadable)
        )

    report = {
        **classification_metrics(y_true, y_pred, class_names),
        "unreadable_files": [records[i].path for i in unreadable],
        "data_dir": str(root),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(provenance or {}),
    }
    matrix = np.array(report["confusion_matrix"]["rows_true_columns_predicted"])
    labels = report["confusion_matrix"]["labels"]
    write_report_dir(
        out_dir,
        {
            "report.json": report,
            "predictions.csv": _predictions_writer(
                records, kept, probabilities, class_names
            ),
            "confusion_matrix.png": lambda path: plot_confusion_matrix(
                matrix, labels, path
            ),
        },
    )
    logger.info(
        "Accuracy %.4f on %d images; report in %s",
        report["accuracy"],
        len(kept),
        out_dir,
    )
    return report


def evaluate_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    batch_size: int = 32,
) -> tuple[dict[str, Any], Path]:
    """Evaluates a run's final model on the test split of its manifest.

    Args:
        run_dir: a run folder written by ``neuropath train``.
        out_dir: the report folder; ``<run_dir>/evaluation`` by default.
        data_dir: where the images are, if they moved since training.
        batch_size: images per forward pass.

    Returns:
        The report and the report folder.
    """
    from neuropath.run_folder import open_run

    run = open_run(run_dir, data_dir)
    out_dir = Path(out_dir or run.run_dir / "evaluation")
    provenance = {"model": str(run.run_dir / "model.keras"), "run_dir": str(run_dir)}
    report = evaluate_records(
        run.classifier, run.split("test"), run.data_dir, out_dir, batch_size, provenance
    )
    return report, out_dir


def evaluate_model(
    model_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    manifest: str | os.PathLike | None = None,
    batch_size: int = 32,
) -> tuple[dict[str, Any], Path]:
    """Evaluates a saved model on a data set folder.

    Args:
        model_path: a ``.keras`` file saved by neuropath.
        data_dir: a folder in the data set layout.
        out_dir: the report folder.
        manifest: a split manifest; its test rows are evaluated (all rows if
            it has no test split). Without it, every image in ``data_dir``.
        batch_size: images per forward pass.

    Returns:
        The report and the report folder.
    """
    from neuropath.dataset import read_manifest, scan_dataset
    from neuropathology_model import NeuropathologyClassifier

    classifier = NeuropathologyClassifier.load(model_path)
    if manifest:
        records = read_manifest(manifest, classifier.class_names)
        test = [r for r in records if r.split == "test"]
        records = test or records
    else:
        records = scan_dataset(data_dir, classifier.class_names).records
    provenance = {
        "model": str(model_path),
        "manifest": str(manifest) if manifest else None,
    }
    report = evaluate_records(
        classifier, records, data_dir, out_dir, batch_size, provenance
    )
    return report, Path(out_dir)
