"""NIfTI-1/2 volumes (``.nii`` or gzip ``.nii.gz`` bytes) in and label maps out, with nibabel.

Arrays keep nibabel's on-disk axis order (X, Y, Z[, C]); the affine maps voxel indices to
scanner millimetres (RAS+). Output label maps reuse the input's grid, affine and orientation
codes, so they overlay the input in any viewer.
"""

from __future__ import annotations

import gzip
import io
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from services.errors import BadInput, PayloadTooLarge, UnprocessableImage, UnsupportedMediaType

_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")
_NIFTI2_MAGICS = (b"n+2\x00", b"ni2\x00")
AFFINE_TOLERANCE_MM = 1e-3
INFLATE_CHUNK_BYTES = 2**20  # compressed input fed, and inflated output taken, per zlib call
_HEAD_BYTES = 540  # a NIfTI-2 header; a NIfTI-1 header is 348


@dataclass(frozen=True)
class NiftiVolume:
    """``data`` (X, Y, Z) or (X, Y, Z, C) float32 after scl_slope/inter; ``affine`` (4, 4) voxel → mm."""

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | nib.Nifti2Header

    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        """Voxel size (X, Y, Z) in mm, from the header's pixdim."""
        return tuple(float(z) for z in self.header.get_zooms()[:3])  # type: ignore[return-value]


def _inflated_pieces(data: bytes, piece_bytes: int) -> Iterator[bytes]:
    """Gzip ``data`` inflated in pieces of at most ``piece_bytes``, feeding at most 1 MiB of input per call.

    First gzip member only (bytes after it are ignored, as before). 400 when corrupt or truncated.
    """
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    view = memoryview(data)
    try:
        for start in range(0, len(view), INFLATE_CHUNK_BYTES):
            pending: bytes | memoryview = view[start : start + INFLATE_CHUNK_BYTES]
            while not inflater.eof:
                piece = inflater.decompress(pending, piece_bytes)
                pending = inflater.unconsumed_tail
                if piece:
                    yield piece
                elif not pending:
                    break  # this input chunk is used up
            if inflater.eof:
                return
    except zlib.error:
        raise BadInput("the gzip stream is corrupt") from None
    raise BadInput("the gzip stream is truncated")


def gunzip_head(data: bytes, size: int) -> bytes:
    """The first ``size`` bytes of gzip ``data`` inflated (fewer when the file is shorter); 400 when corrupt or
    truncated before ``size`` bytes."""
    head = bytearray()
    for piece in _inflated_pieces(data, size):
        head += piece
        if len(head) >= size:
            break
    return bytes(head[:size])


def gunzip_limited(data: bytes, max_bytes: int, keep: int | None = None) -> bytes:
    """Decompress gzip ``data`` in ≤ 1 MiB pieces: BadInput when corrupt or truncated, PayloadTooLarge as soon as
    more than ``max_bytes`` come out. Only the first ``keep`` bytes (default ``max_bytes``) are kept and returned;
    the rest is counted against ``max_bytes`` and dropped, so memory stays within ``keep`` + 2 MiB."""
    keep = max_bytes if keep is None else min(keep, max_bytes)
    kept: list[bytes] = []
    kept_bytes = total = 0
    for piece in _inflated_pieces(data, INFLATE_CHUNK_BYTES):
        total += len(piece)
        if total > max_bytes:
            raise PayloadTooLarge(f"the decompressed volume exceeds {max_bytes // 2**20} MiB")
        if kept_bytes < keep:
            kept.append(piece[: keep - kept_bytes])
            kept_bytes += len(kept[-1])
    return b"".join(kept)


def _nifti_class(head: bytes) -> type[nib.Nifti1Image] | type[nib.Nifti2Image] | None:
    if len(head) >= 348 and head[344:348] in _NIFTI1_MAGICS:
        return nib.Nifti1Image
    if len(head) >= 540 and head[4:8] in _NIFTI2_MAGICS:
        return nib.Nifti2Image
    return None


def declared_nifti_bytes(head: bytes) -> int | None:
    """File size in bytes that a single-file NIfTI-1/2 header declares: vox_offset + voxels × itemsize.

    ``head`` is the file's first 540 bytes (or all of a shorter file). None when it is not a NIfTI-1/2 header;
    400 when dim, datatype or vox_offset are invalid. The header is read with nibabel's own class (endianness
    guessed as nibabel does when it later reads the file), so the size is what nibabel would allocate.
    """
    image_class = _nifti_class(head)
    if image_class is None:
        return None
    header_class = image_class.header_class
    try:
        header = header_class(head[: header_class.sizeof_hdr], check=False)
        ndim = int(header["dim"][0])
        shape = header.get_data_shape()
        itemsize = header.get_data_dtype().itemsize
        offset = header.get_data_offset()
    except Exception:  # noqa: BLE001 - unknown datatype, NaN vox_offset, inconsistent freesurfer shape
        raise BadInput("the NIfTI header is malformed") from None
    if not 1 <= ndim <= 7 or min(shape) < 0 or itemsize == 0 or offset < 0:
        raise BadInput("the NIfTI header has invalid dimensions, datatype or data offset")
    return max(offset, header_class.sizeof_hdr + 4) + math.prod(shape) * itemsize


