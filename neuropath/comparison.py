"""Side-by-side comparison of two evaluation reports.

Each *metric row* holds both values, their difference (B minus A) and, for
the metrics with bootstrap intervals, whether the two 95% intervals
*overlap*. Intervals that do not overlap point to a real difference; overlap
alone does not prove there is none.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "MetricComparison",
    "compare_reports",
    "format_comparison",
    "load_report",
    "shared_images",
]


@dataclasses.dataclass(frozen=True)
class MetricComparison:
    """One metric of two reports.

    Attributes:
        name: the metric, as printed.
        a, b: its value in each report (``None`` when a report lacks it).
        interval_a, interval_b: 95% intervals, or ``None``.
        higher_is_better: the direction of improvement.
    """

    name: str
    a: float | None
    b: float | None
    interval_a: tuple[float, float] | None = None
    interval_b: tuple[float, float] | None = None
    higher_is_better: bool = True

    @property
    def difference(self) -> float | None:
        """``b - a``, or ``None`` when either is missing."""
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def intervals_overlap(self) -> bool | None:
        """Whether the intervals share any value; ``None`` without both."""
        if self.interval_a is None or self.interval_b is None:
            return None
        return (
            self.interval_a[0] <= self.interval_b[1]
            and self.interval_b[0] <= self.interval_a[1]
        )


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """Reads ``report.json`` from a report folder, or the file itself.

    Raises:
        FileNotFoundError: no report there.
    """
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"No evaluation report at {str(path)!r}; pass a report folder "
            "written by 'neuropath evaluate' or its report.json."
        )
    report = json.loads(file.read_text(encoding="utf-8"))
    report["_folder"] = str(file.parent)
    return report


def _get(report: Mapping[str, Any], *keys: str) -> Any:
    value: Any = report
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _interval(report: Mapping[str, Any], *keys: str) -> tuple[float, float] | None:
    value = _get(report, *keys)
    return tuple(value) if value else None


# Printed name, value getter, interval getter, higher is better.
_METRICS: tuple[tuple[str, Callable, Callable | None, bool], ...] = (
    (
        "accuracy",
        lambda r: _get(r, "accuracy"),
        lambda r: _interval(r, "confidence_intervals", "accuracy"),
        True,
    ),
    (
        "balanced accuracy",
        lambda r: _get(r, "balanced_accuracy"),
        lambda r: _interval(r, "confidence_intervals", "balanced_accuracy"),
        True,
    ),
    (
        "macro F1",
        lambda r: _get(r, "macro_avg", "f1-score"),
        lambda r: _interval(r, "confidence_intervals", "macro_f1"),
        True,
    ),
    ("macro precision", lambda r: _get(r, "macro_avg", "precision"), None, True),
    ("macro recall", lambda r: _get(r, "macro_avg", "recall"), None, True),
    ("weighted F1", lambda r: _get(r, "weighted_avg", "f1-score"), None, True),
    ("top-2 accuracy", lambda r: _get(r, "top_2_accuracy"), None, True),
    ("top-3 accuracy", lambda r: _get(r, "top_3_accuracy"), None, True),
    ("macro ROC AUC", lambda r: _get(r, "macro_avg", "roc_auc"), None, True),
    ("log loss", lambda r: _get(r, "log_loss"), None, False),
    (
        "calibration error (ECE)",
        lambda r: _get(r, "calibration", "expected_calibration_error"),
        None,
        False,
    ),
    (
        "pathology accuracy",
        lambda r: _get(r, "views", "pathology", "accuracy"),
        lambda r: _interval(r, "views", "pathology", "accuracy_ci"),
        True,
    ),
    (
        "sequence accuracy",
        lambda r: _get(r, "views", "sequence", "accuracy"),
        lambda r: _interval(r, "views", "sequence", "accuracy_ci"),
        True,
    ),
)


def compare_reports(
    a: Mapping[str, Any], b: Mapping[str, Any]
) -> list[MetricComparison]:
    """Pairs up the headline metrics of two reports.

    Args:
        a: the first report (the reference).
        b: the second report.

    Returns:
        One `MetricComparison` per metric, in a fixed order.
    """
    rows = []
    for name, value, interval, higher in _METRICS:
        rows.append(
            MetricComparison(
                name,
                value(a),
                value(b),
                interval(a) if interval else None,
                interval(b) if interval else None,
                higher,
            )
        )
    return rows


def _prediction_paths(report: Mapping[str, Any]) -> set[str] | None:
    file = Path(report.get("_folder", "")) / "predictions.csv"
    if not file.is_file():
        return None
    with open(file, newline="", encoding="utf-8") as handle:
        return {row["path"] for row in csv.DictReader(handle)}


def shared_images(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """A sentence saying whether two reports scored the same images."""
    paths_a, paths_b = _prediction_paths(a), _prediction_paths(b)
    if paths_a is None or paths_b is None:
        return (
            f"Images: {a.get('n_images')} in A, {b.get('n_images')} in B "
            "(predictions.csv missing, so not checked file by file)."
        )
    if paths_a == paths_b:
        return f"Both reports scored the same {len(paths_a)} images."
    return (
        f"The reports scored different images: {len(paths_a)} in A, "
        f"{len(paths_b)} in B, {len(paths_a & paths_b)} in both. Differences "
        "mix the models with the data."
    )


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _bounds(interval: tuple[float, float] | None) -> str:
    return "" if interval is None else f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def format_comparison(
    rows: list[MetricComparison], label_a: str = "A", label_b: str = "B"
) -> str:
    """The comparison as an aligned text table.

    Args:
        rows: the output of `compare_reports`.
        label_a, label_b: column titles for the two reports.

    Returns:
        The table, one metric per line; ``better`` names the report whose
        value is better by the metric's own direction.
    """
    header = [
        "metric",
        label_a,
        label_b,
        "B - A",
        "better",
        f"95% CI {label_a}",
        f"95% CI {label_b}",
        "CIs overlap",
    ]
    lines = [header]
    for row in rows:
        difference = row.difference
        if difference is None or difference == 0:
            better = "" if difference is None else "same"
        else:
            better = "B" if (difference > 0) == row.higher_is_better else "A"
        overlap = {None: "", True: "yes", False: "NO"}[row.intervals_overlap]
        lines.append(
            [
                row.name,
                _number(row.a),
                _number(row.b),
                _number(difference, signed=True),
                better,
                _bounds(row.interval_a),
                _bounds(row.interval_b),
                overlap,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)
