"""Evaluation of a trained classifier on a labelled set of images.

The *report folder* holds ``report.json`` (every metric, with bootstrap
intervals and the pathology and sequence views), ``predictions.csv``, the
figures, ``report.md`` and a self-contained ``report.html``. It is written
whole or not at all. Metrics come from `neuropath.metrics`; a class absent
from the evaluated images is listed as absent rather than scored.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from neuropath import report_figures as figures
from neuropath.class_groups import VIEWS, view_metrics
from neuropath.classes import short_name
from neuropath.dataset import Record, load_image
from neuropath.metrics import (
    DEFAULT_CALIBRATION_BINS,
    bootstrap_intervals,
    check_predictions,
    label_metrics,
    probability_metrics,
)
from neuropath.report_page import FIGURES, read_figures, render_html, render_markdown

__all__ = [
    "classification_metrics",
    "describe_provenance",
    "evaluate_model",
    "evaluate_records",
    "evaluate_run",
    "predict_records",
    "summarize_predictions",
    "worst_mistakes",
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
        # The caller reports the files left out, once.
        .ignore_errors(log_warning=False)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    kept, probabilities = [], []
    for images, indices in dataset:
        probabilities.append(classifier.probabilities(images))
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
        The dict of `neuropath.metrics.label_metrics`, with short class names
        in ``per_class`` and on the confusion matrix.
    """
    return label_metrics(
        y_true, y_pred, class_names, [short_name(name) for name in class_names]
    )


def summarize_predictions(
    y_true: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    n_bins: int = DEFAULT_CALIBRATION_BINS,
) -> dict[str, Any]:
    """Every metric of the report, from true classes and probabilities alone.

    Args:
        y_true: true class indices, shape ``(n,)``.
        probabilities: class probabilities, shape ``(n, n_classes)``.
        class_names: names in output order.
        n_resamples: bootstrap resamples for the 95% intervals; 1,000 by
            default.
        seed: the bootstrap seed; 0 by default.
        n_bins: calibration bins; 15 by default.

    Returns:
        The JSON-ready metrics of ``report.json``: those of
        `classification_metrics` (with ``roc_auc`` added per class and to the
        averages), top-2 and top-3 accuracy, log loss, ``calibration``,
        ``confidence_intervals`` and the ``views``.
    """
    y_true, probabilities = check_predictions(y_true, probabilities, len(class_names))
    y_pred = probabilities.argmax(axis=1)
    table = classification_metrics(y_true, y_pred, class_names)
    scores = probability_metrics(y_true, probabilities, n_bins)
    for k, auc in scores["roc_auc"]["by_label"].items():
        table["per_class"][class_names[k]]["roc_auc"] = auc
    table["macro_avg"]["roc_auc"] = scores["roc_auc"]["macro"]
    table["weighted_avg"]["roc_auc"] = scores["roc_auc"]["weighted"]
    intervals = bootstrap_intervals(
        y_true, y_pred, len(class_names), n_resamples=n_resamples, seed=seed
    )
    return {
        "class_names": list(class_names),
        **table,
        "top_2_accuracy": scores["top_2_accuracy"],
        "top_3_accuracy": scores["top_3_accuracy"],
        "log_loss": scores["log_loss"],
        "calibration": {
            **scores["calibration"],
            "binning": (
                f"{n_bins} equal-width bins of the top-1 probability on [0, 1]; "
                "ECE is the image-weighted mean of |accuracy - mean confidence|"
            ),
        },
        "confidence_intervals": {
            "level": 0.95,
            "method": (
                "percentile bootstrap; images resampled with replacement "
                "within each true class"
            ),
            "n_resamples": n_resamples,
            "seed": seed,
            **intervals,
        },
        "views": {
            view: view_metrics(
                y_true, probabilities, class_names, view, n_resamples, seed
            )
            for view in VIEWS
        },
    }


def worst_mistakes(
    y_true: np.ndarray, probabilities: np.ndarray, n: int = 12
) -> np.ndarray:
    """Indices of the ``n`` wrong predictions made with the highest probability.

    Args:
        y_true: true class indices, shape ``(n_images,)``.
        probabilities: shape ``(n_images, n_classes)``.
        n: how many to return at most.

    Returns:
        Indices into the images, most confident first.
    """
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y_true)
    order = np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")
    return wrong[order[:n]]


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


