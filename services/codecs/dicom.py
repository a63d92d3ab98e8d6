"""DICOM Part 10 → DecodedImage with pydicom 3 and the pylibjpeg decoders.

Every failure becomes one of the typed errors of ``services.errors``. Messages name attributes,
SOP class names and transfer syntaxes, never element values (patient names, IDs, dates) nor
pydicom's own messages, which can quote them; exception chains are cut for the same reason.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from services.codecs.decoded import DecodedImage
from services.errors import (
    BadInput,
    MedsegError,
    NotAnImage,
    UnprocessableImage,
    UnsupportedTransferSyntax,
    reraise_process_exit,
)

MAX_FRAMES = 2048
MAX_FRAME_PIXELS = 100_000_000  # rows × cols
MAX_TOTAL_SAMPLES = 2**31  # frames × rows × cols × samples: 8 GiB as float32

_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# (7FE0,0010) Pixel Data, (7FE0,0008) Float and (7FE0,0009) Double Float Pixel Data tags as
# they appear in little- and big-endian encodings.
_PIXEL_TAG_BYTES = (
    b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10",
    b"\xe0\x7f\x08\x00", b"\x7f\xe0\x00\x08",
    b"\xe0\x7f\x09\x00", b"\x7f\xe0\x00\x09",
)
# SOP classes that carry pixel data but are not images to segment.
_NON_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose Storage",
}
_NON_IMAGE_MODALITIES = {"SEG": "Segmentation", "RTDOSE": "RT Dose"}
# Transfer syntaxes newer than pydicom 3.0's UID dictionary.
_EXTRA_SYNTAX_NAMES = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
}
_SEND_INSTEAD = "send an uncompressed, JPEG, JPEG 2000, JPEG-LS or RLE encoded image"
_UID_SYNTAX = re.compile(r"^[0-9]+(\.[0-9]+)+$")
# Modules whose warnings can quote element values: pydicom, its decoder plugins and Pillow.
_QUIET_MODULES = r"(pydicom|pylibjpeg|openjpeg|libjpeg|rle|PIL)(\.|$)"


@dataclass(frozen=True)
class _Layout:
    """The Image Pixel module, validated: what the decoded array must look like."""

    frames: int
    rows: int
    cols: int
    samples: int
    photometric: str
    is_float: bool


def read_dataset(data: bytes, *, stop_before_pixels: bool = False) -> Dataset:
    """Parse DICOM bytes (with or without preamble and file meta); BadInput when unreadable."""
    quiet_decoders()
    try:
        return pydicom.dcmread(BytesIO(data), force=True, stop_before_pixels=stop_before_pixels)
    except BaseException as error:  # noqa: BLE001 - any parser failure is a malformed upload
        reraise_process_exit(error)
        raise BadInput("the DICOM file could not be parsed; it may be truncated or corrupt") from None


def decode_dicom(data: bytes) -> DecodedImage:
    """DICOM bytes → DecodedImage: (frames, rows, cols) float32 modality units, or (..., 3) uint8 RGB."""
    data = bytes(data)
    ds = read_dataset(data)
    try:
        return _decode(ds, data)
    except MedsegError:
        raise
    except MemoryError:
        raise UnprocessableImage("the DICOM image is too large to decode") from None
    except BaseException as error:  # noqa: BLE001 - pydicom raises many types on malformed data
        reraise_process_exit(error)
        raise BadInput("the DICOM file is malformed and could not be decoded") from None


def quiet_decoders() -> None:
    """Keep the warnings of pydicom, its plugins and Pillow, and pydicom's log records, out of
    the service logs: they can quote element values, i.e. patient identifiers.

    Cheap and idempotent; re-run on every decode because servers and test runners reset the
    warning filters. Our filter is moved to the front only when something else is there.
    """
    pydicom_log = logging.getLogger("pydicom")
    pydicom_log.disabled = True  # its own records
    if pydicom_log.level <= logging.CRITICAL:
        pydicom_log.setLevel(logging.CRITICAL + 1)  # child loggers (pydicom.pixels...) inherit the level
    first = warnings.filters[0] if warnings.filters else None
    if first is None or first[0] != "ignore" or getattr(first[3], "pattern", None) != _QUIET_MODULES:
        warnings.filterwarnings("ignore", module=_QUIET_MODULES)


def _decode(ds: Dataset, data: bytes) -> DecodedImage:
    _require_image(ds, data)
    syntax = pixel_transfer_syntax(ds)
    layout = _layout(ds)
    _check_size(layout)
    decoded, photometric = _decode_pixels(ds, syntax, layout)
    modality = _modality(ds)
    window = _window(ds)
    if layout.samples == 3 or photometric == "PALETTE COLOR":
        pixels = _to_rgb(ds, decoded, photometric)
        out_photometric = "RGB"
    else:
        pixels, lo_hi = _grey_values(ds, decoded, layout)
        if photometric == "MONOCHROME1" and modality != "CT":
            pixels, window = _invert(pixels, lo_hi, window)
        out_photometric = "MONOCHROME2"
    if pixels.dtype != np.uint8 and not np.isfinite(pixels).all():
        raise UnprocessableImage("the DICOM image contains non-finite (NaN or infinite) pixel values")
    return DecodedImage(
        pixels=pixels,
        modality=modality,
        source="dicom",
        pixel_spacing_mm=_pixel_spacing(ds),
        slice_spacing_mm=_slice_spacing(ds),
        window=window,
        photometric=out_photometric,
    )


# --- what kind of object ------------------------------------------------------------------------


def _sop_class_name(ds: Dataset) -> str | None:
    """The SOP class's dictionary name ("RT Plan Storage"), None when absent or unknown."""
    uid = element_value(ds, "SOPClassUID") or element_value(getattr(ds, "file_meta", Dataset()), "MediaStorageSOPClassUID")
    text = str(uid or "").strip()
    if not _UID_SYNTAX.match(text):
        return None
    if text in _NON_IMAGE_CLASSES:
        return _NON_IMAGE_CLASSES[text]
    name = UID(text).name
    return None if name == text else name


