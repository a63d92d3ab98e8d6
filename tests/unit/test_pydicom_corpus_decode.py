"""Every file bundled in pydicom's test set through ``decode``: a well-formed image or a typed 4xx.

The set mixes valid images of every transfer syntax, non-image objects, deliberately broken files
and non-DICOM files (README, JSON, gzip, ICC profile). An untyped exception fails the test.
"""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from services.codecs import DecodedImage, decode
from services.errors import MedsegError

CORPUS = Path(pydicom.data.__file__).parent / "test_files"
FILES = sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file())

# Must decode: one or more files per transfer syntax family and colour model.
MUST_DECODE = [
    "CT_small.dcm",  # explicit VR little endian, CT in HU
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",  # JPEG 2000
    "MR_small_jp2klossless.dcm",
    "MR_small_RLE.dcm",  # RLE
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "JPEGLSNearLossless_16.dcm",
    "JPGExtended.dcm",  # JPEG extended, 12-bit
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1
    "SC_rgb_rle.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "examples_palette.dcm",  # PALETTE COLOR
    "examples_ybr_color.dcm",  # 30-frame JPEG baseline
    "image_dfl.dcm",  # deflated explicit VR
    "dicomdirtests/77654033/CR1/6154",  # CR, MONOCHROME1
]
# Pinned classifications: (status, code) for files whose outcome is part of the contract.
EXPECTED_ERRORS = {
    "rtplan.dcm": (422, "not_an_image"),
    "rtstruct.dcm": (422, "not_an_image"),
    "test-SR.dcm": (422, "not_an_image"),
    "liver_1frame.dcm": (422, "not_an_image"),  # DICOM SEG
    "rtdose.dcm": (422, "not_an_image"),
    "waveform_ecg.dcm": (422, "not_an_image"),
    "dicomdirtests/DICOMDIR": (422, "not_an_image"),
    "MR_truncated.dcm": (400, "bad_input"),
    "rtplan_truncated.dcm": (400, "bad_input"),
    "JPEG2000-embedded-sequence-delimiter.dcm": (400, "bad_input"),
    "README.txt": (415, "unsupported_media_type"),
    "test1.json": (415, "unsupported_media_type"),
    "zipMR.gz": (415, "unsupported_media_type"),
    "crayons.icc": (415, "unsupported_media_type"),
}


@functools.cache
def decoded(name: str) -> tuple[DecodedImage | MedsegError, tuple[str, ...]]:
    """``decode`` of one corpus file: the image or the typed error (anything else propagates),
    and the messages of the warnings that escaped."""
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        try:
            result: DecodedImage | MedsegError = decode((CORPUS / name).read_bytes())
        except MedsegError as error:
            result = error
    return result, tuple(str(w.message) for w in escaped)


def outcome(name: str) -> DecodedImage | MedsegError:
    return decoded(name)[0]


def label(result: DecodedImage | MedsegError) -> str:
    return "decoded" if isinstance(result, DecodedImage) else f"{result.status} {result.code}"


def test_corpus_is_present() -> None:
    assert len(FILES) > 100


@pytest.mark.parametrize("name", FILES)
def test_file_decodes_or_raises_a_typed_4xx(name: str) -> None:
    result, escaped = decoded(name)
    assert not escaped, escaped  # pydicom / Pillow warnings can quote identifiers
    if isinstance(result, MedsegError):
        assert 400 <= result.status < 500, (result.status, result.message)
        assert result.message and str(CORPUS) not in result.message
        return
    pixels = result.pixels
    assert result.frames >= 1 and result.rows >= 1 and result.cols >= 1
    if result.photometric == "RGB":
        assert pixels.ndim == 4 and pixels.shape[3] == 3 and pixels.dtype == np.uint8
    else:
        assert result.photometric == "MONOCHROME2"
        assert pixels.ndim == 3 and pixels.dtype == np.float32
        assert np.isfinite(pixels).all()
    assert result.source == "dicom" and result.modality
    if result.pixel_spacing_mm is not None:
        assert len(result.pixel_spacing_mm) == 2 and min(result.pixel_spacing_mm) > 0
    if result.slice_spacing_mm is not None:
        assert result.slice_spacing_mm > 0
    if result.window is not None:
        assert result.window[1] > 0


@pytest.mark.parametrize("name", MUST_DECODE)
def test_core_files_decode(name: str) -> None:
    result = outcome(name)
    assert isinstance(result, DecodedImage), label(result)


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_pinned_classifications(name: str) -> None:
    result = outcome(name)
    assert isinstance(result, MedsegError), f"{name} decoded"
    assert (result.status, result.code) == EXPECTED_ERRORS[name], result.message


def test_ct_small_is_in_hu() -> None:
    result = outcome("CT_small.dcm")
    assert isinstance(result, DecodedImage)
    ds = pydicom.dcmread(CORPUS / "CT_small.dcm")
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(result.pixels[0], expected)
    assert result.pixel_spacing_mm == tuple(float(v) for v in ds.PixelSpacing)


def test_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Print the outcome table (run with -s to see it) and check the corpus is mostly decodable."""
    counts = Counter(label(outcome(name)) for name in FILES)
    with capsys.disabled():
        print("\npydicom corpus decode outcomes:", dict(sorted(counts.items())))
    assert counts["decoded"] >= 75, counts
    assert set(counts) <= {"decoded", "400 bad_input", "415 unsupported_media_type", "422 not_an_image",
                           "415 unsupported_transfer_syntax", "422 unprocessable_image"}, counts
