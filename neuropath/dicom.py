"""DICOM MR slices as 8-bit RGB images, read without keeping any header data.

Stored pixel values go through the *modality LUT* (RescaleSlope and
RescaleIntercept) and then a *window*: WindowCenter and WindowWidth when the
file has them (the DICOM linear function), otherwise the 1st to 99th
percentile of the slice. Only pixel attributes are read; patient and study
fields are never accessed, logged or returned. Needs the ``dicom`` extra
(pydicom).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

__all__ = [
    "DICOM_EXTENSIONS",
    "DicomSliceError",
    "is_dicom",
    "percentile_window",
    "read_dicom_slice",
    "window_to_uint8",
]

DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
PERCENTILE_WINDOW = (1.0, 99.0)
_PREAMBLE = 128
_MAGIC = b"DICM"


class DicomSliceError(ValueError):
    """Raised when a DICOM file holds no usable 2-D slice."""


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether a file is DICOM: by its extension, or by the ``DICM`` marker.

    Args:
        path: the file.

    Returns:
        ``True`` for a ``.dcm`` or ``.dicom`` file, or any file with the DICOM
        preamble and marker (exports often have no extension).
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(_PREAMBLE)
            return handle.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


def window_to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Maps values through a linear window to 0-255.

    The DICOM linear VOI function: values at or below ``center - 0.5 -
    (width - 1) / 2`` become 0, values above ``center - 0.5 + (width - 1) / 2``
    become 255, and the range between is mapped linearly.

    Args:
        values: pixel values after the modality LUT, any shape.
        center: the window centre.
        width: the window width, at least 1.

    Returns:
        uint8 values of the same shape.
    """
    if not width >= 1:
        raise DicomSliceError(
            f"Window width must be at least 1; the file gives {width}."
        )
    shifted = np.asarray(values, dtype=np.float64) - (center - 0.5)
    if width > 1:
        fraction = np.clip(shifted / (width - 1) + 0.5, 0.0, 1.0)
    else:
        fraction = (shifted > 0).astype(np.float64)
    return np.round(fraction * 255).astype(np.uint8)


def percentile_window(
    values: np.ndarray, percentiles: tuple[float, float] = PERCENTILE_WINDOW
) -> tuple[float, float]:
    """A window spanning two percentiles of the values: robust to outliers.

    Args:
        values: pixel values after the modality LUT.
        percentiles: the low and high percentiles; 1 and 99 by default.

    Returns:
        ``(center, width)`` for `window_to_uint8`; width is at least 1.
    """
    low, high = np.percentile(values, percentiles)
    width = max(float(high - low), 1.0)
    return float(low + high) / 2 + 0.5, width + 1


def _first(value) -> float:
    """A number from a DICOM value that may hold several (multi-valued DS)."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return float(value)
    return float(value[0])


def read_dicom_slice(path: str | os.PathLike) -> np.ndarray:
    """Reads one DICOM slice as RGB pixels.

    Args:
        path: a DICOM file holding a single 2-D image.

    Returns:
        uint8 pixels, shape ``(rows, columns, 3)``; greyscale slices become
        three equal channels, ``MONOCHROME1`` slices are inverted so that
        bright means high signal.

    Raises:
        DicomSliceError: no pixel data, several frames, or a bad window.
        ImportError: pydicom is not installed.
    """
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut
    except ImportError as err:
        raise ImportError(
            "Reading DICOM files needs pydicom; install the extra with "
            "pip install 'neuropath[dicom]'."
        ) from err

    # pydicom's validation warnings may quote header values, names included.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path, force=True)
        if "PixelData" not in dataset:
            raise DicomSliceError("The DICOM file holds no pixel data.")
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            # Limitation: multi-frame files are refused; choosing a frame
            # (the middle one?) would need the series' geometry.
            raise DicomSliceError(
                f"The DICOM file holds {frames} frames; export single 2-D slices."
            )
        pixels = dataset.pixel_array
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
        if pixels.ndim == 3 and pixels.shape[-1] == 3:
            return _colour_to_uint8(pixels)
        if pixels.ndim != 2:
            raise DicomSliceError(
                f"Expected a 2-D greyscale or RGB slice; the pixel data has "
                f"shape {pixels.shape}."
            )
        values = apply_modality_lut(pixels, dataset)
        if "WindowCenter" in dataset and "WindowWidth" in dataset:
            center = _first(dataset.WindowCenter)
            width = _first(dataset.WindowWidth)
        else:
            center, width = percentile_window(values)

    grey = window_to_uint8(values, center, width)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return np.repeat(grey[:, :, None], 3, axis=2)


def _colour_to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    top = max(float(pixels.max()), 1.0)
    return np.round(pixels.astype(np.float64) / top * 255).astype(np.uint8)