def _predictions_writer(
    paths: Sequence[str],
    true_classes: Sequence[str],
    probabilities: np.ndarray,
    class_names: Sequence[str],
) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(
                ["path", "true_class", "predicted_class", "confidence"]
                + [short_name(name) for name in class_names]
            )
            for image, truth, row in zip(
                paths, true_classes, probabilities, strict=True
            ):
                writer.writerow(
                    [image, truth, class_names[int(np.argmax(row))], f"{row.max():.6f}"]
                    + [f"{p:.6f}" for p in row]
                )

    return write


def _mistake_rows(
    scored: Sequence[Record],
    y_true: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
) -> list[dict[str, Any]]:
    """The `worst_mistakes` as JSON rows: path, classes and probabilities."""
    return [
        {
            "path": scored[i].path,
            "true_class": scored[i].class_name,
            "predicted_class": class_names[int(probabilities[i].argmax())],
            "probability": float(probabilities[i].max()),
            "true_class_probability": float(probabilities[i, y_true[i]]),
        }
        for i in worst_mistakes(y_true, probabilities)
    ]


def _mistake_overlays(
    classifier,
    mistakes: Sequence[dict[str, Any]],
    root: str | os.PathLike,
    thumbnails: dict[str, np.ndarray | None],
) -> dict[str, np.ndarray | None]:
    """Grad-CAM overlays of the predicted class on the mistakes' thumbnails."""
    from neuropath.explanation import overlay_thumbnails

    if not mistakes:
        return {}
    keys = [m["path"] for m in mistakes]
    try:
        overlays = overlay_thumbnails(
            classifier,
            [Path(root) / key for key in keys],
            [thumbnails.get(key) for key in keys],
            class_indices=[
                list(classifier.class_names).index(m["predicted_class"])
                for m in mistakes
            ],
        )
    except ValueError as err:
        # A model not built by NeuropathologyClassifier has no backbone to tap;
        # the report is still worth writing without the heat maps.
        logger.warning("Report without Grad-CAM overlays: %s", err)
        return {}
    return dict(zip(keys, overlays, strict=True))


