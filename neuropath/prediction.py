"""Batch prediction on unlabelled image files, written to a CSV file.

*Inputs* are files, folders (searched recursively) and glob patterns; each
file is an ordinary image (the formats of `neuropath.dataset`) or a DICOM
slice (`neuropath.dicom`). A file that cannot be read keeps its row in the
CSV, with the *error*, and the batch goes on. Images are prepared exactly as
for training and evaluation: RGB, padded to a square, resized.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf

from neuropath.dataset import IMAGE_EXTENSIONS, image_problem, load_image
from neuropath.dicom import DICOM_EXTENSIONS, is_dicom, read_dicom_slice

__all__ = [
    "FilePrediction",
    "expand_inputs",
    "predict_files",
    "predict_to_csv",
    "predicted_class_counts",
    "read_slice",
    "write_predictions_csv",
]

logger = logging.getLogger(__name__)

TOP_K = 3
_GLOB_CHARACTERS = frozenset("*?[")


@dataclasses.dataclass
class FilePrediction:
    """The model's answer for one file.

    Attributes:
        path: the file, as found from the inputs.
        probabilities: class probabilities, shape ``(n_classes,)``; ``None``
            when the file could not be read.
        error: why the file could not be read; empty otherwise.
    """

    path: str
    probabilities: np.ndarray | None = None
    error: str = ""


def _is_slice_file(path: Path) -> bool:
    """Whether a file found in a folder should be predicted."""
    if path.name.startswith(".") or not path.is_file():
        return False
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS or suffix in DICOM_EXTENSIONS:
        return True
    # DICOM exports often name slices without an extension (IM0001).
    return suffix == "" and is_dicom(path)


def _folder_files(folder: Path) -> list[str]:
    return [str(p) for p in sorted(folder.rglob("*")) if _is_slice_file(p)]


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """The files named by files, folders and glob patterns, in input order.

    Folders are searched recursively for image and DICOM files (hidden files
    and other files are passed over). A file named directly is kept whatever
    its extension. A path that does not exist, or a pattern that matches
    nothing, is kept as it is, so that its row reports the problem.

    Args:
        inputs: file paths, folder paths, or patterns such as
            ``"scans/**/*.dcm"``.

    Returns:
        File paths without duplicates.
    """
    found: list[str] = []
    for item in inputs:
        item = os.fspath(item)
        path = Path(item)
        if path.is_dir():
            found += _folder_files(path)
        elif path.exists() or not _GLOB_CHARACTERS & set(item):
            found.append(item)
        else:
            matches = sorted(glob.glob(item, recursive=True))
            for match in matches:
                match = Path(match)
                if match.is_dir():
                    found += _folder_files(match)
                elif _is_slice_file(match):
                    found.append(str(match))
            if not matches:
                found.append(item)
    return list(dict.fromkeys(found))


def read_slice(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """Reads an image or DICOM file as the model's input.

    Args:
        path: the file.
        image_size: side of the square model input.

    Returns:
        float32 RGB pixels in 0-255, shape ``(image_size, image_size, 3)``.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError, OSError, tf.errors.OpError: the file cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        if _GLOB_CHARACTERS & set(str(path)) and not path.exists():
            raise FileNotFoundError("no file matches this pattern")
        raise FileNotFoundError("no such file")
    if is_dicom(path):
        pixels = read_dicom_slice(path)
        return tf.image.resize_with_pad(pixels, image_size, image_size).numpy()
    # Bytes: names that are not valid UTF-8 cannot become a string tensor.
    return load_image(tf.constant(os.fsencode(path)), image_size).numpy()


def _short_reason(path: str, err: Exception) -> str:
    """One line saying why a file failed, without TensorFlow's op trace."""
    if isinstance(err, tf.errors.OpError) and Path(path).is_file():
        reason = image_problem(path) or err.message.strip().splitlines()[0]
    else:
        reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return " ".join(reason.split())[:300]