def _require_image(ds: Dataset, data: bytes) -> None:
    """NotAnImage for objects without pixels or whose pixels are not an image (SEG, RT Dose);
    BadInput for an image whose pixel data element is there in the bytes but could not be read.
    """
    if len(ds) == 0:
        raise BadInput("the DICOM file has no readable data elements; it may be truncated or corrupt")
    name = _sop_class_name(ds)
    uid = str(element_value(ds, "SOPClassUID") or "").strip()
    modality = str(element_value(ds, "Modality") or "").strip().upper()
    if uid in _NON_IMAGE_CLASSES or modality in _NON_IMAGE_MODALITIES:
        kind = name or _NON_IMAGE_CLASSES.get(uid) or f"{_NON_IMAGE_MODALITIES[modality]} (modality {modality})"
        raise NotAnImage(f"the upload is a DICOM {kind} object, not an image; send the image to segment")
    if any(tag in ds for tag in _PIXEL_TAGS):
        return
    described = f"a DICOM {name} object" if name else "a DICOM object of unknown class"
    is_image_class = name is None or "Image Storage" in name
    if is_cut_short(ds, data) or (is_image_class and any(tag in data for tag in _PIXEL_TAG_BYTES)):
        raise BadInput(f"the upload is {described} but the file is truncated or malformed")
    if name and "Image Storage" in name:
        raise NotAnImage(
            f"the upload is {described} without pixel data (the file may be truncated); send an image with its pixels"
        )
    raise NotAnImage(f"the upload is {described}, which has no image pixels; send an image to segment")


def is_cut_short(ds: Dataset, data: bytes) -> bool:
    """True when a top-level value is shorter than its declared length, or bytes remain after
    the last element the parser kept: the file was cut or is corrupt."""
    last = None
    for element in ds.elements():
        value, length = getattr(element, "value", None), getattr(element, "length", None)
        if isinstance(value, bytes) and isinstance(length, int) and length != 0xFFFFFFFF and len(value) < length:
            return True
        last = element
    tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if isinstance(tell, int) and isinstance(length, int) and length != 0xFFFFFFFF:
        return tell + length < len(data)
    return False


