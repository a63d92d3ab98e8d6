"""Unit tests of the image decoders: sniffing, PNG/JPEG, DICOM and their typed errors."""

from __future__ import annotations

import functools
import gzip
import io
import logging
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_color_lut

from services.codecs import DecodedImage, decode, decode_dicom, decode_raster, sniff
from services.errors import (
    BadInput,
    MedsegError,
    NotAnImage,
    UnprocessableImage,
    UnsupportedMediaType,
    UnsupportedTransferSyntax,
)
from export.phantoms.dicom_writer import (
    PATIENT_BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    STUDY_DATE,
    write_ct_slice,
    write_multiframe,
)

CORPUS = Path(pydicom.data.__file__).parent / "test_files"
IDENTIFIERS = (PATIENT_NAME, "Phantom", PATIENT_ID, PATIENT_BIRTH_DATE, STUDY_DATE)
RNG = np.random.default_rng(20240102)
HU = np.rint(RNG.uniform(-1000.0, 1500.0, size=(48, 40)))


def png_bytes(array: np.ndarray, mode: str | None = None, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95, **save)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature + IHDR + empty IDAT + IEND: a header claiming any size, almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def dataset(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data), force=True)


def to_bytes(ds: pydicom.Dataset, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, **kwargs)
    return buffer.getvalue()


# --- sniff ----------------------------------------------------------------------------------------


def test_sniff_recognises_the_three_formats() -> None:
    grey = np.zeros((8, 8), dtype=np.uint8)
    assert sniff(png_bytes(grey)) == "png"
    assert sniff(jpeg_bytes(grey)) == "jpeg"
    assert sniff(write_ct_slice(HU, (1.0, 1.0))) == "dicom"
    assert sniff((CORPUS / "rtstruct.dcm").read_bytes()) == "dicom"  # no preamble, no file meta
    assert sniff((CORPUS / "ExplVR_BigEndNoMeta.dcm").read_bytes()) == "dicom"


