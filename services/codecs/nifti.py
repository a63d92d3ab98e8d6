"""NIfTI-1/2 volumes (``.nii`` or gzip ``.nii.gz`` bytes) in and label maps out, with nibabel.

Arrays keep nibabel's on-disk axis order (X, Y, Z[, C]); the affine maps voxel indices to
scanner millimetres (RAS+). Output label maps reuse the input's grid, affine and orientation
codes, so they overlay the input in any viewer.
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from services.errors import BadInput, PayloadTooLarge, UnprocessableImage, UnsupportedMediaType

_GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_MAGICS = (b"n+1\x00", b"ni1\x00")
_NIFTI2_MAGICS = (b"n+2\x00", b"ni2\x00")
AFFINE_TOLERANCE_MM = 1e-3


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


def gunzip_limited(data: bytes, max_bytes: int) -> bytes:
    """Decompress gzip ``data``: BadInput when corrupt or truncated, PayloadTooLarge past ``max_bytes``."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, max_bytes + 1)
    except zlib.error:
        raise BadInput("the gzip stream is corrupt") from None
    if len(out) > max_bytes:
        raise PayloadTooLarge(f"the decompressed volume exceeds {max_bytes // 2**20} MiB")
    if not inflater.eof:
        raise BadInput("the gzip stream is truncated")
    return out


def _image_class(raw: bytes) -> type[nib.Nifti1Image] | type[nib.Nifti2Image]:
    if len(raw) >= 348 and raw[344:348] in _NIFTI1_MAGICS:
        return nib.Nifti1Image
    if len(raw) >= 540 and raw[4:8] in _NIFTI2_MAGICS:
        return nib.Nifti2Image
    raise UnsupportedMediaType("the upload is not a NIfTI-1 or NIfTI-2 single-file image (.nii or .nii.gz)")


def read_nifti(data: bytes, max_bytes: int) -> NiftiVolume:
    """Decode ``.nii``/``.nii.gz`` bytes. 415 for other formats, 400 for corrupt or truncated files,
    422 for volumes that are not 3-D or 4-D."""
    if not data:
        raise BadInput("an uploaded NIfTI file is empty")
    raw = gunzip_limited(data, max_bytes) if data[:2] == _GZIP_MAGIC else bytes(data)
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
