"""Image decoders: DICOM, PNG and JPEG uploads → DecodedImage, failures → typed errors."""

from __future__ import annotations

from services.codecs.decoded import DecodedImage
from services.codecs.dicom import decode_dicom
from services.codecs.raster import decode_raster
from services.codecs.sniff import sniff

__all__ = ["DecodedImage", "decode", "decode_dicom", "decode_raster", "sniff"]


def decode(data: bytes) -> DecodedImage:
    """Decode an upload after sniffing its format from the bytes (see ``sniff``)."""
    data = bytes(data)
    if sniff(data) == "dicom":
        return decode_dicom(data)
    return decode_raster(data)
