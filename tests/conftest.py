"""Shared fixtures: paths to the demo and real MRI data, small image folders."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "data" / "demo"
REAL_SAMPLE = REPO.parent / "shared" / "real-mri-sample"


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The real MRI slices beside the checkout (14 of the 17 classes)."""
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real MRI sample not found at {REAL_SAMPLE}")
    return REAL_SAMPLE


@pytest.fixture(scope="session")
def demo_subset(tmp_path_factory) -> Path:
    """A copy of the first 6 demo images of every class, for short runs."""
    target = tmp_path_factory.mktemp("demo-subset")
    for folder in sorted(p for p in DEMO_DIR.iterdir() if p.is_dir()):
        (target / folder.name).mkdir()
        for path in sorted(folder.glob("*.png"))[:6]:
            shutil.copy(path, target / folder.name / path.name)
    return target


def save_image(path: Path, array: np.ndarray, **kwargs) -> Path:
    """Writes an image array with Pillow, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def gradient_image(height: int, width: int, channels: int | None = None) -> np.ndarray:
    """A deterministic uint8 ramp, greyscale or with ``channels`` channels."""
    ramp = np.add.outer(np.arange(height), np.arange(width)) % 256
    image = ramp.astype(np.uint8)
    if channels:
        image = np.stack([image] * channels, axis=-1)
    return image