def _check_declared(head: bytes, max_bytes: int) -> int | None:
    """``declared_nifti_bytes(head)``, refused with 413 when over ``max_bytes``, before anything is inflated."""
    declared = declared_nifti_bytes(head)
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(
            f"the NIfTI header declares {declared / 2**20:.1f} MiB, over the {max_bytes // 2**20} MiB limit"
        )
    return declared


def _image_class(raw: bytes) -> type[nib.Nifti1Image] | type[nib.Nifti2Image]:
    image_class = _nifti_class(raw)
    if image_class is None:
        raise UnsupportedMediaType("the upload is not a NIfTI-1 or NIfTI-2 single-file image (.nii or .nii.gz)")
    return image_class


def read_nifti(data: bytes, max_bytes: int) -> NiftiVolume:
    """Decode ``.nii``/``.nii.gz`` bytes. 415 for other formats, 400 for corrupt or truncated files,
    413 when the header declares, or the file inflates to, more than ``max_bytes``,
    422 for volumes that are not 3-D or 4-D."""
    if not data:
        raise BadInput("an uploaded NIfTI file is empty")
    if data[:2] == _GZIP_MAGIC:
        declared = _check_declared(gunzip_head(data, _HEAD_BYTES), max_bytes)
        # Bytes past the declared size are tolerated (nibabel ignores them in a .nii too) but count against
        # max_bytes and are not kept. Not NIfTI: keep nothing, still inflate, so 400/413 precede 415 as before.
        raw = gunzip_limited(data, max_bytes, keep=0 if declared is None else declared)
    else:
        raw = bytes(data)
        if len(raw) > max_bytes:
            raise PayloadTooLarge(f"the NIfTI file exceeds {max_bytes // 2**20} MiB")
        _check_declared(raw[:_HEAD_BYTES], max_bytes)
    image_class = _image_class(raw)
    try:
        image = image_class.from_bytes(raw)
        shape = image.shape
        if len(shape) not in (3, 4):
            raise UnprocessableImage(f"expected a 3-D or 4-D NIfTI volume, got {len(shape)}-D")
        array = np.asarray(image.dataobj, dtype=np.float32)
    except (UnprocessableImage, UnsupportedMediaType):
        raise
    except MemoryError:
        raise UnprocessableImage("the NIfTI volume is too large to decode") from None
    except Exception:  # noqa: BLE001 - nibabel raises many types on malformed headers or short data
        raise BadInput("the NIfTI file is malformed or truncated") from None
    if not np.all(np.isfinite(array)):
        raise UnprocessableImage("the NIfTI volume contains NaN or infinite values")
    return NiftiVolume(array, np.asarray(image.affine, dtype=np.float64), image.header)


def stack_channels(volumes: dict[str, NiftiVolume]) -> tuple[np.ndarray, NiftiVolume]:
    """Co-registered 3-D volumes by channel name (in order) → ((C, X, Y, Z) float32, the first volume).

    Shapes must be equal and affines equal within 1e-3 mm; otherwise 422 naming the channel.
    """
    names = list(volumes)
    reference = volumes[names[0]]
    for name in names:
        volume = volumes[name]
        if volume.data.ndim != 3:
            raise UnprocessableImage(f"{name} must be a 3-D volume, got shape {list(volume.data.shape)}")
        if volume.data.shape != reference.data.shape:
            raise UnprocessableImage(
                f"{name} has shape {list(volume.data.shape)} but {names[0]} has {list(reference.data.shape)}; "
                "the channels must be co-registered in one grid"
            )
        if not np.allclose(volume.affine, reference.affine, atol=AFFINE_TOLERANCE_MM):
            raise UnprocessableImage(
                f"{name} has a different affine from {names[0]}; the channels must be co-registered in one grid"
            )
    return np.stack([volumes[name].data for name in names]), reference


def split_channels(volume: NiftiVolume, names: tuple[str, ...]) -> np.ndarray:
    """One 4-D volume (X, Y, Z, C) with C = len(names) → (C, X, Y, Z) float32; 422 otherwise."""
    if volume.data.ndim != 4 or volume.data.shape[3] != len(names):
        raise UnprocessableImage(
            f"a single NIfTI file must be 4-D with {len(names)} volumes ({', '.join(names)}) on the 4th axis; "
            f"got shape {list(volume.data.shape)}"
        )
    return np.ascontiguousarray(np.moveaxis(volume.data, 3, 0))


def label_map_nifti(labels: np.ndarray, reference: NiftiVolume) -> bytes:
    """(X, Y, Z) uint8 labels → gzip NIfTI bytes in ``reference``'s grid, affine and orientation codes."""
    header = reference.header.copy()
    image = type_for(header)(labels.astype(np.uint8), reference.affine, header=header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1.0, 0.0)
    sform, sform_code = reference.header.get_sform(coded=True)
    qform, qform_code = reference.header.get_qform(coded=True)
    if sform is not None:
        image.set_sform(sform, int(sform_code))
    if qform is not None:
        image.set_qform(qform, int(qform_code))
    image.header["intent_name"] = b"labels"
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=0) as stream:
        stream.write(image.to_bytes())
    return buffer.getvalue()


def type_for(header: nib.Nifti1Header | nib.Nifti2Header) -> type[nib.Nifti1Image] | type[nib.Nifti2Image]:
    return nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