def pixel_transfer_syntax(ds: Dataset) -> UID:
    """The transfer syntax, inferred for native data when the file meta lacks it; 415 if undecodable."""
    if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
        ds.file_meta = FileMetaDataset()
    text = str(element_value(ds.file_meta, "TransferSyntaxUID") or "").strip()
    if not text:
        syntax = _infer_native_syntax(ds)
        ds.file_meta.TransferSyntaxUID = syntax
        return syntax
    if not _UID_SYNTAX.match(text) or len(text) > 64:
        raise UnsupportedTransferSyntax(f"the DICOM transfer syntax is not a valid UID; {_SEND_INSTEAD}")
    syntax = UID(text)
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = False
    if not available:
        name = _EXTRA_SYNTAX_NAMES.get(text) or (syntax.name if syntax.name != text else "")
        label = f"{text} ({name})" if name else text
        raise UnsupportedTransferSyntax(
            f"DICOM transfer syntax {label} is not supported for segmentation; {_SEND_INSTEAD}"
        )
    return syntax


def _infer_native_syntax(ds: Dataset) -> UID:
    """Without a transfer syntax only native (uncompressed) pixel data can be read."""
    element = next(ds[tag] for tag in _PIXEL_TAGS if tag in ds)
    if getattr(element, "is_undefined_length", False):
        raise BadInput("the DICOM file has compressed pixel data but no transfer syntax in its file meta")
    implicit, little = ds.original_encoding
    if little is False:
        return ExplicitVRBigEndian
    return ImplicitVRLittleEndian if implicit is not False else ExplicitVRLittleEndian


# --- the Image Pixel module ---------------------------------------------------------------------


def _layout(ds: Dataset) -> _Layout:
    is_float = "PixelData" not in ds
    required = ["Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation"]
    if not is_float:
        required += ["BitsStored", "PixelRepresentation"]
    missing = [keyword for keyword in required if element_value(ds, keyword) in (None, "")]
    if missing:
        raise BadInput(f"the DICOM image lacks required attribute(s) {', '.join(missing)}")
    rows, cols = _int_attr(ds, "Rows"), _int_attr(ds, "Columns")
    samples = _int_attr(ds, "SamplesPerPixel")
    frames = _int_attr(ds, "NumberOfFrames") if element_value(ds, "NumberOfFrames") not in (None, "") else 1
    if frames < 0:
        raise BadInput("the DICOM attribute NumberOfFrames is negative")
    if rows < 1 or cols < 1:
        raise UnprocessableImage(f"the DICOM image is {rows}x{cols} pixels; it has nothing to segment")
    if samples not in (1, 3):
        raise UnprocessableImage(
            f"the DICOM image has {samples} samples per pixel; only 1 (grey) or 3 (colour) are supported"
        )
    photometric = str(element_value(ds, "PhotometricInterpretation")).strip().upper()
    return _Layout(max(frames, 1), rows, cols, samples, photometric, is_float)


def _check_size(layout: _Layout) -> None:
    if layout.frames > MAX_FRAMES:
        raise UnprocessableImage(f"the DICOM image has {layout.frames} frames; at most {MAX_FRAMES} are accepted")
    if layout.rows * layout.cols > MAX_FRAME_PIXELS:
        megapixels = MAX_FRAME_PIXELS // 1_000_000
        raise UnprocessableImage(
            f"the DICOM frames are {layout.rows}x{layout.cols} pixels; at most {megapixels} megapixels are accepted"
        )
    if layout.frames * layout.rows * layout.cols * layout.samples > MAX_TOTAL_SAMPLES:
        raise UnprocessableImage("the DICOM image is too large to decode; send fewer frames")


def _decode_pixels(ds: Dataset, syntax: UID, layout: _Layout) -> tuple[np.ndarray, str]:
    """Stored values (frames, rows, cols[, 3]) and the photometric interpretation after decoding."""
    try:
        array, meta = get_decoder(syntax).as_array(ds, as_rgb=True)
    except MemoryError:
        raise UnprocessableImage("the DICOM image is too large to decode") from None
    except BaseException as error:  # noqa: BLE001 - every decoder failure (Rust panics too) means unusable pixel data
        reraise_process_exit(error)
        raise BadInput("the DICOM pixel data could not be decoded; it may be truncated or corrupt") from None
    shape = (layout.frames, layout.rows, layout.cols) + ((3,) if layout.samples == 3 else ())
    if array.size != math.prod(shape):
        raise BadInput("the DICOM pixel data does not match the image size given in its header")
    photometric = str(meta.get("photometric_interpretation", layout.photometric)).strip().upper()
    return array.reshape(shape), photometric


