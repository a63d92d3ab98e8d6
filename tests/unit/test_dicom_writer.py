"""The synthetic DICOM writer used by the integration tests: valid files that round-trip."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, EnhancedCTImageStorage, MRImageStorage

from services.codecs import decode, decode_dicom, sniff
from export.phantoms.dicom_writer import (
    PATIENT_ID,
    PATIENT_NAME,
    TRANSFER_SYNTAXES,
    can_write,
    write_ct_slice,
    write_localizer,
    write_multiframe,
    write_series,
)

RNG = np.random.default_rng(7)


def hu_slice(rows: int = 64, cols: int = 48) -> np.ndarray:
    """Non-integer HU over the CT range, so rounding to stored integers is exercised."""
    return RNG.uniform(-1024.0, 3000.0, size=(rows, cols))


def read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def check_round_trip(syntax: str) -> None:
    hu = hu_slice()
    data = write_ct_slice(hu, (0.7, 0.9), transfer_syntax=syntax)  # type: ignore[arg-type]
    assert read(data).file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
    image = decode_dicom(data)
    assert image.pixels.shape == (1, 64, 48)
    assert np.abs(image.pixels[0] - hu).max() <= 0.5
    assert image.pixel_spacing_mm == (0.7, 0.9)
    assert image.window == (40.0, 400.0)
    assert image.modality == "CT"


@pytest.mark.parametrize("syntax", ["explicit_le", "jpeg2000_lossless", "rle"])
def test_ct_slice_round_trips_for_each_transfer_syntax(syntax: str) -> None:
    assert can_write(syntax)
    check_round_trip(syntax)


def test_jpegls_round_trips_or_is_refused_clearly() -> None:
    """JPEG-LS encoding needs pyjpegls, which the serving environment does not install."""
    if can_write("jpegls_lossless"):
        check_round_trip("jpegls_lossless")
    else:
        with pytest.raises(RuntimeError, match="pyjpegls"):
            write_ct_slice(hu_slice(), (0.7, 0.9), transfer_syntax="jpegls_lossless")


def test_ct_slice_is_a_valid_part10_ct_image() -> None:
    data = write_ct_slice(hu_slice(), (0.5, 0.5))
    assert data[128:132] == b"DICM" and sniff(data) == "dicom"
    ds = read(data)
    assert ds.SOPClassUID == CTImageStorage == ds.file_meta.MediaStorageSOPClassUID
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID and ds.SOPInstanceUID.is_valid
    assert str(ds.PatientName) == PATIENT_NAME and ds.PatientID == PATIENT_ID
    assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel) == (64, 48, 16, 1)
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, -1024.0)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 400.0)
    assert ds.PixelRepresentation == 0  # stored = HU + 1024 ≥ 0 → uint16


def test_stored_values_are_rounded_and_signed_when_needed() -> None:
    hu = np.array([[-2000.0, -1024.4], [0.6, 3071.0]])
    ds = read(write_ct_slice(hu, (1.0, 1.0)))
    assert ds.PixelRepresentation == 1
    np.testing.assert_array_equal(ds.pixel_array, [[-976, 0], [1025, 4095]])
    with pytest.raises(ValueError, match="16-bit"):
        write_ct_slice(np.full((4, 4), 1e6), (1.0, 1.0))


def test_custom_rescale_photometric_and_modality() -> None:
    hu = hu_slice()
    ds = read(write_ct_slice(hu, (1.0, 1.0), rescale=(0.5, -2048.0), photometric="MONOCHROME1", modality="MR"))
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.Modality == "MR"
    assert ds.SOPClassUID == MRImageStorage
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (0.5, -2048.0)


def test_jpeg2000_needs_32_pixel_sides() -> None:
    with pytest.raises(ValueError, match="at least 32"):
        write_ct_slice(hu_slice(16, 64), (1.0, 1.0), transfer_syntax="jpeg2000_lossless")


@pytest.mark.parametrize("syntax", ["explicit_le", "jpeg2000_lossless", "rle"])
def test_multiframe_round_trips(syntax: str) -> None:
    stack = RNG.uniform(-1000.0, 1500.0, size=(3, 40, 36))
    data = write_multiframe(stack, (0.8, 0.6), 2.5, transfer_syntax=syntax)  # type: ignore[arg-type]
    ds = read(data)
    assert ds.SOPClassUID == EnhancedCTImageStorage and int(ds.NumberOfFrames) == 3
    assert "PixelSpacing" not in ds  # it lives in the shared functional groups
    image = decode_dicom(data)
    assert image.pixels.shape == (3, 40, 36)
    assert np.abs(image.pixels - stack).max() <= 0.5
    assert image.pixel_spacing_mm == (0.8, 0.6)
    assert image.slice_spacing_mm == 2.5
    assert image.window == (40.0, 400.0)


def test_single_frame_multiframe_keeps_number_of_frames() -> None:
    data = write_multiframe(RNG.uniform(-100.0, 100.0, size=(1, 32, 32)), (1.0, 1.0), 1.0)
    assert int(read(data).NumberOfFrames) == 1
    assert decode_dicom(data).pixels.shape == (1, 32, 32)


def test_phantom_sized_jpeg2000_slice_round_trips() -> None:
    hu = hu_slice(512, 512)
    image = decode_dicom(write_ct_slice(hu, (0.8, 0.8), transfer_syntax="jpeg2000_lossless"))
    assert np.abs(image.pixels[0] - hu).max() <= 0.5


WRITABLE = [syntax for syntax in TRANSFER_SYNTAXES if can_write(syntax)]


def floats(values) -> list[float]:
    return [float(v) for v in values]


def test_series_geometry_uids_and_per_slice_rescale_round_trip() -> None:
    """Positions step along row × column direction; UIDs are shared; each syntax and rescale decodes back."""
    slices = len(WRITABLE) + 1
    volume = RNG.uniform(-1000.0, 1500.0, size=(slices, 40, 36))
    syntaxes = [*WRITABLE, "explicit_le"]
    rescales = [(1.0, -1024.0), (0.5, -2048.0), (2.0, -1000.0), (1.0, -1024.0), (0.25, -1100.0)][:slices]
    orientation = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # sagittal: normal = (0,1,0) × (0,0,-1) = (-1, 0, 0)
    files = write_series(
        volume, (0.8, 0.6), 2.5, transfer_syntaxes=syntaxes, rescale=rescales, study_uid="1.2.3.4",
        series_number=7, series_description="phantom", origin_mm=(10.0, -20.0, 30.0), orientation=orientation,
    )
    datasets = [read(f) for f in files]
    assert {ds.StudyInstanceUID for ds in datasets} == {"1.2.3.4"}
    assert len({ds.SeriesInstanceUID for ds in datasets}) == len({ds.FrameOfReferenceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == slices
    assert datasets[0].SeriesInstanceUID not in ("1.2.3.4", datasets[0].FrameOfReferenceUID)
    for i, (ds, syntax, (slope, intercept)) in enumerate(zip(datasets, syntaxes, rescales)):
        assert ds.file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
        assert (ds.InstanceNumber, ds.SeriesNumber, ds.SeriesDescription) == (i + 1, 7, "phantom")
        assert floats(ds.ImagePositionPatient) == pytest.approx([10.0 - 2.5 * i, -20.0, 30.0])
        assert floats(ds.ImageOrientationPatient) == list(orientation)
        assert float(ds.SliceLocation) == pytest.approx(-10.0 + 2.5 * i)
        assert float(ds.SliceThickness) == 2.5 and "SpacingBetweenSlices" not in ds
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (slope, intercept)
        image = decode(files[i])
        assert image.pixels.shape == (1, 40, 36)
        assert np.abs(image.pixels[0] - volume[i]).max() <= slope / 2 + 1e-6
        assert image.pixel_spacing_mm == (0.8, 0.6)


def test_series_defaults_and_a_deliberately_wrong_spacing_between_slices() -> None:
    files = write_series(RNG.uniform(-100.0, 100.0, size=(3, 32, 32)), (1.0, 1.0), 1.5, spacing_between_slices_mm=9.0)
    datasets = [read(f) for f in files]
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert [floats(ds.ImagePositionPatient) for ds in datasets] == [[0.0, 0.0, 0.0], [0.0, 0.0, 1.5], [0.0, 0.0, 3.0]]
    assert {float(ds.SpacingBetweenSlices) for ds in datasets} == {9.0}
    assert {ds.file_meta.TransferSyntaxUID for ds in datasets} == {TRANSFER_SYNTAXES["explicit_le"]}
    assert list(datasets[0].ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]


def test_series_refuses_mismatched_per_slice_arguments() -> None:
    volume = np.zeros((2, 32, 32))
    with pytest.raises(ValueError, match="one entry per slice"):
        write_series(volume, (1.0, 1.0), 1.0, transfer_syntaxes=["rle"])
    with pytest.raises(ValueError, match="one entry per slice"):
        write_series(volume, (1.0, 1.0), 1.0, rescale=[(1.0, 0.0)] * 3)
    with pytest.raises(ValueError, match="slices, rows, cols"):
        write_series(volume[0], (1.0, 1.0), 1.0)


def test_mr_series_uses_mr_image_storage() -> None:
    ds = read(write_series(RNG.uniform(0.0, 500.0, size=(1, 32, 32)), (1.0, 1.0), 1.0, modality="MR", rescale=(1.0, 0.0))[0])
    assert ds.SOPClassUID == MRImageStorage and ds.Modality == "MR"


def test_localizer_joins_the_study_in_its_own_series_with_another_orientation() -> None:
    series = [read(f) for f in write_series(RNG.uniform(-100.0, 100.0, size=(2, 32, 32)), (1.0, 1.0), 1.0)]
    scout = read(write_localizer(RNG.uniform(-100.0, 100.0, size=(48, 32)), (2.0, 2.0), study_uid=series[0].StudyInstanceUID))
    assert scout.StudyInstanceUID == series[0].StudyInstanceUID
    assert scout.SeriesInstanceUID != series[0].SeriesInstanceUID
    assert list(scout.ImageType) == ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert floats(scout.ImageOrientationPatient) == [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    assert (scout.Rows, scout.Columns) == (48, 32)
