"""NIfTI codec: decoding .nii/.nii.gz uploads, channel stacking/splitting and label-map output."""

from __future__ import annotations

import gzip
import io
import struct
import tracemalloc
import zlib
from collections.abc import Callable

import nibabel as nib
import numpy as np
import pytest

from services.codecs.nifti import (
    NiftiVolume,
    declared_nifti_bytes,
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


# --- read_nifti: size limits from the header, bounded inflation ---------------------------------

MiB = 2**20
HEADER_KINDS = [(nib.Nifti1Image, "<"), (nib.Nifti1Image, ">"), (nib.Nifti2Image, "<")]
HEADER_IDS = ["nifti1-le", "nifti1-be", "nifti2"]


def _header_only(
    shape: tuple[int, ...],
    image_class: type[nib.Nifti1Image] | type[nib.Nifti2Image] = nib.Nifti1Image,
    endianness: str = "<",
    dtype: type = np.float32,
) -> bytes:
    """The first vox_offset bytes of a single-file NIfTI declaring ``shape`` × ``dtype``: no voxel data."""
    header = image_class.header_class(endianness=endianness)
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_data_offset(header.single_vox_offset)
    head = header.binaryblock + b"\x00" * 4  # no extensions
    assert len(head) == header.single_vox_offset
    return head


def _gzip_with_zeros(prefix: bytes, zero_bytes: int) -> bytes:
    """gzip(prefix + ``zero_bytes`` zeros), compressed 1 MiB at a time so the test never holds the inflated file."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(prefix)]
    zeros = bytes(MiB)
    for start in range(0, zero_bytes, MiB):
        parts.append(compressor.compress(zeros[: min(MiB, zero_bytes - start)]))
    parts.append(compressor.flush())
    return b"".join(parts)


def _traced_peak(call: Callable[[], object]) -> int:
    """Peak bytes Python allocated (tracemalloc, which sees zlib's output buffers) while ``call`` ran."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_gzip_declaring_more_than_the_limit_is_refused_before_inflating() -> None:
    # 256 × 256 × 512 float32 zeros: a 128 MiB file that gzips to about 130 KB.
    payload = _gzip_with_zeros(_header_only((256, 256, 512)), 128 * MiB)
    assert len(payload) < MiB

    refusals: list[PayloadTooLarge] = []

    def refuse() -> None:
        with pytest.raises(PayloadTooLarge) as caught:
            read_nifti(payload, 64 * MiB)
        refusals.append(caught.value)

    # Inflating up to the limit first (the old behaviour) allocates 64 MiB here.
    assert _traced_peak(refuse) < 8 * MiB
    assert "128.0 MiB" in refusals[0].message and "64 MiB" in refusals[0].message


@pytest.mark.parametrize("compressed", [False, True], ids=["nii", "nii.gz"])
@pytest.mark.parametrize(("image_class", "endianness"), HEADER_KINDS, ids=HEADER_IDS)
def test_header_declaring_more_than_the_limit_is_payload_too_large(
    image_class: type[nib.Nifti1Image] | type[nib.Nifti2Image], endianness: str, compressed: bool
) -> None:
    # Only the header is sent: without the declared-size check nibabel would allocate the 128 MiB, then fail.
    raw = _header_only((256, 256, 256), image_class, endianness, np.int64)
    assert declared_nifti_bytes(raw) == len(raw) + 128 * MiB
    with pytest.raises(PayloadTooLarge):
        read_nifti(gzip.compress(raw) if compressed else raw, 64 * MiB)


@pytest.mark.parametrize("compressed", [False, True], ids=["nii", "nii.gz"])
@pytest.mark.parametrize(("image_class", "endianness"), HEADER_KINDS, ids=HEADER_IDS)
def test_file_exactly_at_the_limit_is_accepted_one_byte_over_is_not(
    image_class: type[nib.Nifti1Image] | type[nib.Nifti2Image], endianness: str, compressed: bool
) -> None:
    data = _data((6, 5, 4), seed=4)
    header = image_class.header_class(endianness=endianness)
    raw = image_class(data, AFFINE, header=header).to_bytes()
    assert declared_nifti_bytes(raw[:540]) == len(raw)
    payload = gzip.compress(raw) if compressed else raw
    volume = read_nifti(payload, len(raw))
    np.testing.assert_array_equal(volume.data, data)
    assert volume.header.endianness == endianness
    with pytest.raises(PayloadTooLarge):
        read_nifti(payload, len(raw) - 1)


def test_gzip_inflating_past_its_header_and_the_limit_is_refused_in_bounded_memory() -> None:
    # The header declares 8 × 8 × 8 float32 (2 KiB of voxels); 64 MiB of zeros follow inside the gzip stream.
    # 413, not 400: bytes past the declared end are tolerated (nibabel ignores them in a .nii, see the next
    # test), but MEDSEG_MAX_VOLUME_MB bounds the decompressed file, whatever its header says.
    payload = _gzip_with_zeros(_nii_bytes(_data((8, 8, 8))), 64 * MiB)
    assert len(payload) < MiB

    def refuse() -> None:
        with pytest.raises(PayloadTooLarge):
            read_nifti(payload, 32 * MiB)

    # Only the declared bytes are kept; the excess is counted in 1 MiB pieces. The old code held 32 MiB.
    assert _traced_peak(refuse) < 8 * MiB


def test_trailing_bytes_within_the_limit_are_tolerated_but_not_kept() -> None:
    data = _data((8, 8, 8), seed=6)
    raw = _nii_bytes(data)
    np.testing.assert_array_equal(read_nifti(raw + b"\x00" * 4096, MAX_BYTES).data, data)  # as nibabel does
    payload = _gzip_with_zeros(raw, 24 * MiB)
    volumes: list[NiftiVolume] = []
    assert _traced_peak(lambda: volumes.append(read_nifti(payload, 32 * MiB))) < 8 * MiB
    np.testing.assert_array_equal(volumes[0].data, data)


def test_plain_nii_longer_than_the_limit_is_payload_too_large() -> None:
    raw = _nii_bytes(_data((8, 8, 8))) + b"\x00" * MiB  # a small declared volume, a long file
    with pytest.raises(PayloadTooLarge):
        read_nifti(raw, MiB)


def _patched(raw: bytes, fmt: str, offset: int, *values: float) -> bytes:
    patched = bytearray(raw)
    struct.pack_into(fmt, patched, offset, *values)
    return bytes(patched)


@pytest.mark.parametrize("compressed", [False, True], ids=["nii", "nii.gz"])
@pytest.mark.parametrize(
    ("fmt", "offset", "values"),
    [
        ("<8h", 40, (3, 8, -8, 8, 1, 1, 1, 1)),  # a negative dim
        ("<h", 40, (0,)),  # dim[0] = 0
        ("<h", 40, (8,)),  # dim[0] = 8
        ("<h", 70, (999,)),  # unknown datatype
        ("<f", 108, (float("nan"),)),  # vox_offset
        ("<f", 108, (-352.0,)),
    ],
    ids=["negative-dim", "ndim-0", "ndim-8", "datatype", "nan-offset", "negative-offset"],
)
def test_invalid_header_is_bad_input(fmt: str, offset: int, values: tuple[float, ...], compressed: bool) -> None:
    raw = _patched(_nii_bytes(_data((8, 8, 8))), fmt, offset, *values)  # nibabel writes little-endian here
    with pytest.raises(BadInput):
        read_nifti(gzip.compress(raw) if compressed else raw, MAX_BYTES)


def test_only_the_first_gzip_member_is_read() -> None:
    # As before: a complete file in the first member decodes, later members are ignored; a file split
    # across members is truncated.
    data = _data((6, 5, 4), seed=7)
    raw = _nii_bytes(data)
    np.testing.assert_array_equal(read_nifti(gzip.compress(raw) + gzip.compress(b"x" * 100), MAX_BYTES).data, data)
    with pytest.raises(BadInput):
        read_nifti(gzip.compress(raw[:400]) + gzip.compress(raw[400:]), MAX_BYTES)


def test_gunzip_limited_keeps_only_the_first_bytes() -> None:
    payload = bytes(range(256)) * 16
    assert gunzip_limited(gzip.compress(payload), len(payload), keep=1000) == payload[:1000]
    with pytest.raises(PayloadTooLarge):
        gunzip_limited(gzip.compress(payload), len(payload) - 1, keep=10)


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