# --- pixel values -------------------------------------------------------------------------------


def _to_rgb(ds: Dataset, decoded: np.ndarray, photometric: str) -> np.ndarray:
    """Colour pixels → (frames, rows, cols, 3) uint8 RGB."""
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(decoded, ds)
        except Exception:  # noqa: BLE001
            raise BadInput("the DICOM palette colour lookup table is missing or invalid") from None
        if rgb.ndim != 4 or rgb.shape[-1] != 3:
            raise UnprocessableImage("the DICOM palette colour lookup table does not give RGB colours")
        return _to_uint8(rgb, 16 if rgb.dtype != np.uint8 and rgb.max() > 255 else 8)
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        decoded = convert_color_space(decoded, photometric, "RGB")
    elif photometric != "RGB":
        raise UnprocessableImage(f"the DICOM colour space {photometric[:20]} is not supported; send RGB or YBR_FULL")
    bits = _int_attr(ds, "BitsStored") if element_value(ds, "BitsStored") else decoded.dtype.itemsize * 8
    return _to_uint8(decoded, bits)


def _to_uint8(rgb: np.ndarray, bits: int) -> np.ndarray:
    """Colour samples of ``bits`` significant bits → uint8 0-255."""
    if rgb.dtype == np.uint8:
        return rgb
    scale = 255.0 / float(2 ** min(max(bits, 1), 32) - 1)
    return np.clip(np.rint(rgb.astype(np.float32) * scale), 0, 255).astype(np.uint8)