def _try_read(path: str, image_size: int) -> tuple[np.ndarray | None, str]:
    try:
        return read_slice(path, image_size), ""
    except Exception as err:  # Decoders raise many types; each becomes a row.
        reason = _short_reason(path, err)
        logger.warning("Skipping %s: %s", path, reason)
        return None, reason


def predict_files(
    classifier,
    paths: Sequence[str],
    batch_size: int = 32,
    progress: bool = False,
    workers: int | None = None,
) -> list[FilePrediction]:
    """Class probabilities for each file, in batches.

    Args:
        classifier: a `NeuropathologyClassifier`.
        paths: the files, for example from `expand_inputs`.
        batch_size: images per forward pass; 32 by default.
        progress: show a progress bar on standard output.
        workers: threads decoding files; up to 4 by default.

    Returns:
        One `FilePrediction` per path, in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; received {batch_size}.")
    import keras

    size = classifier.image_size
    bar = keras.utils.Progbar(len(paths), unit_name="image") if progress else None
    results: list[FilePrediction] = []
    with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start : start + batch_size])
            loaded = list(pool.map(lambda p: _try_read(p, size), chunk))
            images = [image for image, _ in loaded if image is not None]
            probabilities = iter(
                classifier.probabilities(np.stack(images)) if images else []
            )
            for path, (image, error) in zip(chunk, loaded, strict=True):
                row = next(probabilities) if image is not None else None
                results.append(FilePrediction(path, row, error))
            if bar is not None:
                bar.add(len(chunk))
    return results


def write_predictions_csv(
    predictions: Sequence[FilePrediction],
    class_names: Sequence[str],
    path: str | os.PathLike,
    top_k: int = TOP_K,
) -> Path:
    """Writes one row per file: its top classes and probabilities, or its error.

    Columns: ``path``, ``class_1``, ``probability_1`` ... ``class_k``,
    ``probability_k``, ``error``. The file is written under a temporary name
    and renamed, so an interrupted run never leaves half a CSV.

    Args:
        predictions: the output of `predict_files`.
        class_names: the model's class names in output order.
        path: the CSV file.
        top_k: classes per row; 3 by default.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["path"]
    for rank in range(1, top_k + 1):
        header += [f"class_{rank}", f"probability_{rank}"]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*header, "error"])
        for p in predictions:
            cells = [p.path]
            if p.probabilities is None:
                cells += [""] * (2 * top_k)
            else:
                for k in np.argsort(-p.probabilities, kind="stable")[:top_k]:
                    cells += [class_names[k], f"{p.probabilities[k]:.6f}"]
            writer.writerow([*cells, p.error])
    os.replace(tmp, path)
    return path


def predicted_class_counts(
    predictions: Sequence[FilePrediction], class_names: Sequence[str]
) -> dict[str, int]:
    """How many files were given each class, in class order, zeros left out."""
    counts = np.zeros(len(class_names), dtype=int)
    for p in predictions:
        if p.probabilities is not None:
            counts[int(np.argmax(p.probabilities))] += 1
    return {name: int(n) for name, n in zip(class_names, counts, strict=True) if n}


def predict_to_csv(
    model_path: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[list[FilePrediction], list[str]]:
    """Loads a model, predicts every input file and writes the CSV.

    Args:
        model_path: a ``.keras`` file saved by neuropath.
        inputs: files, folders and glob patterns.
        out: the CSV file to write.
        batch_size: images per forward pass.
        progress: show a progress bar on standard output.

    Returns:
        The predictions, one per file, and the model's class names.

    Raises:
        ValueError: the inputs name no file at all.
    """
    from neuropathology_model import NeuropathologyClassifier

    paths = expand_inputs(inputs)
    if not paths:
        raise ValueError(
            f"No image or DICOM file found in {list(map(str, inputs))}; pass "
            "files, folders or glob patterns such as 'scans/*.dcm'."
        )
    classifier = NeuropathologyClassifier.load(model_path)
    logger.info("Predicting %d file(s) with %s", len(paths), model_path)
    predictions = predict_files(classifier, paths, batch_size, progress)
    write_predictions_csv(predictions, classifier.class_names, out)
    return predictions, list(classifier.class_names)