def _sha256(path: str | os.PathLike) -> str | None:
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    import keras
    import sklearn

    import neuropath

    return {
        "neuropath": neuropath.__version__,
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def describe_provenance(
    provenance: dict[str, Any] | None, data_dir: str | os.PathLike
) -> dict[str, Any]:
    """Where a report's model and images came from, with file hashes.

    Args:
        provenance: any of ``model`` (the model file), ``manifest`` (the split
            manifest) and ``run_dir``; a run folder's own manifest is used
            when no manifest is named.
        data_dir: the image folder.

    Returns:
        ``provenance`` completed with ``model_sha256``, ``manifest`` and
        ``manifest_sha256`` (``None`` without a manifest), ``data_dir``,
        ``created`` (UTC, ISO 8601) and ``versions``.
    """
    result = {"model": None, "manifest": None, "run_dir": None, **(provenance or {})}
    for key in ("model", "manifest", "run_dir"):
        if result[key]:
            result[key] = str(Path(result[key]).resolve())
    if not result["manifest"] and result["run_dir"]:
        candidate = Path(result["run_dir"]) / "split_manifest.csv"
        result["manifest"] = str(candidate) if candidate.is_file() else None
    result["model_sha256"] = _sha256(result["model"]) if result["model"] else None
    result["manifest_sha256"] = (
        _sha256(result["manifest"]) if result["manifest"] else None
    )
    result["data_dir"] = str(Path(data_dir).resolve())
    result["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["versions"] = _versions()
    return result


def _figure_writers(
    report: dict[str, Any],
    y_true: np.ndarray,
    probabilities: np.ndarray,
    thumbnails: dict[str, np.ndarray | None],
    overlays: dict[str, np.ndarray | None] | None = None,
) -> dict[str, Callable[[Path], Any]]:
    """File name to a function drawing that figure."""
    matrix = np.array(report["confusion_matrix"]["rows_true_columns_predicted"])
    labels = report["confusion_matrix"]["labels"]
    names = report["class_names"]
    calibration = report["calibration"]
    writers = {
        "confusion_matrix.png": lambda path: figures.plot_confusion_matrix(
            matrix, labels, path
        ),
        "confusion_matrix_normalized.png": lambda path: figures.plot_confusion_matrix(
            matrix, labels, path, normalize=True
        ),
        "roc_curves.png": lambda path: figures.plot_roc_curves(
            y_true,
            probabilities,
            labels,
            {
                k: report["per_class"][name]["roc_auc"]
                for k, name in enumerate(names)
                if name in report["per_class"]
            },
            path,
        ),
        "reliability.png": lambda path: figures.plot_reliability(
            calibration["bins"], calibration["expected_calibration_error"], path
        ),
        "f1_by_class.png": lambda path: figures.plot_f1_by_class(
            labels,
            [report["per_class"].get(n, {}).get("f1-score") for n in names],
            [int(report["per_class"].get(n, {}).get("support", 0)) for n in names],
            report["macro_avg"]["f1-score"],
            path,
        ),
    }
    for view, data in report["views"].items():
        writers[f"{view}_confusion.png"] = lambda path, data=data, view=view: (
            figures.plot_confusion_matrix(
                np.array(data["confusion_matrix"]["rows_true_columns_predicted"]),
                data["groups"],
                path,
                normalize=True,
                noun="group",
                title=f"{view.capitalize()}: share of each true group "
                f"(accuracy {100 * data['accuracy']:.1f}%)",
            )
        )
    if report["worst_mistakes"]:
        writers["mistakes.png"] = lambda path: figures.plot_mistakes(
            [thumbnails.get(m["path"]) for m in report["worst_mistakes"]],
            [
                f"True: {short_name(m['true_class'])}\n"
                f"Predicted: {short_name(m['predicted_class'])}\n"
                f"probability {m['probability']:.2f}"
                for m in report["worst_mistakes"]
            ],
            path,
            overlays=[
                (overlays or {}).get(m["path"]) for m in report["worst_mistakes"]
            ],
        )
    return writers


def _page_writers(
    report: dict[str, Any],
    thumbnails: dict[str, np.ndarray | None],
    overlays: dict[str, np.ndarray | None] | None = None,
) -> dict[str, Callable[[Path], Any]]:
    """``report.md`` and ``report.html``, laid out from the figures beside them."""
    names = [name for name, _, _ in FIGURES] + [
        f"{view}_confusion.png" for view in report["views"]
    ]

    def markdown(path: Path) -> None:
        present = [n for n in [*names, "mistakes.png"] if (path.parent / n).is_file()]
        path.write_text(render_markdown(report, present), encoding="utf-8")

    def page(path: Path) -> None:
        html = render_html(
            report, read_figures(path.parent, names), thumbnails, overlays
        )
        path.write_text(html, encoding="utf-8")

    return {"report.md": markdown, "report.html": page}


def evaluate_records(
    classifier,
    records: Sequence[Record],
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    batch_size: int = 32,
    provenance: dict[str, Any] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    unusable: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Evaluates a classifier on labelled images and writes the report folder.

    Args:
        classifier: a `NeuropathologyClassifier`.
        records: the labelled images, paths relative to ``root``.
        root: the data set folder.
        out_dir: the report folder (replaced whole).
        batch_size: images per forward pass.
        provenance: ``model``, ``manifest`` and ``run_dir`` paths, stored with
            their hashes (see `describe_provenance`).
        n_resamples: bootstrap resamples for the 95% intervals; 1,000 by
            default.
        seed: the bootstrap seed; 0 by default.
        unusable: ``(path, reason)`` of files already left out, listed with
            those that fail to decode here under ``unreadable_files``.

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
    unreadable = sorted(set(range(len(records))) - set(kept.tolist()))
    skipped = [path for path, _ in unusable] + [records[i].path for i in unreadable]
    if skipped:
        logger.warning(
            "%d unusable image file(s) were not scored; listed under "
            "unreadable_files in %s",
            len(skipped),
            Path(out_dir) / "report.json",
        )
    if not len(kept):
        raise ValueError(
            f"None of the {len(records)} images under {str(root)!r} could be "
            "decoded; check the folder and the manifest's paths."
        )
    scored = [records[i] for i in kept]
    y_true = np.array([index[r.class_name] for r in scored], dtype=int)

    report = summarize_predictions(
        y_true, probabilities, class_names, n_resamples=n_resamples, seed=seed
    )
    report["worst_mistakes"] = _mistake_rows(scored, y_true, probabilities, class_names)
    report["unreadable_files"] = skipped
    report["provenance"] = describe_provenance(provenance, root)
    thumbnails = {
        m["path"]: figures.load_thumbnail(Path(root) / m["path"])
        for m in report["worst_mistakes"]
    }
    overlays = _mistake_overlays(classifier, report["worst_mistakes"], root, thumbnails)

    predictions = _predictions_writer(
        [r.path for r in scored],
        [r.class_name for r in scored],
        probabilities,
        class_names,
    )
    write_report_dir(
        out_dir,
        {
            "report.json": report,
            "predictions.csv": predictions,
            **_figure_writers(report, y_true, probabilities, thumbnails, overlays),
            **_page_writers(report, thumbnails, overlays),
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
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, Any], Path]:
    """Evaluates a run's final model on the test split of its manifest.

    Args:
        run_dir: a run folder written by ``neuropath train``.
        out_dir: the report folder; ``<run_dir>/evaluation`` by default.
        data_dir: where the images are, if they moved since training.
        batch_size: images per forward pass.
        n_resamples: bootstrap resamples for the 95% intervals.
        seed: the bootstrap seed.

    Returns:
        The report and the report folder.
    """
    from neuropath.run_folder import open_run

    run = open_run(run_dir, data_dir)
    out_dir = Path(out_dir or run.run_dir / "evaluation")
    provenance = {
        "model": str(run.run_dir / "model.keras"),
        "manifest": str(run.run_dir / "split_manifest.csv"),
        "run_dir": str(run_dir),
    }
    report = evaluate_records(
        run.classifier,
        run.split("test"),
        run.data_dir,
        out_dir,
        batch_size,
        provenance,
        n_resamples=n_resamples,
        seed=seed,
    )
    return report, out_dir


def _classes_to_score(model_classes: list[str], data_dir) -> list[str]:
    """The classes a model must output, in order, to be scored on a folder.

    The 17 classes for a model of 17 or more. A model of fewer (trained on a
    folder holding only some classes) is scored on its own classes, plus any
    other class whose folder holds files: a class the model cannot output is
    refused rather than silently dropped.
    """
    from neuropath.classes import CLASS_NAMES, canonical_class_name
    from neuropath.image_files import iter_class_files

    if len(model_classes) >= len(CLASS_NAMES):
        return list(CLASS_NAMES)
    wanted = set(model_classes)
    # A missing folder is reported by the scan that follows.
    folders = Path(data_dir).iterdir() if Path(data_dir).is_dir() else ()
    for folder in folders:
        name = canonical_class_name(folder.name)
        if name and folder.is_dir() and next(iter_class_files(folder), None):
            wanted.add(name)
    return [name for name in CLASS_NAMES if name in wanted]


def evaluate_model(
    model_path: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    manifest: str | os.PathLike | None = None,
    batch_size: int = 32,
    n_resamples: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, Any], Path]:
    """Evaluates a saved model on a data set folder.

    Args:
        model_path: a ``.keras`` file saved by neuropath.
        data_dir: a folder in the data set layout.
        out_dir: the report folder.
        manifest: a split manifest; its test rows are evaluated (all rows if
            it has no test split). Without it, every image in ``data_dir``.
        batch_size: images per forward pass.
        n_resamples: bootstrap resamples for the 95% intervals.
        seed: the bootstrap seed.

    Returns:
        The report and the report folder.
    """
    from neuropath.class_match import check_class_names, check_manifest_classes
    from neuropath.dataset import read_manifest, scan_dataset
    from neuropathology_model import NeuropathologyClassifier

    classifier = NeuropathologyClassifier.load(model_path)
    unusable = []
    if manifest:
        check_manifest_classes(classifier.class_names, manifest, str(model_path))
        records = read_manifest(manifest, classifier.class_names)
        test = [r for r in records if r.split == "test"]
        records = test or records
    else:
        check_class_names(
            classifier.class_names,
            _classes_to_score(classifier.class_names, data_dir),
            str(model_path),
            str(data_dir),
        )
        scan = scan_dataset(data_dir, classifier.class_names)
        records, unusable = scan.records, scan.unusable
    provenance = {
        "model": str(model_path),
        "manifest": str(manifest) if manifest else None,
    }
    report = evaluate_records(
        classifier,
        records,
        data_dir,
        out_dir,
        batch_size,
        provenance,
        n_resamples=n_resamples,
        seed=seed,
        unusable=unusable,
    )
    return report, Path(out_dir)