def test_empty_body_is_bad_input() -> None:
    with pytest.raises(BadInput, match="empty"):
        decode(b"")


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("slice.dcm", write_ct_slice(HU, (1.0, 1.0)))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes(), id="random"),
        pytest.param(b"patient: Phantom^Liver\nnot an image at all\n" * 20, id="text"),
        pytest.param(b'{"PatientName": "x", "Rows": 512}', id="json"),
        pytest.param(zip_bytes(), id="zip"),
        pytest.param(gzip.compress(b"\0" * 1000), id="gzip"),
        pytest.param(b"\x08\x00\x05\x00junk that starts like a DICOM group 8" * 4, id="dicom-like-junk"),
        pytest.param(b"GIF89a" + b"\0" * 100, id="gif"),
    ],
)
def test_other_bytes_are_unsupported_media_type(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        decode(data)
    assert "DICOM" in caught.value.message and "PNG" in caught.value.message and "JPEG" in caught.value.message
    assert caught.value.status == 415


# --- PNG / JPEG -----------------------------------------------------------------------------------


def test_png_8bit_grey() -> None:
    grey = RNG.integers(0, 256, (30, 20), dtype=np.uint8)
    image = decode(png_bytes(grey))
    assert image.pixels.shape == (1, 30, 20) and image.pixels.dtype == np.float32
    np.testing.assert_array_equal(image.pixels[0], grey)
    assert (image.source, image.modality, image.photometric) == ("png", "OT", "MONOCHROME2")
    assert image.pixel_spacing_mm is None and image.slice_spacing_mm is None and image.window is None
    assert (image.frames, image.rows, image.cols) == (1, 30, 20)


def test_png_16bit_grey_keeps_full_range() -> None:
    grey = RNG.integers(0, 65536, (25, 33), dtype=np.uint16)
    grey[0, 0] = 65535
    image = decode(png_bytes(grey))
    assert image.pixels.shape == (1, 25, 33) and image.pixels.dtype == np.float32
    np.testing.assert_array_equal(image.pixels[0], grey)


def test_png_rgb() -> None:
    rgb = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = decode(png_bytes(rgb))
    assert image.pixels.shape == (1, 12, 16, 3) and image.pixels.dtype == np.uint8
    np.testing.assert_array_equal(image.pixels[0], rgb)
    assert image.photometric == "RGB" and image.is_colour


def test_png_rgba_drops_alpha() -> None:
    rgba = RNG.integers(0, 256, (12, 16, 4), dtype=np.uint8)
    image = decode(png_bytes(rgba))
    assert image.pixels.shape == (1, 12, 16, 3)
    np.testing.assert_array_equal(image.pixels[0], rgba[..., :3])


def test_png_palette_becomes_rgb() -> None:
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = RNG.integers(0, 256, (10, 14), dtype=np.uint8)
    paletted = Image.fromarray(indices, mode="P")
    paletted.putpalette(palette.flatten().tolist())
    buffer = io.BytesIO()
    paletted.save(buffer, format="PNG")
    image = decode(buffer.getvalue())
    assert image.pixels.shape == (1, 10, 14, 3)
    np.testing.assert_array_equal(image.pixels[0], palette[indices])


def test_png_grey_alpha_becomes_grey() -> None:
    grey_alpha = RNG.integers(0, 256, (9, 11, 2), dtype=np.uint8)
    image = decode(png_bytes(grey_alpha, mode="LA"))
    assert image.pixels.shape == (1, 9, 11)
    np.testing.assert_array_equal(image.pixels[0], grey_alpha[..., 0])


def test_png_bilevel_becomes_0_255_grey() -> None:
    bits = RNG.integers(0, 2, (8, 16)).astype(bool)
    image = decode(png_bytes(bits))
    assert image.pixels.shape == (1, 8, 16)
    np.testing.assert_array_equal(image.pixels[0], bits * 255.0)


def test_png_16bit_keeps_values_and_stored_grid_despite_exif() -> None:
    grey = RNG.integers(0, 65536, (6, 10), dtype=np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise for display
    image = decode(png_bytes(grey, exif=exif.tobytes()))
    np.testing.assert_array_equal(image.pixels[0], grey)


def test_jpeg_grey_and_rgb() -> None:
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    grey = decode(jpeg_bytes(ramp))
    assert grey.source == "jpeg" and grey.pixels.shape == (1, 48, 64) and grey.pixels.dtype == np.float32
    assert np.abs(grey.pixels[0] - ramp).mean() < 2.0
    rgb = decode(jpeg_bytes(np.stack([ramp, ramp[:, ::-1], np.full_like(ramp, 128)], axis=-1)))
    assert rgb.pixels.shape == (1, 48, 64, 3) and rgb.pixels.dtype == np.uint8
    assert abs(float(rgb.pixels[0, ..., 2].mean()) - 128.0) < 3.0


def test_jpeg_exif_orientation_is_not_applied() -> None:
    """Masks come back in the stored rows and columns, whatever a viewer would rotate."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    image = decode(jpeg_bytes(np.zeros((20, 40), dtype=np.uint8), exif=exif.tobytes()))
    assert (image.rows, image.cols) == (20, 40)


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_truncated_raster_is_bad_input(kind: str) -> None:
    noise = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = png_bytes(noise) if kind == "png" else jpeg_bytes(noise)
    with pytest.raises(BadInput) as caught:
        decode(data[: len(data) // 2])
    assert caught.value.status == 400


def test_corrupt_png_is_bad_input() -> None:
    data = bytearray(png_bytes(RNG.integers(0, 256, (32, 32), dtype=np.uint8)))
    data[40:60] = b"\xff" * 20  # inside IDAT: zlib and CRC break
    with pytest.raises(BadInput):
        decode(bytes(data))


def test_raster_over_100_megapixels_is_rejected_before_decoding() -> None:
    with pytest.raises(UnprocessableImage, match="megapixels"):
        decode(png_header_only(12_000, 9_000))  # 108 MP, under Pillow's own bomb limit


def test_decompression_bomb_is_rejected() -> None:
    with pytest.raises((UnprocessableImage,)) as caught:
        decode_raster(png_header_only(30_000, 30_000))  # 900 MP: Pillow's DecompressionBombError
    assert caught.value.status == 422


# --- DICOM ----------------------------------------------------------------------------------------


def test_ct_slice_is_in_hu_with_geometry_and_window() -> None:
    image = decode(write_ct_slice(HU, (0.7, 0.9)))
    assert isinstance(image, DecodedImage)
    assert image.pixels.shape == (1, 48, 40) and image.pixels.dtype == np.float32
    np.testing.assert_allclose(image.pixels[0], HU, atol=0.5)
    assert (image.source, image.modality, image.photometric) == ("dicom", "CT", "MONOCHROME2")
    assert image.pixel_spacing_mm == (0.7, 0.9)
    assert image.slice_spacing_mm == 1.0
    assert image.window == (40.0, 400.0)


def test_rescale_slope_and_intercept_are_applied() -> None:
    data = write_ct_slice(HU, (1.0, 1.0), rescale=(0.5, -2048.0))
    stored = dataset(data).pixel_array
    np.testing.assert_array_equal(stored, np.rint((HU + 2048.0) / 0.5))
    np.testing.assert_allclose(decode(data).pixels[0], HU, atol=0.25)


def test_monochrome1_is_inverted_for_non_ct() -> None:
    grey = np.rint(RNG.uniform(0, 4000, size=(20, 24)))
    data = write_ct_slice(grey, (1.0, 1.0), photometric="MONOCHROME1", modality="MR", rescale=(1.0, 0.0))
    image = decode(data)
    assert image.photometric == "MONOCHROME2" and image.modality == "MR"
    # 16-bit unsigned stored range [0, 65535]: x' = 0 + 65535 − x, so higher is brighter.
    np.testing.assert_array_equal(image.pixels[0], 65535.0 - grey)
    assert image.window == (65535.0 - 40.0, 400.0)


def test_monochrome1_ct_keeps_hu() -> None:
    image = decode(write_ct_slice(HU, (1.0, 1.0), photometric="MONOCHROME1"))
    assert image.photometric == "MONOCHROME2"
    np.testing.assert_allclose(image.pixels[0], HU, atol=0.5)
    assert image.window == (40.0, 400.0)


def test_corpus_monochrome1_radiograph_is_inverted() -> None:
    path = CORPUS / "dicomdirtests" / "77654033" / "CR1" / "6154"
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    stored = ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    image = decode(path.read_bytes())
    assert np.corrcoef(image.pixels[0].ravel(), stored.ravel())[0, 1] < -0.999


def test_multiframe_shape_spacing_and_rescale_from_functional_groups() -> None:
    stack = np.rint(RNG.uniform(-1000, 1000, size=(4, 36, 32)))
    image = decode(write_multiframe(stack, (0.6, 0.8), 2.5))
    assert image.pixels.shape == (4, 36, 32) and (image.frames, image.rows, image.cols) == (4, 36, 32)
    np.testing.assert_allclose(image.pixels, stack, atol=0.5)
    assert image.pixel_spacing_mm == (0.6, 0.8)
    assert image.slice_spacing_mm == 2.5
    assert image.window == (40.0, 400.0)


def test_per_frame_rescale_is_applied_per_frame() -> None:
    ds = dataset(write_multiframe(np.zeros((2, 8, 8)), (1.0, 1.0), 1.0, rescale=(1.0, 0.0)))
    shared = ds.SharedFunctionalGroupsSequence[0]
    del shared.PixelValueTransformationSequence
    for index, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        item = pydicom.Dataset()
        item.RescaleSlope, item.RescaleIntercept, item.RescaleType = 2, -100 * (index + 1), "HU"
        frame.PixelValueTransformationSequence = pydicom.Sequence([item])
    image = decode(to_bytes(ds))
    assert image.pixels[0].max() == -100.0 and image.pixels[1].max() == -200.0


def test_imager_pixel_spacing_is_the_fallback_and_absent_spacing_is_none() -> None:
    ds = dataset(write_ct_slice(HU, (0.5, 0.5)))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.143, 0.144]
    assert decode(to_bytes(ds)).pixel_spacing_mm == (0.143, 0.144)
    del ds.ImagerPixelSpacing
    del ds.SliceThickness
    image = decode(to_bytes(ds))
    assert image.pixel_spacing_mm is None and image.slice_spacing_mm is None


@pytest.mark.parametrize("syntax", ["explicit_le", "jpeg2000_lossless", "rle"])
def test_compressed_ct_slices_decode(syntax: str) -> None:
    data = write_ct_slice(HU[:40, :40], (1.0, 1.0), transfer_syntax=syntax)  # type: ignore[arg-type]
    np.testing.assert_allclose(decode(data).pixels[0], HU[:40, :40], atol=0.5)


def test_jpeg_baseline_ybr_and_jpeg_ls_corpus_files_decode_to_rgb_and_grey() -> None:
    reference = decode((CORPUS / "SC_rgb_rle.dcm").read_bytes()).pixels.astype(int)
    for name in ("SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm"):
        image = decode((CORPUS / name).read_bytes())
        assert image.photometric == "RGB" and image.pixels.dtype == np.uint8
        assert np.abs(image.pixels.astype(int) - reference).mean() < 4.0, name  # lossy, subsampled
    lossless = decode((CORPUS / "MR_small_jpeg_ls_lossless.dcm").read_bytes())
    np.testing.assert_array_equal(lossless.pixels, decode((CORPUS / "MR_small.dcm").read_bytes()).pixels)


def test_16bit_colour_is_scaled_to_uint8() -> None:
    eight = decode((CORPUS / "SC_rgb_rle.dcm").read_bytes()).pixels
    sixteen = decode((CORPUS / "SC_rgb_rle_16bit_2frame.dcm").read_bytes()).pixels
    assert sixteen.shape == (2, 100, 100, 3) and sixteen.dtype == np.uint8
    np.testing.assert_array_equal(sixteen[0], eight[0])


def test_palette_colour_becomes_rgb() -> None:
    path = CORPUS / "examples_palette.dcm"
    ds = pydicom.dcmread(path)
    expected = apply_color_lut(ds.pixel_array, ds)
    image = decode(path.read_bytes())
    assert image.pixels.shape == (1, *expected.shape) and image.photometric == "RGB"
    scale = 255.0 / 65535.0 if expected.max() > 255 else 1.0
    assert np.abs(image.pixels[0].astype(float) - expected * scale).max() <= 0.5 + 1e-6


def test_dicom_without_preamble_or_transfer_syntax_decodes() -> None:
    ds = dataset(write_ct_slice(HU, (0.7, 0.7)))
    del ds.file_meta
    ds.preamble = None
    data = to_bytes(ds, implicit_vr=True, little_endian=True)
    assert data[128:132] != b"DICM"
    np.testing.assert_allclose(decode(data).pixels[0], HU, atol=0.5)


def with_syntax(uid: str) -> bytes:
    """An encapsulated CT slice whose file meta claims transfer syntax ``uid``."""
    ds = dataset(write_ct_slice(HU[:40, :40], (1.0, 1.0), transfer_syntax="jpeg2000_lossless"))
    # pydicom refuses to write syntaxes it does not know (JPEG XL): write MPEG2, patch the bytes.
    written = "1.2.840.10008.1.2.4.100" if uid.startswith("1.2.840.10008.1.2.4.11") else uid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.file_meta.TransferSyntaxUID = written
        data = to_bytes(ds)
    return data.replace(written.encode(), uid.encode())


def test_mpeg2_transfer_syntax_is_unsupported() -> None:
    with pytest.raises(UnsupportedTransferSyntax) as caught:
        decode(with_syntax("1.2.840.10008.1.2.4.100"))
    assert caught.value.status == 415
    assert "1.2.840.10008.1.2.4.100" in caught.value.message and "MPEG2" in caught.value.message
    assert "JPEG 2000" in caught.value.message  # tells the caller what to send instead


@pytest.mark.parametrize(
    ("uid", "named"),
    [("1.2.840.10008.1.2.4.110", "JPEG XL"), ("1.2.840.10008.1.2.4.107", "HEVC"), ("1.2.3.4.5.6", "1.2.3.4.5.6")],
)
def test_other_undecodable_transfer_syntaxes(uid: str, named: str) -> None:
    with pytest.raises(UnsupportedTransferSyntax, match=named.replace(".", r"\.")):
        decode(with_syntax(uid))


def test_dicom_cut_in_half_is_bad_input() -> None:
    data = (CORPUS / "CT_small.dcm").read_bytes()
    with pytest.raises(BadInput) as caught:
        decode(data[: len(data) // 2])
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_dicom_cut_inside_its_pixel_data_is_bad_input(name: str) -> None:
    data = (CORPUS / name).read_bytes()
    start = data.rfind(b"\xe0\x7f\x10\x00")
    with pytest.raises(BadInput, match="truncated"):
        decode(data[: start + (len(data) - start) // 2])


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.35, 0.5, 0.65, 0.8, 0.95])
@pytest.mark.parametrize("name", ["JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "rtplan.dcm", "MR_small_RLE.dcm"])
def test_dicom_cut_anywhere_gives_a_typed_4xx(name: str, fraction: float) -> None:
    """A cut on an element boundary before the pixel data is indistinguishable from an object
    without pixels (NotAnImage, with a hint); anywhere else it is BadInput."""
    data = (CORPUS / name).read_bytes()
    with pytest.raises((BadInput, NotAnImage)):
        decode(data[: int(len(data) * fraction)])


def test_corrupt_compressed_pixel_data_is_bad_input() -> None:
    ds = dataset(write_ct_slice(HU[:40, :40], (1.0, 1.0), transfer_syntax="jpeg2000_lossless"))
    encapsulated = bytearray(ds.PixelData)
    encapsulated[40:] = bytes(len(encapsulated) - 40)
    ds.PixelData = bytes(encapsulated)
    with pytest.raises(BadInput, match="could not be decoded"):
        decode(to_bytes(ds))


def test_rt_plan_is_not_an_image() -> None:
    with pytest.raises(NotAnImage) as caught:
        decode((CORPUS / "rtplan.dcm").read_bytes())
    assert caught.value.status == 422 and "RT Plan Storage" in caught.value.message
    assert "1.2.840" not in caught.value.message  # names, never UIDs


@pytest.mark.parametrize(
    ("name", "sop_class"),
    [
        ("liver_1frame.dcm", "Segmentation Storage"),
        ("rtdose.dcm", "RT Dose Storage"),
        ("test-SR.dcm", "Comprehensive SR Storage"),
    ],
)
def test_segmentations_dose_and_reports_are_not_images(name: str, sop_class: str) -> None:
    with pytest.raises(NotAnImage, match=sop_class):
        decode((CORPUS / name).read_bytes())


def test_samples_per_pixel_other_than_1_or_3_is_unprocessable() -> None:
    ds = dataset(write_ct_slice(HU, (1.0, 1.0)))
    ds.SamplesPerPixel = 4
    with pytest.raises(UnprocessableImage, match="samples per pixel"):
        decode(to_bytes(ds))


def test_too_many_frames_or_pixels_are_unprocessable_before_decoding() -> None:
    ds = dataset(write_ct_slice(HU, (1.0, 1.0)))
    ds.NumberOfFrames = 4096
    with pytest.raises(UnprocessableImage, match="frames"):
        decode(to_bytes(ds))
    ds = dataset(write_ct_slice(HU, (1.0, 1.0)))
    ds.Rows, ds.Columns = 20_000, 10_000
    with pytest.raises(UnprocessableImage, match="megapixels"):
        decode(to_bytes(ds))


@functools.cache
def malformed_variants() -> dict[str, bytes]:
    """Broken versions of a phantom CT whose identifiers must never appear in an error."""
    good = write_ct_slice(HU, (1.0, 1.0))
    variants = {"truncated": good[: len(good) * 2 // 3], "mpeg2": with_syntax("1.2.840.10008.1.2.4.100")}

    def edited(edit: object) -> bytes:
        ds = dataset(good)
        edit(ds)  # type: ignore[operator]
        return to_bytes(ds)

    variants["no-pixels"] = edited(lambda ds: delattr(ds, "PixelData"))
    variants["no-rows"] = edited(lambda ds: delattr(ds, "Rows"))
    frames = edited(lambda ds: setattr(ds, "NumberOfFrames", 77))
    variants["bad-frames"] = frames.replace(b"\x28\x00\x08\x00IS\x02\x0077", b"\x28\x00\x08\x00IS\x02\x001A")
    variants["bad-slope"] = edited(lambda ds: setattr(ds, "RescaleSlope", "0"))
    variants["too-many-frames"] = edited(lambda ds: setattr(ds, "NumberOfFrames", 5000))
    variants["samples"] = edited(lambda ds: setattr(ds, "SamplesPerPixel", 2))
    variants["segmentation"] = edited(lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.66.4"))
    variants["bad-syntax-uid"] = with_syntax("Phantom^Liver")
    return variants


@pytest.mark.parametrize("variant", sorted(malformed_variants()))
def test_errors_never_contain_identifiers_nor_warn_nor_log(variant: str, caplog: pytest.LogCaptureFixture) -> None:
    data = malformed_variants()[variant]
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught_warnings:
        warnings.simplefilter("always")
        with pytest.raises(MedsegError) as caught:
            decode(data)
    assert 400 <= caught.value.status < 500
    text = caught.value.message + repr(caught.value.to_body())
    assert not [value for value in IDENTIFIERS if value in text], text
    assert "Traceback" not in text and "Error(" not in text
    error = caught.value  # pydicom's own exceptions (which can quote values) are not chained
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    assert not [w for w in caught_warnings if any(v in str(w.message) for v in IDENTIFIERS)]
    assert not [r for r in caplog.records if any(v in r.getMessage() for v in IDENTIFIERS)]


def test_decode_dicom_directly_rejects_non_dicom() -> None:
    with pytest.raises(MedsegError) as caught:
        decode_dicom(b"not dicom at all" * 10)
    assert 400 <= caught.value.status < 500
