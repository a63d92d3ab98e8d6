"""PNG / JPEG → DecodedImage with Pillow (one frame, no patient geometry)."""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from services.codecs.decoded import DecodedImage
from services.codecs.dicom import quiet_decoders
from services.errors import BadInput, MedsegError, UnprocessableImage, reraise_process_exit

MAX_PIXELS = 100_000_000  # width × height

_GREY_MODES = {"L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_TO_GREY = {"1", "LA", "La"}  # bilevel → 0/255 grey; grey + alpha → grey


def decode_raster(data: bytes, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """PNG or JPEG bytes → (1, rows, cols) float32 grey (0-255, or 0-65535 for 16-bit PNG)
    or (1, rows, cols, 3) uint8 RGB in the stored pixel grid (EXIF orientation is not applied:
    masks must line up with the stored rows and columns). Alpha is dropped, a palette becomes
    RGB; an animated PNG gives its first frame. Larger than ``max_pixels`` (from the header,
    before decoding): 422.
    """
    quiet_decoders()  # Pillow's bomb warning is replaced by _check_size
    try:
        with Image.open(BytesIO(bytes(data)), formats=("PNG", "JPEG")) as image:
            _check_size(image.size, max_pixels)
            source = "png" if image.format == "PNG" else "jpeg"
            image.load()
            pixels = _to_array(image)
    except MedsegError:
        raise
    except Image.DecompressionBombError:
        raise UnprocessableImage(_too_large_message(max_pixels=max_pixels)) from None
    except MemoryError:
        raise UnprocessableImage("the image is too large to decode") from None
    except UnidentifiedImageError:
        raise BadInput("the upload is not a readable PNG or JPEG image") from None
    except BaseException as error:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... on bad data
        reraise_process_exit(error)
        raise BadInput("the PNG/JPEG image is truncated or corrupt and could not be decoded") from None
    return DecodedImage(
        pixels=pixels,
        modality="OT",
        source=source,
        pixel_spacing_mm=None,
        slice_spacing_mm=None,
        window=None,
        photometric="RGB" if pixels.ndim == 4 else "MONOCHROME2",
    )


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise UnprocessableImage(f"the image is {width}x{height} pixels; it has nothing to segment")
    if width * height > max_pixels:
        raise UnprocessableImage(_too_large_message(f"{width}x{height} pixels", max_pixels))


def _too_large_message(what: str = "too large", max_pixels: int = MAX_PIXELS) -> str:
    return f"the image is {what}; at most {max_pixels / 1_000_000:g} megapixels are accepted"


def _to_array(image: Image.Image) -> np.ndarray:
    """A loaded Pillow image → (1, rows, cols) float32 grey or (1, rows, cols, 3) uint8 RGB."""
    if image.mode in _TO_GREY:
        image = image.convert("L")
    if image.mode in _GREY_MODES:
        return np.asarray(image).astype(np.float32)[None]
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))[None]
