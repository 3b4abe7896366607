"""Checking that a model's classes are the classes of the data it meets.

A model's *class names* are its outputs in order; a data set folder's are the
17 classes of `neuropath.classes.CLASS_NAMES`; a split manifest's are given by
its ``label`` and ``class_name`` columns. Names, count and order must agree, or
every score computed would silently pair the wrong outputs with the wrong
labels.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

from neuropath.classes import canonical_class_name, short_name

__all__ = ["check_class_names", "check_manifest_classes"]

_ADVICE = (
    "A model scores only the classes it was trained on, in its own order: use "
    "data with the same classes, or train a model on this data."
)


def _names(names: Sequence[str]) -> str:
    shown = [short_name(n) if canonical_class_name(n) else n for n in names]
    return ", ".join(shown[:6]) + (
        f" and {len(shown) - 6} more" if len(shown) > 6 else ""
    )


def check_class_names(
    model_classes: Sequence[str],
    data_classes: Sequence[str],
    model_source: str,
    data_source: str,
) -> None:
    """Raises unless a model's classes equal the data's, in the same order.

    Args:
        model_classes: the model's class names in output order.
        data_classes: the data's class names in label order.
        model_source: the model file, for the message.
        data_source: the data folder or manifest, for the message.

    Raises:
        ValueError: the names, their count or their order differ; the message
            says which.
    """
    model_classes, data_classes = list(model_classes), list(data_classes)
    if model_classes == data_classes:
        return
    missing = [n for n in data_classes if n not in model_classes]
    extra = [n for n in model_classes if n not in data_classes]
    if missing or extra:
        detail = (
            f"the model has {len(model_classes)} classes, the data {len(data_classes)}"
        )
        if missing:
            detail += f"; not in the model: {_names(missing)}"
        if extra:
            detail += f"; not in the data: {_names(extra)}"
    else:
        first = next(
            i
            for i, (a, b) in enumerate(zip(model_classes, data_classes, strict=True))
            if a != b
        )
        detail = (
            f"the same {len(data_classes)} classes in another order (output "
            f"{first} is {model_classes[first]!r} in the model but label {first} "
            f"is {data_classes[first]!r} in the data)"
        )
    raise ValueError(
        f"Model {model_source!r} does not match the classes of {data_source!r}: "
        f"{detail}. {_ADVICE}"
    )


def check_manifest_classes(
    model_classes: Sequence[str], manifest: str | os.PathLike, model_source: str
) -> None:
    """Raises unless every ``label`` of a split manifest names the model's class.

    Args:
        model_classes: the model's class names in output order.
        manifest: a split manifest CSV with ``label`` and ``class_name``.
        model_source: the model file, for the message.

    Raises:
        ValueError: a label is past the model's outputs or names another class.
    """
    model_classes = list(model_classes)
    labels: dict[int, str] = {}
    with open(
        manifest, newline="", encoding="utf-8", errors="surrogateescape"
    ) as handle:
        for row in csv.DictReader(handle):
            if row.get("label", "").strip().isdigit():
                name = canonical_class_name(row["class_name"]) or row["class_name"]
                labels.setdefault(int(row["label"]), name)
    for label, name in sorted(labels.items()):
        if label >= len(model_classes) or model_classes[label] != name:
            actual = (
                repr(model_classes[label])
                if label < len(model_classes)
                else f"past its {len(model_classes)} outputs"
            )
            raise ValueError(
                f"Model {model_source!r} does not match the classes of "
                f"{str(manifest)!r}: label {label} is {name!r} in the manifest "
                f"but the model's output {label} is {actual}. {_ADVICE}"
            )
