"""DICOM slices: modality LUT, windows, inversion, and nothing identifying."""

import numpy as np
import pytest
from conftest import FAKE_PATIENT, gradient_image, save_image, write_mr_dicom

from neuropath.dicom import (
    DicomSliceError,
    is_dicom,
    percentile_window,
    read_dicom_slice,
    window_to_uint8,
)


def test_window_center_and_width_from_the_file_are_applied(tmp_path):
    pixels = np.array([[0, 99, 200, 301, 4000]] * 2)
    path = write_mr_dicom(tmp_path / "w.dcm", pixels, WindowCenter=200, WindowWidth=201)
    rgb = read_dicom_slice(path)

    assert rgb.dtype == np.uint8 and rgb.shape == (2, 5, 3)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    # Window 99.5..299.5: below is black, above is white, the centre mid-grey.
    assert rgb[0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_rescale_slope_and_intercept_come_before_the_window(tmp_path):
    # Stored 500, 1000, 1500 are real values 0, 1000, 2000.
    pixels = np.array([[500, 1000, 1500]])
    path = write_mr_dicom(
        tmp_path / "r.dcm",
        pixels,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=1000.5,
        WindowWidth=2001,
    )
    assert read_dicom_slice(path)[0, :, 0].tolist() == [0, 128, 255]


def test_without_a_window_the_1st_to_99th_percentile_is_used(tmp_path):
    ramp = np.tile(np.arange(1000), (10, 1))
    ramp[0, :5] = 4000  # a few hot pixels must not darken the whole slice
    path = write_mr_dicom(tmp_path / "p.dcm", ramp)
    grey = read_dicom_slice(path)[..., 0]

    assert grey[5, 0] == 0
    assert grey[5, 999] == 255
    assert abs(int(grey[5, 500]) - 128) <= 3
    assert grey[0, 0] == 255


def test_monochrome1_is_inverted_so_bright_means_high_signal(tmp_path):
    pixels = np.array([[0, 1000]])
    normal = write_mr_dicom(
        tmp_path / "m2.dcm", pixels, WindowCenter=500.5, WindowWidth=1001
    )
    inverted = write_mr_dicom(
        tmp_path / "m1.dcm",
        pixels,
        WindowCenter=500.5,
        WindowWidth=1001,
        PhotometricInterpretation="MONOCHROME1",
    )
    assert read_dicom_slice(normal)[0, :, 0].tolist() == [0, 255]
    assert read_dicom_slice(inverted)[0, :, 0].tolist() == [255, 0]


def test_window_helpers_map_their_range_onto_0_to_255():
    values = np.array([10.0, 20.0, 30.0])
    center, width = percentile_window(values, (0, 100))
    assert window_to_uint8(values, center, width).tolist() == [0, 128, 255]
    with pytest.raises(DicomSliceError, match="at least 1"):
        window_to_uint8(values, 10, 0)


def test_dicom_is_recognised_by_content_without_an_extension(tmp_path):
    dicom = write_mr_dicom(tmp_path / "IM0001", np.zeros((4, 4)))
    png = save_image(tmp_path / "slice.png", gradient_image(8, 8))
    assert is_dicom(dicom)
    assert not is_dicom(png)
    assert not is_dicom(tmp_path / "missing")


def test_unusable_files_fail_without_quoting_the_header(tmp_path):
    no_pixels = write_mr_dicom(tmp_path / "empty.dcm", None)
    with pytest.raises(DicomSliceError) as caught:
        read_dicom_slice(no_pixels)
    assert "no pixel data" in str(caught.value)
    for value in FAKE_PATIENT.values():
        assert value not in str(caught.value)

    frames = write_mr_dicom(tmp_path / "multi.dcm", np.zeros((4, 4)), NumberOfFrames=3)
    with pytest.raises(DicomSliceError, match="3 frames"):
        read_dicom_slice(frames)
