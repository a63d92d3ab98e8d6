"""Which decoder an upload needs, from its bytes alone (never from a file name or header)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from pydicom.dataset import Dataset

from services.codecs.dicom import read_dataset
from services.errors import BadInput, MedsegError, UnsupportedMediaType

Format = Literal["dicom", "png", "jpeg"]

ACCEPTED = "DICOM (Part 10, with or without preamble), PNG or JPEG"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICM_OFFSET = 128
# Groups a DICOM data set without preamble can start with (file meta, identification, ...).
_LEADING_GROUPS = frozenset({0x0000, 0x0002, 0x0004, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028})
_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")
_CODE_STRING = re.compile(r"^[A-Z0-9_ ]{1,16}$")


def sniff(data: bytes) -> Format:
    """Classify an upload as "dicom", "png" or "jpeg".

    Raises BadInput for an empty body and UnsupportedMediaType for anything else.
    """
    if not data:
        raise BadInput("the request body is empty; send a DICOM, PNG or JPEG image")
    if data[_DICM_OFFSET : _DICM_OFFSET + 4] == b"DICM":
        return "dicom"
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if _is_bare_dicom(data):
        return "dicom"
    raise UnsupportedMediaType(f"the upload is not a supported image format; send {ACCEPTED}")


def _is_bare_dicom(data: bytes) -> bool:
    """True for a DICOM data set without the 128-byte preamble and "DICM" (old ACR-NEMA style)."""
    if len(data) < 8:
        return False
    groups = {int.from_bytes(data[:2], "little"), int.from_bytes(data[:2], "big")}
    if not groups & _LEADING_GROUPS:
        return False
    try:
        ds = read_dataset(data, stop_before_pixels=True)
    except MedsegError:
        return False
    return _has_plausible_content(ds)


def _has_plausible_content(ds: Dataset) -> bool:
    """A forced parse of random bytes yields junk tags; a real data set has recognisable ones."""
    meta = getattr(ds, "file_meta", None)
    checks: tuple[Callable[[], object], ...] = (
        lambda: _UID.match(str(meta.get("TransferSyntaxUID"))),  # type: ignore[union-attr]
        lambda: _UID.match(str(ds.get("SOPClassUID"))),
        lambda: _CODE_STRING.match(str(ds.get("Modality"))),
        lambda: 0 < int(ds.get("Rows")) < 65536,
    )
    for check in checks:
        try:
            if check():
                return True
        except Exception:  # noqa: BLE001 - a junk or absent element is simply not evidence
            continue
    return False
