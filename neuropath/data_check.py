"""What a data set folder holds and what is wrong with it, before any training.

A *data check* counts the usable images of each class and lists the classes
*absent* (no folder) or *empty* (a folder without a usable image), the
*unknown folders*, every *unusable file* with its reason and the near-duplicate
groups. Its *problems* are what ``--strict`` refuses: unusable files, unknown
folders, empty classes and duplicate groups that span two classes (one slice
under two labels). Absent classes and duplicates within a class are reported
only: splitting keeps each duplicate group inside one split.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neuropath.classes import CLASS_NAMES, canonical_class_name, short_name
from neuropath.dataset import DatasetScan, Record, scan_dataset
from neuropath.duplicates import (
    DUPLICATE_DISTANCE,
    assign_duplicate_groups,
    duplicate_groups,
)
from neuropath.image_files import display_path, is_hidden

__all__ = [
    "DataCheck",
    "check_data",
    "format_data_check",
    "format_data_check_json",
    "write_unusable_list",
]


@dataclasses.dataclass
class DataCheck:
    """The findings of `check_data`.

    Attributes:
        scan: the folder's scan (records without duplicate groups).
        records: the usable images with their ``duplicate_group`` set.
        absent_classes: classes without a folder.
        empty_classes: classes whose folder holds no usable image.
    """

    scan: DatasetScan
    records: list[Record]
    absent_classes: list[str]
    empty_classes: list[str]

    @property
    def groups(self) -> list[list[Record]]:
        """The near-duplicate groups, each a list of records."""
        return duplicate_groups(self.records)

    def problems(self) -> list[str]:
        """One line per kind of problem that ``--strict`` refuses."""
        found = []
        if self.scan.unusable:
            found.append(f"{len(self.scan.unusable)} unusable file(s)")
        if self.scan.unknown_folders:
            found.append(f"{len(self.scan.unknown_folders)} unknown folder(s)")
        if self.empty_classes:
            found.append(f"{len(self.empty_classes)} empty class folder(s)")
        mixed = [g for g in self.groups if len({r.class_name for r in g}) > 1]
        if mixed:
            found.append(f"{len(mixed)} duplicate group(s) spanning two classes")
        return found

    def to_json(self) -> dict[str, Any]:
        """The findings as JSON-ready values; paths relative to the folder."""
        counts = self.scan.counts()
        return {
            "data_dir": display_path(self.scan.root),
            "classes": [
                {
                    "class_name": name,
                    "short_name": short_name(name),
                    "images": counts.get(name, 0),
                    "status": self.status(name),
                }
                for name in CLASS_NAMES
            ],
            "total_images": len(self.records),
            "absent_classes": self.absent_classes,
            "empty_classes": self.empty_classes,
            "unknown_folders": [display_path(f) for f in self.scan.unknown_folders],
            "unusable_files": [
                {"path": display_path(path), "reason": reason}
                for path, reason in self.scan.unusable
            ],
            "duplicate_groups": [
                [{"path": display_path(r.path), "class_name": r.class_name} for r in g]
                for g in self.groups
            ],
            "problems": self.problems(),
        }

    def status(self, class_name: str) -> str:
        """``"absent"``, ``"empty"`` or ``""`` for a class with images."""
        if class_name in self.absent_classes:
            return "absent"
        if class_name in self.empty_classes:
            return "empty"
        return ""


def check_data(
    root: str | os.PathLike,
    max_distance: int = DUPLICATE_DISTANCE,
    workers: int | None = None,
) -> DataCheck:
    """Scans a data set folder, decodes every file and finds near duplicates.

    Args:
        root: the data set folder, one sub-folder per class.
        max_distance: the largest hash distance of near duplicates (bits).
        workers: threads for decoding and hashing; all cores by default.

    Returns:
        The `DataCheck`.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    scan = scan_dataset(root, CLASS_NAMES, verify=True, workers=workers)
    records = assign_duplicate_groups(scan.records, scan.root, max_distance, workers)
    folders = {
        canonical_class_name(entry.name)
        for entry in os.scandir(scan.root)
        if entry.is_dir() and not is_hidden(entry.name)
    }
    present = {r.class_name for r in records}
    absent = [name for name in CLASS_NAMES if name not in folders]
    empty = [name for name in CLASS_NAMES if name in folders and name not in present]
    return DataCheck(scan, records, absent, empty)


def format_data_check(check: DataCheck) -> str:
    """The findings as a plain-text table and lists, for the terminal."""
    counts = check.scan.counts()
    width = max(len(short_name(name)) for name in CLASS_NAMES)
    lines = [f"Data folder: {display_path(check.scan.root)}", ""]
    lines.append(f"{'class':<{width}}  {'images':>6}")
    for name in CLASS_NAMES:
        status = check.status(name)
        row = f"{short_name(name):<{width}}  {counts.get(name, 0):>6}"
        lines.append(f"{row}  {status}".rstrip())
    lines.append(f"{'total':<{width}}  {len(check.records):>6}")
    lines.append("")

    def listing(title: str, items: Sequence[str]) -> None:
        lines.append(f"{title}: {len(items) if items else 'none'}")
        lines.extend(f"  {item}" for item in items)

    listing("Classes absent (no folder)", [short_name(n) for n in check.absent_classes])
    listing(
        "Classes empty (no usable image)", [short_name(n) for n in check.empty_classes]
    )
    listing("Unknown folders", [display_path(f) for f in check.scan.unknown_folders])
    listing(
        "Unusable files",
        [f"{display_path(p)}: {reason}" for p, reason in check.scan.unusable],
    )
    groups = check.groups
    lines.append(f"Near-duplicate groups: {len(groups) if groups else 'none'}")
    for group in groups:
        lines.append(f"  group {group[0].duplicate_group}:")
        lines.extend(
            f"    {display_path(r.path)} ({short_name(r.class_name)})" for r in group
        )
    problems = check.problems()
    lines.append("")
    lines.append(f"Problems: {'; '.join(problems) if problems else 'none'}")
    return "\n".join(lines)


def format_data_check_json(check: DataCheck) -> str:
    """The findings as indented JSON."""
    return json.dumps(check.to_json(), indent=2, ensure_ascii=False)


def write_unusable_list(
    unusable: Sequence[tuple[str, str]], path: str | os.PathLike
) -> Path:
    """Writes the unusable files and their reasons as a CSV (path, reason).

    The file is written to a temporary name and renamed; names that are not
    valid UTF-8 keep their bytes.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(
        tmp, "w", newline="", encoding="utf-8", errors="surrogateescape"
    ) as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "reason"))
        writer.writerows(unusable)
    os.replace(tmp, path)
    return path
