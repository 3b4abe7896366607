"""Reading back a finished run folder written by ``neuropath train``.

A *finished run* has its final ``model.keras``, its ``split_manifest.csv`` and
its resolved ``config.yaml``; the images stay where the config says unless the
caller points elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import yaml

from neuropath.class_match import check_manifest_classes
from neuropath.dataset import Record, read_manifest
from neuropathology_model import NeuropathologyClassifier

__all__ = ["FinishedRun", "open_run"]

REQUIRED_FILES = ("model.keras", "split_manifest.csv", "config.yaml")


@dataclasses.dataclass
class FinishedRun:
    """A run folder's final model, split and image folder.

    Attributes:
        run_dir: the run folder.
        classifier: its final model.
        records: every image of its split manifest.
        data_dir: the folder the manifest's paths are relative to.
    """

    run_dir: Path
    classifier: NeuropathologyClassifier
    records: list[Record]
    data_dir: Path

    def split(self, name: str) -> list[Record]:
        """The records of one split: ``"train"``, ``"val"`` or ``"test"``."""
        return [r for r in self.records if r.split == name]


def open_run(
    run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None
) -> FinishedRun:
    """Loads a finished run's model, manifest and data folder.

    Args:
        run_dir: a run folder written by ``neuropath train``.
        data_dir: where the images are, if they moved since training.

    Raises:
        FileNotFoundError: a file of a finished run is missing.
    """
    run_dir = Path(run_dir)
    for name in REQUIRED_FILES:
        if not (run_dir / name).is_file():
            raise FileNotFoundError(
                f"{str(run_dir)!r} is not a finished run folder: {name} is missing."
            )
    classifier = NeuropathologyClassifier.load(run_dir / "model.keras")
    check_manifest_classes(
        classifier.class_names,
        run_dir / "split_manifest.csv",
        str(run_dir / "model.keras"),
    )
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    records = read_manifest(run_dir / "split_manifest.csv", classifier.class_names)
    root = Path(data_dir or config["data"]["data_dir"])
    return FinishedRun(run_dir, classifier, records, root)
