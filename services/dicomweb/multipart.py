"""Sans-IO streaming parser for ``multipart/related`` request bodies (STOW-RS, PS3.18 §10.5).

``related_content_type`` checks a request's Content-Type; ``RelatedParts`` turns body chunks into
PartStart / PartData / PartEnd events, doing no I/O and keeping no more than about one chunk.

The byte scanning (delimiters split across chunks, CRLF runs and partial delimiters inside part
data, transport padding, part headers, the epilogue) is python-multipart's ``MultipartParser``.
What it does not do for multipart/related, this module adds:

- A preamble before the first delimiter (RFC 2046 §5.1.1), or transport padding after it: the
  library skips only CR/LF there and raises otherwise. The parser is primed with a synthetic part
  without headers, so the body's first ``--boundary`` ends that part like any later delimiter and
  the preamble becomes its data, which is dropped (and capped: garbage fails early).
- The end of the body: the library's ``finalize`` checks nothing, so a truncated body, or one
  without any boundary, would pass silently. ``finish`` raises BadInput unless the closing
  delimiter was seen after at least one part.
- Its exceptions (ValueError subclasses) become BadInput.

Boundary-delimited only: a part's own Content-Length header is neither needed nor checked, and a
value that differs from the part's real length is not an error here. The part's bytes go on as
they are; the receiver validates each as a DICOM file, so one bad part fails alone (a Failed SOP
item) instead of failing the whole request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

from services.errors import BadInput, UnsupportedMediaType

# RFC 2046 says 1..70, but Orthanc's STOW client sends "<uuid>-<uuid>" (73 characters).
# 256 is python-multipart's own limit.
MAX_BOUNDARY_LENGTH = 256
# Bytes before the first delimiter; past this the body is taken for something else than multipart.
MAX_PREAMBLE = 64 * 1024


@dataclass(frozen=True)
class RelatedType:
    """The parameters of a multipart/related Content-Type."""

    boundary: bytes
    root_type: str | None  # the ``type`` parameter, lower-cased, without parameters; None if absent


@dataclass(frozen=True)
class PartStart:
    """A part begins; its headers, names lower-cased, values stripped (repeats joined by ", ")."""

    headers: dict[str, str]


@dataclass(frozen=True)
class PartData:
    """Some bytes of the current part's content (never empty)."""

    data: bytes


@dataclass(frozen=True)
class PartEnd:
    """The current part is complete: its closing delimiter was seen."""


Event = PartStart | PartData | PartEnd


def related_content_type(header: str | None, accepted: tuple[str, ...] = ("application/dicom",)) -> RelatedType:
    """Parse a request's Content-Type. UnsupportedMediaType unless it is multipart/related (any case)
    with a boundary and, when a ``type`` parameter is present, a type in ``accepted``; a missing
    ``type`` is accepted. Parameters may be quoted or not. BadInput for an unusable boundary."""
    hint = f'send multipart/related; type="{accepted[0]}"; boundary=... with one part per instance'
    try:
        media_type, params = parse_options_header(header)
    except ValueError:  # characters outside latin-1
        raise UnsupportedMediaType(hint) from None
    if media_type != b"multipart/related" or b"boundary" not in params:
        raise UnsupportedMediaType(hint)
    root = params.get(b"type")
    root_type = None if root is None else root.decode("latin-1").split(";")[0].strip().lower()
    if root_type is not None and root_type not in {a.lower() for a in accepted}:
        raise UnsupportedMediaType(hint)
    _check_boundary(params[b"boundary"])
    return RelatedType(params[b"boundary"], root_type)


def _check_boundary(boundary: bytes) -> None:
    if not 1 <= len(boundary) <= MAX_BOUNDARY_LENGTH or any(not 0x20 <= b < 0x7F for b in boundary):
        raise BadInput(f"the multipart boundary must be 1 to {MAX_BOUNDARY_LENGTH} printable ASCII characters")


class RelatedParts:
    """Push parser for one multipart/related body: ``feed`` its chunks in order, then ``finish``.

    Each part gives PartStart, any number of PartData, PartEnd. Data is passed on, never kept:
    one PartData holds at most one chunk plus a held-back partial delimiter (boundary + 4 bytes).
    The preamble and the epilogue (after the closing delimiter) are ignored.
    """

    def __init__(self, boundary: bytes, *, max_preamble: int = MAX_PREAMBLE) -> None:
        _check_boundary(boundary)
        self._max_preamble = max_preamble
        self._events: list[Event] = []
        self._data: list[bytes] = []
        self._headers: dict[str, str] = {}
        self._name = self._value = b""
        self._part = -1  # parts begun; part 0 is the synthetic one that swallows the preamble
        self._preamble = 0
        self._closed = False  # the closing delimiter was seen
        self._failed = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_end": self._on_end,
            },
        )
        # The synthetic part: a delimiter, no headers, then data "\r\n" + the preamble, which the
        # body's first "--boundary" line closes as the delimiter "\r\n--boundary".
        self._parser.write(b"--" + boundary + b"\r\n\r\n\r\n")

    def feed(self, chunk: bytes) -> list[Event]:
        """Parse the next chunk; return the events it completes, in order. BadInput if malformed."""
        if self._failed:
            raise BadInput("the multipart body is malformed")
        try:
            self._parser.write(chunk)
        except ValueError:
            self._failed = True
            where = f"part {self._part}" if self._part > 0 else "the boundary line before the first part"
            raise BadInput(f"malformed multipart/related body: bad header or boundary line in {where}") from None
        if self._part <= 0 and self._preamble > self._max_preamble:
            self._failed = True
            raise BadInput(f"not a multipart/related body: no boundary in its first {self._max_preamble} bytes")
        self._flush_data()
        events, self._events = self._events, []
        return events

    def finish(self) -> None:
        """The body ended. BadInput unless the closing delimiter was seen after at least one part."""
        if self._failed:
            raise BadInput("the multipart body is malformed")
        if self._closed and self._part > 0:
            return
        if self._closed:
            raise BadInput("the multipart/related body has no part")
        if self._part <= 0:
            raise BadInput("not a multipart/related body: its boundary was not found")
        raise BadInput(f"the multipart/related body is truncated: it ends inside part {self._part}")

    def _flush_data(self) -> None:
        if self._data:
            self._events.append(PartData(b"".join(self._data)))
            self._data = []

    def _on_part_begin(self) -> None:
        self._part += 1
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        name, value = self._name.decode("latin-1").lower(), self._value.decode("latin-1").strip()
        self._headers[name] = f"{self._headers[name]}, {value}" if name in self._headers else value
        self._name = self._value = b""

    def _on_headers_finished(self) -> None:
        if self._part > 0:
            self._events.append(PartStart(self._headers))

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part > 0:
            self._data.append(data[start:end])
        else:
            self._preamble += end - start

    def _on_part_end(self) -> None:
        if self._part > 0:
            self._flush_data()
            self._events.append(PartEnd())

    def _on_end(self) -> None:
        self._closed = True


def dicom_parts_body(paths: Iterable[Path], boundary: str) -> Iterator[bytes]:
    """A ``multipart/related; type="application/dicom"`` body of the files at ``paths``, read one
    at a time (STOW-RS requests, WADO-RS answers): each part with its Content-Type and
    Content-Length, then the closing delimiter."""
    for path in paths:
        data = path.read_bytes()
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        yield data
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()