def _grey_values(ds: Dataset, stored: np.ndarray, layout: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """Stored (frames, rows, cols) → float32 modality values, and (frames, 2): each frame's lowest and
    highest possible modality value (the stored range through the same transform)."""
    if layout.is_float:
        values = stored.astype(np.float32)
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        return values, np.tile(np.array([lo, hi], dtype=np.float32), (layout.frames, 1))
    transform = _modality_transform(ds, layout.frames)
    bits = min(max(_int_attr(ds, "BitsStored"), 1), 32)
    signed = _int_attr(ds, "PixelRepresentation") == 1
    stored_range = [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2**bits - 1]
    extremes = transform(np.tile(np.array(stored_range, dtype=np.int64), (layout.frames, 1)))
    return transform(stored), np.sort(extremes, axis=1)


def _modality_transform(ds: Dataset, frames: int) -> Callable[[np.ndarray], np.ndarray]:
    """The Modality LUT or the (per-frame) rescale as a function on (frames, ...) stored values."""
    if element_value(ds, "ModalityLUTSequence"):
        return lambda stored: apply_modality_lut(stored, ds).astype(np.float32)
    rescale = _rescale_per_frame(ds, frames)
    if rescale is None:
        return lambda stored: stored.astype(np.float32)
    slopes, intercepts = rescale

    def linear(stored: np.ndarray) -> np.ndarray:
        shape = (frames,) + (1,) * (stored.ndim - 1)
        return stored.astype(np.float32) * slopes.reshape(shape) + intercepts.reshape(shape)

    return linear


def _rescale_per_frame(ds: Dataset, frames: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(slopes, intercepts) of shape (frames,) float32 from the top level or the functional groups."""
    top = _linear(ds)
    if top is not None:
        pairs = [top] * frames
    else:
        pairs = [_linear(functional_group_item(ds, "PixelValueTransformationSequence", i)) for i in range(frames)]
        if all(pair is None for pair in pairs):
            return None
        pairs = [pair or (1.0, 0.0) for pair in pairs]
    slopes, intercepts = zip(*pairs)
    return np.asarray(slopes, dtype=np.float32), np.asarray(intercepts, dtype=np.float32)


def _linear(item: Dataset | None) -> tuple[float, float] | None:
    """(RescaleSlope, RescaleIntercept) of one item, None when it has neither."""
    if item is None or (element_value(item, "RescaleSlope") is None and element_value(item, "RescaleIntercept") is None):
        return None
    slope = _float_attr(item, "RescaleSlope", 1.0)
    intercept = _float_attr(item, "RescaleIntercept", 0.0)
    if slope == 0.0 or not (math.isfinite(slope) and math.isfinite(intercept)):
        raise BadInput("the DICOM image has an invalid RescaleSlope or RescaleIntercept")
    return slope, intercept


def _invert(
    pixels: np.ndarray, lo_hi: np.ndarray, window: tuple[float, float] | None
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """MONOCHROME1 → MONOCHROME2: x' = lowest + highest − x per frame (the window centre moves too)."""
    total = (lo_hi[:, 0] + lo_hi[:, 1]).astype(np.float32).reshape(-1, 1, 1)
    if window is not None:
        window = (float(total[0, 0, 0]) - window[0], window[1])
    return total - pixels, window


# --- geometry and display metadata --------------------------------------------------------------


def _modality(ds: Dataset) -> str:
    text = str(element_value(ds, "Modality") or "").strip().upper()
    return text if re.fullmatch(r"[A-Z0-9_]{1,16}", text) else "OT"


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm: PixelSpacing, the functional groups' PixelMeasures, ImagerPixelSpacing."""
    candidates = (
        element_value(ds, "PixelSpacing"),
        element_value(functional_group_item(ds, "PixelMeasuresSequence", 0), "PixelSpacing"),
        element_value(ds, "ImagerPixelSpacing"),
    )
    for value in candidates:
        numbers = _numbers(value)
        if len(numbers) == 2 and all(n > 0 for n in numbers):
            return numbers[0], numbers[1]
    return None


def _slice_spacing(ds: Dataset) -> float | None:
    """Distance between frames in mm: SpacingBetweenSlices, else SliceThickness (top level or groups)."""
    measures = functional_group_item(ds, "PixelMeasuresSequence", 0)
    for item, keyword in ((ds, "SpacingBetweenSlices"), (measures, "SpacingBetweenSlices"),
                          (ds, "SliceThickness"), (measures, "SliceThickness")):
        numbers = _numbers(element_value(item, keyword))
        if numbers and abs(numbers[0]) > 0:
            return abs(numbers[0])
    return None


def _window(ds: Dataset) -> tuple[float, float] | None:
    """The first (WindowCenter, WindowWidth), top level or FrameVOILUTSequence."""
    for item in (ds, functional_group_item(ds, "FrameVOILUTSequence", 0)):
        centers, widths = _numbers(element_value(item, "WindowCenter")), _numbers(element_value(item, "WindowWidth"))
        if centers and widths and widths[0] > 0:
            return centers[0], widths[0]
    return None


def functional_group_item(ds: Dataset, sequence: str, frame: int) -> Dataset | None:
    """The first item of ``sequence`` for ``frame``: per-frame functional group, else the shared one."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        try:
            return getattr(getattr(ds, groups)[index], sequence)[0]
        except Exception:  # noqa: BLE001 - absent or malformed: look elsewhere
            continue
    return None


# --- tolerant element access --------------------------------------------------------------------


def element_value(item: Dataset | None, keyword: str) -> Any:
    """An element's value, None when absent or unreadable."""
    if item is None:
        return None
    try:
        return item.get(keyword)
    except Exception:  # noqa: BLE001
        return None


def _int_attr(ds: Dataset, keyword: str) -> int:
    try:
        return int(str(ds.get(keyword)).strip())
    except Exception:  # noqa: BLE001
        raise BadInput(f"the DICOM attribute {keyword} is not a valid integer") from None


def _float_attr(ds: Dataset, keyword: str, default: float) -> float:
    value = element_value(ds, keyword)
    if value in (None, ""):
        return default
    try:
        return float(value)
    except Exception:  # noqa: BLE001
        raise BadInput(f"the DICOM attribute {keyword} is not a valid number") from None


def _numbers(value: Any) -> list[float]:
    """A DS/IS/FD value or multi-value as finite floats; [] when absent or not numeric."""
    if value in (None, ""):
        return []
    values = [value] if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") else list(value)
    try:
        numbers = [float(v) for v in values]
    except Exception:  # noqa: BLE001
        return []
    return numbers if all(math.isfinite(n) for n in numbers) else []
