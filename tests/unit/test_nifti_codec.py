"""NIfTI codec: decoding .nii/.nii.gz uploads, channel stacking/splitting and label-map output."""

from __future__ import annotations

import gzip
import io
import struct

import nibabel as nib
import numpy as np
import pytest

from services.codecs.nifti import (
    NiftiVolume,
    gunzip_limited,
    label_map_nifti,
    read_nifti,
    split_channels,
    stack_channels,
)
from services.errors import BadInput, PayloadTooLarge, UnprocessableImage, UnsupportedMediaType

MAX_BYTES = 64 * 2**20
# Anisotropic voxels (0.8, 1.0, 2.5) mm, X flipped, non-zero translation.
AFFINE = np.array(
    [
        [-0.8, 0.0, 0.0, 90.0],
        [0.0, 1.0, 0.0, -126.0],
        [0.0, 0.0, 2.5, -72.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
NAMES = ("t1", "t1ce", "t2", "flair")


def _data(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Deterministic float32 test data with distinct values per voxel."""
    return np.random.default_rng(seed).normal(100.0, 30.0, size=shape).astype(np.float32)


def _nii_bytes(
    data: np.ndarray,
    affine: np.ndarray = AFFINE,
    image_class: type[nib.Nifti1Image] | type[nib.Nifti2Image] = nib.Nifti1Image,
    codes: tuple[int, int] | None = None,
) -> bytes:
    """Single-file NIfTI bytes for ``data``; ``codes`` = (sform_code, qform_code) when given."""
    image = image_class(data, affine)
    if codes is not None:
        sform_code, qform_code = codes
        image.set_sform(affine if sform_code else None, sform_code)
        image.set_qform(affine, qform_code)
    return image.to_bytes()


def _volume(data: np.ndarray, affine: np.ndarray = AFFINE) -> NiftiVolume:
    """A decoded volume built directly (no bytes round trip)."""
    return NiftiVolume(np.asarray(data, dtype=np.float32), np.asarray(affine, dtype=np.float64), nib.Nifti1Header())


# --- read_nifti: happy paths --------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True], ids=["nii", "nii.gz"])
def test_round_trip_preserves_data_affine_and_voxel_size(compressed: bool) -> None:
    data = _data((7, 6, 5))
    raw = _nii_bytes(data)
    if compressed:
        raw = gzip.compress(raw)
        assert raw[:2] == b"\x1f\x8b"
    volume = read_nifti(raw, MAX_BYTES)
    assert volume.data.dtype == np.float32
    assert volume.data.shape == (7, 6, 5)
    np.testing.assert_array_equal(volume.data, data)
    np.testing.assert_allclose(volume.affine, AFFINE, atol=1e-6)
    assert volume.voxel_mm == pytest.approx((0.8, 1.0, 2.5), abs=1e-6)
    assert all(isinstance(v, float) for v in volume.voxel_mm)


def test_integer_data_becomes_float32() -> None:
    data = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3) - 20
    volume = read_nifti(_nii_bytes(data), MAX_BYTES)
    assert volume.data.dtype == np.float32
    np.testing.assert_array_equal(volume.data, data.astype(np.float32))


def test_four_d_volume_keeps_channel_axis_last() -> None:
    data = _data((5, 4, 3, 4))
    volume = read_nifti(gzip.compress(_nii_bytes(data)), MAX_BYTES)
    assert volume.data.shape == (5, 4, 3, 4)
    np.testing.assert_array_equal(volume.data, data)
    assert volume.voxel_mm == pytest.approx((0.8, 1.0, 2.5), abs=1e-6)


def test_scl_slope_and_inter_are_applied() -> None:
    stored = (np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2) - 7) * 3
    raw = bytearray(_nii_bytes(stored))
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw[:348])))
    assert header.get_data_dtype() == np.int16
    # scl_slope, scl_inter: float32 at byte offsets 112 and 116 of a NIfTI-1 header.
    endian = header.endianness
    struct.pack_into(f"{endian}ff", raw, 112, 2.0, -5.0)
    volume = read_nifti(bytes(raw), MAX_BYTES)
    assert volume.data.dtype == np.float32
    np.testing.assert_array_equal(volume.data, stored.astype(np.float32) * 2.0 - 5.0)


def test_nifti2_is_accepted() -> None:
    data = _data((6, 5, 4), seed=3)
    raw = _nii_bytes(data, image_class=nib.Nifti2Image)
    assert raw[4:8] == b"n+2\x00"
    for payload in (raw, gzip.compress(raw)):
        volume = read_nifti(payload, MAX_BYTES)
        np.testing.assert_array_equal(volume.data, data)
        np.testing.assert_allclose(volume.affine, AFFINE, atol=1e-6)
        assert volume.voxel_mm == pytest.approx((0.8, 1.0, 2.5), abs=1e-6)
        assert isinstance(volume.header, nib.Nifti2Header)


# --- read_nifti: errors -------------------------------------------------------------------------


def test_empty_upload_is_bad_input() -> None:
    with pytest.raises(BadInput):
        read_nifti(b"", MAX_BYTES)


def test_random_bytes_are_unsupported_media_type() -> None:
    junk = b"\x00\x01" + np.random.default_rng(1).bytes(2000)  # cannot start with the gzip magic
    with pytest.raises(UnsupportedMediaType):
        read_nifti(junk, MAX_BYTES)


def test_png_is_unsupported_media_type() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 600
    with pytest.raises(UnsupportedMediaType):
        read_nifti(png, MAX_BYTES)


def test_gzip_of_non_nifti_is_unsupported_media_type() -> None:
    with pytest.raises(UnsupportedMediaType):
        read_nifti(gzip.compress(b"hello world" * 100), MAX_BYTES)


def test_truncated_nii_is_bad_input() -> None:
    raw = _nii_bytes(_data((8, 8, 8)))
    truncated = raw[: 352 + (len(raw) - 352) // 2]  # header intact, half the voxels missing
    with pytest.raises(BadInput):
        read_nifti(truncated, MAX_BYTES)


def test_truncated_gzip_is_bad_input() -> None:
    compressed = gzip.compress(_nii_bytes(_data((8, 8, 8))))
    with pytest.raises(BadInput):
        read_nifti(compressed[: len(compressed) // 2], MAX_BYTES)
    with pytest.raises(BadInput):
        read_nifti(compressed[:-4], MAX_BYTES)  # only the gzip trailer missing


def test_corrupt_gzip_is_bad_input() -> None:
    compressed = bytearray(gzip.compress(_nii_bytes(_data((8, 8, 8)))))
    compressed[20:40] = b"\xff" * 20
    with pytest.raises(BadInput):
        read_nifti(bytes(compressed), MAX_BYTES)


def test_gzip_bomb_is_payload_too_large() -> None:
    bomb = gzip.compress(b"\x00" * (10 * 2**20))
    assert len(bomb) < 2**20
    with pytest.raises(PayloadTooLarge):
        read_nifti(bomb, 2**20)
    with pytest.raises(PayloadTooLarge):
        gunzip_limited(bomb, 2**20)


def test_gunzip_limited_accepts_exactly_max_bytes() -> None:
    payload = bytes(range(256)) * 16
    assert gunzip_limited(gzip.compress(payload), len(payload)) == payload
    with pytest.raises(PayloadTooLarge):
        gunzip_limited(gzip.compress(payload), len(payload) - 1)


def test_two_d_image_is_unprocessable() -> None:
    raw = nib.Nifti1Image(_data((6, 5)), np.eye(4)).to_bytes()
    with pytest.raises(UnprocessableImage):
        read_nifti(raw, MAX_BYTES)


def test_non_finite_values_are_unprocessable() -> None:
    data = _data((4, 4, 4))
    data[1, 2, 3] = np.nan
    with pytest.raises(UnprocessableImage):
        read_nifti(_nii_bytes(data), MAX_BYTES)


# --- stack_channels / split_channels ------------------------------------------------------------


def test_stack_channels_in_given_order() -> None:
    volumes = {name: _volume(_data((5, 4, 3), seed=i)) for i, name in enumerate(("t2", "t1", "flair"))}
    stacked, reference = stack_channels(volumes)
    assert stacked.shape == (3, 5, 4, 3)
    assert stacked.dtype == np.float32
    for k, name in enumerate(("t2", "t1", "flair")):
        np.testing.assert_array_equal(stacked[k], volumes[name].data)
    assert reference is volumes["t2"]


def test_stack_channels_rejects_different_shape_naming_the_channel() -> None:
    volumes = {"t1": _volume(_data((5, 4, 3))), "t1ce": _volume(_data((5, 4, 3))), "flair": _volume(_data((5, 4, 4)))}
    with pytest.raises(UnprocessableImage) as caught:
        stack_channels(volumes)
    assert "flair" in caught.value.message
    assert "t1ce" not in caught.value.message


def test_stack_channels_rejects_half_millimetre_affine_shift() -> None:
    shifted = AFFINE.copy()
    shifted[1, 3] += 0.5
    volumes = {"t1": _volume(_data((5, 4, 3))), "t2": _volume(_data((5, 4, 3)), shifted)}
    with pytest.raises(UnprocessableImage) as caught:
        stack_channels(volumes)
    assert "t2" in caught.value.message


def test_stack_channels_accepts_rounding_level_affine_difference() -> None:
    nudged = AFFINE.copy()
    nudged[:3, :] += 1e-5
    volumes = {"t1": _volume(_data((5, 4, 3), seed=1)), "t2": _volume(_data((5, 4, 3), seed=2), nudged)}
    stacked, _ = stack_channels(volumes)
    assert stacked.shape == (2, 5, 4, 3)


def test_stack_channels_rejects_four_d_channel() -> None:
    volumes = {"t1": _volume(_data((5, 4, 3))), "t2": _volume(_data((5, 4, 3, 2)))}
    with pytest.raises(UnprocessableImage) as caught:
        stack_channels(volumes)
    assert "t2" in caught.value.message


def test_split_channels_moves_last_axis_first() -> None:
    data = _data((5, 4, 3, 4))
    split = split_channels(_volume(data), NAMES)
    assert split.shape == (4, 5, 4, 3)
    assert split.dtype == np.float32
    assert split.flags["C_CONTIGUOUS"]
    for k in range(4):
        np.testing.assert_array_equal(split[k], data[..., k])


@pytest.mark.parametrize("shape", [(5, 4, 3, 3), (5, 4, 3)])
def test_split_channels_rejects_wrong_channel_count(shape: tuple[int, ...]) -> None:
    with pytest.raises(UnprocessableImage):
        split_channels(_volume(_data(shape)), NAMES)


# --- label_map_nifti ----------------------------------------------------------------------------


def _decode_label_map(payload: bytes) -> nib.Nifti1Image | nib.Nifti2Image:
    """Gunzip and parse a label-map payload with nibabel (not with the codec under test)."""
    assert payload[:2] == b"\x1f\x8b"
    raw = gzip.decompress(payload)
    image_class = nib.Nifti2Image if raw[4:8] == b"n+2\x00" else nib.Nifti1Image
    return image_class.from_bytes(raw)


@pytest.mark.parametrize(
    ("codes", "image_class"),
    [
        ((1, 1), nib.Nifti1Image),  # scanner / scanner
        ((2, 0), nib.Nifti1Image),  # nibabel's default: aligned sform, no qform
        ((0, 1), nib.Nifti1Image),  # qform only
        ((4, 2), nib.Nifti1Image),  # MNI sform, aligned qform
        ((1, 1), nib.Nifti2Image),
    ],
)
def test_label_map_overlays_the_reference(
    codes: tuple[int, int], image_class: type[nib.Nifti1Image] | type[nib.Nifti2Image]
) -> None:
    shape = (7, 6, 5)
    reference = read_nifti(gzip.compress(_nii_bytes(_data(shape), image_class=image_class, codes=codes)), MAX_BYTES)
    assert (int(reference.header["sform_code"]), int(reference.header["qform_code"])) == codes
    labels = np.random.default_rng(5).choice(np.array([0, 1, 2, 4], dtype=np.uint8), size=shape)

    image = _decode_label_map(label_map_nifti(labels, reference))
    assert isinstance(image, image_class)
    assert image.get_data_dtype() == np.uint8
    assert image.shape == shape
    np.testing.assert_allclose(image.affine, reference.affine, atol=1e-5)
    assert int(image.header["sform_code"]) == codes[0]
    assert int(image.header["qform_code"]) == codes[1]
    np.testing.assert_array_equal(np.asarray(image.dataobj), labels)


def test_label_map_drops_reference_intensity_scaling() -> None:
    stored = np.arange(5 * 4 * 3, dtype=np.int16).reshape(5, 4, 3)
    raw = bytearray(_nii_bytes(stored))
    struct.pack_into("<ff", raw, 112, 2.0, -5.0)  # nibabel writes little-endian on this machine
    reference = read_nifti(bytes(raw), MAX_BYTES)
    np.testing.assert_array_equal(reference.data, stored * 2.0 - 5.0)
    labels = (stored % 5).astype(np.uint8)
    labels[labels == 3] = 4

    image = _decode_label_map(label_map_nifti(labels, reference))
    assert image.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(image.dataobj), labels)


def test_label_map_from_four_d_reference_is_three_d() -> None:
    reference = read_nifti(_nii_bytes(_data((5, 4, 3, 4))), MAX_BYTES)
    labels = np.zeros((5, 4, 3), dtype=np.uint8)
    labels[1:3, 1:3, 1] = 4
    image = _decode_label_map(label_map_nifti(labels, reference))
    assert image.shape == (5, 4, 3)
    np.testing.assert_array_equal(np.asarray(image.dataobj), labels)
    np.testing.assert_allclose(image.affine, AFFINE, atol=1e-5)


def test_label_map_reads_back_through_the_codec() -> None:
    reference = read_nifti(_nii_bytes(_data((6, 5, 4))), MAX_BYTES)
    labels = np.random.default_rng(9).choice(np.array([0, 1, 2, 4], dtype=np.uint8), size=(6, 5, 4))
    volume = read_nifti(label_map_nifti(labels, reference), MAX_BYTES)
    np.testing.assert_array_equal(volume.data, labels.astype(np.float32))
    assert volume.voxel_mm == pytest.approx(reference.voxel_mm)
