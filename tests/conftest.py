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
        for path in sorted(folder.glob("*.jpg"))[:6]:
            shutil.copy(path, target / folder.name / path.name)
    return target


@pytest.fixture(scope="session")
def small_model_file(tmp_path_factory) -> Path:
    """An untrained, slim classifier at 32 px, saved as a neuropath model."""
    from neuropathology_model import NeuropathologyClassifier

    classifier = NeuropathologyClassifier(
        weights=None, image_size=32, backbone_options={"alpha": 0.35}
    )
    return classifier.save(tmp_path_factory.mktemp("model") / "small.keras")


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


# Identifying header values of the synthetic DICOM files: never to be seen in
# any output or log.
FAKE_PATIENT = {
    "PatientName": "Zzyzx^Quilliam",
    "PatientID": "FAKE-ID-90817",
    "PatientBirthDate": "19230405",
    "AccessionNumber": "ACC-55501",
    "InstitutionName": "Fictional Hospital Xq",
}


def write_mr_dicom(path: Path, pixels: np.ndarray | None, **attributes) -> Path:
    """Writes a synthetic MR DICOM file with a fake patient.

    ``pixels`` is a 2-D uint16 array (12 bits stored), or ``None`` for a file
    without pixel data; ``attributes`` are set last and may replace any.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = MRImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "MR"
    for key, value in FAKE_PATIENT.items():
        setattr(dataset, key, value)
    if pixels is not None:
        dataset.set_pixel_data(
            pixels.astype(np.uint16),
            photometric_interpretation="MONOCHROME2",
            bits_stored=12,
        )
    for key, value in attributes.items():
        setattr(dataset, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path
