"""Unit tests of the STOW-RS body parser: services/dicomweb/multipart.py."""

from __future__ import annotations

import hashlib
import random
import re
import tracemalloc
import uuid
from collections.abc import Iterable

import pytest

from services.dicomweb.multipart import (
    MAX_PREAMBLE,
    PartData,
    PartEnd,
    PartStart,
    RelatedParts,
    RelatedType,
    related_content_type,
)
from services.errors import BadInput, UnsupportedMediaType

Part = tuple[dict[str, str], bytes]
# Byte runs that a naive delimiter scan trips on; none is a delimiter of boundary B (see _clean).
TRICKY = (b"\r\n--", b"\r\n-", b"\r\n\r\n\r\n", b"\r", b"\n", b"\r\r\n", b"--B", b"\r\n--Bx", b"\r\n--B-x",
          b"\r\n--B\rx", b"\r\n--B\r\r", b"\r\n--BB", b"--B--", b"\r\n--A\r\n")


def _clean(data: bytes, boundary: bytes) -> bytes:
    """``data`` with an "x" put after each "\\r\\n--boundary" that would be a delimiter: followed by
    "--", CRLF, or transport padding (space, tab), also at the very end, where a CRLF follows."""
    pattern = re.compile(rb"(\r\n--" + re.escape(boundary) + rb")(?=--|\r\n|[ \t])")
    return pattern.sub(rb"\1x", data + b"\r\n")[:-2]


def _payload(rng: random.Random, size: int, boundary: bytes = b"B") -> bytes:
    """Random bytes with TRICKY runs (and the given boundary in place of B) spliced in."""
    out = bytearray()
    while len(out) < size:
        if rng.random() < 0.5:
            out += rng.choice(TRICKY).replace(b"B", boundary)
        else:
            out += rng.randbytes(rng.randint(0, 40))
    return _clean(bytes(out[:size]), boundary)


def _headers(rng: random.Random, index: int) -> dict[str, str]:
    return rng.choice([
        {},
        {"content-type": "application/dicom"},
        {"content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1", "content-id": f"<p{index}@x>"},
    ])


def _body(parts: list[Part], boundary: bytes = b"B", preamble: bytes = b"", epilogue: bytes = b"",
          padding: bytes = b"") -> bytes:
    """A multipart body in the layout of RFC 2046; header names as sent are title-cased."""
    out = [preamble + b"\r\n" if preamble else b""]
    for headers, data in parts:
        out.append(b"--" + boundary + padding + b"\r\n")
        out += [f"{name.title()}: {value}\r\n".encode() for name, value in headers.items()]
        out += [b"\r\n", data, b"\r\n"]
    out.append(b"--" + boundary + b"--" + epilogue)
    return b"".join(out)


def _collect(events: Iterable[PartStart | PartData | PartEnd]) -> list[Part]:
    """Reassemble events into parts, asserting their grammar: (PartStart PartData* PartEnd)*."""
    parts: list[Part] = []
    pieces: list[bytes] | None = None
    for event in events:
        if isinstance(event, PartStart):
            assert pieces is None, "PartStart inside a part"
            headers, pieces = event.headers, []
        elif isinstance(event, PartData):
            assert pieces is not None and event.data, "PartData outside a part, or empty"
            pieces.append(event.data)
        else:
            assert isinstance(event, PartEnd) and pieces is not None, "PartEnd outside a part"
            parts.append((headers, b"".join(pieces)))
            pieces = None
    assert pieces is None, "last part not ended"
    return parts


def _parse(chunks: Iterable[bytes], boundary: bytes = b"B") -> list[Part]:
    parser = RelatedParts(boundary)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    parser.finish()
    return _collect(events)


def _random_chunks(rng: random.Random, body: bytes) -> list[bytes]:
    """``body`` cut into chunks of 1 byte to 64 KiB, log-uniformly."""
    chunks, i = [], 0
    while i < len(body):
        size = int(2 ** rng.uniform(0, 16))
        chunks.append(body[i : i + size])
        i += size
    return chunks


def _parts(seed: int, count: int, size: int, boundary: bytes = b"B") -> list[Part]:
    rng = random.Random(seed)
    return [(_headers(rng, i), _payload(rng, rng.randint(0, size), boundary)) for i in range(count)]


# --- related_content_type --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('multipart/related; type="application/dicom"; boundary="abc"', RelatedType(b"abc", "application/dicom")),
        ("multipart/related; type=application/dicom; boundary=abc", RelatedType(b"abc", "application/dicom")),
        ('Multipart/Related; Type="Application/DICOM"; Boundary=AbC', RelatedType(b"AbC", "application/dicom")),
        ('multipart/related ;boundary="a b;c" ; type="application/dicom"', RelatedType(b"a b;c", "application/dicom")),
        ("multipart/related; boundary=abc", RelatedType(b"abc", None)),
        ('multipart/related; type="application/dicom; transfer-syntax=*"; boundary=x', RelatedType(b"x", "application/dicom")),
        ("multipart/related; boundary=" + "b" * 73, RelatedType(b"b" * 73, None)),
    ],
)
def test_related_content_type_parses_quoted_and_unquoted_parameters(header: str, expected: RelatedType) -> None:
    assert related_content_type(header) == expected


def test_related_content_type_takes_the_given_root_types() -> None:
    header = 'multipart/related; type="application/dicom+xml"; boundary=b'
    assert related_content_type(header, ("application/dicom", "application/dicom+xml")).root_type == "application/dicom+xml"
    with pytest.raises(UnsupportedMediaType):
        related_content_type(header)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "application/dicom",
        'multipart/form-data; boundary="abc"',
        "multipart/mixed; boundary=abc",
        'multipart/related; type="application/json"; boundary=abc',
        'multipart/related; type=""; boundary=abc',
        'multipart/related; type="application/dicom"',
        "text/plain; charset=utf-8",
    ],
)
def test_related_content_type_answers_415_to_other_media_types(header: str | None) -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        related_content_type(header)
    assert caught.value.status == 415


@pytest.mark.parametrize("boundary", ['""', "b" * 257, '"a\tb"'])
def test_related_content_type_rejects_unusable_boundaries(boundary: str) -> None:
    with pytest.raises(BadInput):
        related_content_type(f'multipart/related; type="application/dicom"; boundary={boundary}')


# --- RelatedParts: reassembly ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_every_split_of_a_small_body_gives_the_parts_back(seed: int) -> None:
    parts = _parts(seed, seed + 1, 60)
    body = _body(parts, preamble=b"preamble" if seed % 2 else b"", epilogue=b"\r\n" if seed % 3 else b"")
    assert _parse([body]) == parts
    assert _parse([body[i : i + 1] for i in range(len(body))]) == parts
    for i in range(len(body) + 1):
        assert _parse([body[:i], body[i:]]) == parts, f"split at {i}"
    rng = random.Random(seed)
    for _ in range(200):
        cuts = sorted(rng.sample(range(len(body) + 1), 3))
        assert _parse([body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]) == parts


@pytest.mark.parametrize("seed", range(3))
def test_a_body_of_megabytes_in_random_chunks_gives_the_parts_back(seed: int) -> None:
    boundary = b"----=_Part_%d_" % seed + b"x" * 30
    parts = _parts(100 + seed, 5, 1_500_000, boundary)
    body = _body(parts, boundary)
    assert len(body) > 1_000_000
    assert _parse(_random_chunks(random.Random(seed), body), boundary) == parts


def test_the_payload_generator_puts_near_delimiters_into_the_data() -> None:
    """Guards the tests above: their data does hold the runs that a wrong scanner would split on."""
    data = b"".join(data for _, data in _parts(0, 5, 60)) + b"".join(d for _, d in _parts(100, 5, 1_500_000, b"B"))
    for run in (b"\r\n--Bx", b"\r\n--B-x", b"\r\n--B\rx", b"\r\n--B\r\r", b"\r\n--", b"\r\n\r\n\r\n"):
        assert run in data


def test_parts_without_headers_empty_parts_and_header_case() -> None:
    body = (b"--B\r\n\r\n\r\n--B\r\nCONTENT-TYPE:application/dicom  \r\ncontent-LENGTH:   3\r\nX-A: 1\r\nx-a: 2\r\n"
            b"\r\nabc\r\n--B\r\n\r\n\r\n\r\n--B--")
    assert _parse([body]) == [
        ({}, b""),
        ({"content-type": "application/dicom", "content-length": "3", "x-a": "1, 2"}, b"abc"),
        ({}, b"\r\n"),
    ]


def test_a_part_content_length_that_disagrees_is_ignored() -> None:
    """Parts are boundary-delimited; a wrong Content-Length is left for the DICOM check of the part."""
    parts = [({"content-length": "2"}, b"abcdef"), ({"content-length": "999"}, b"xy")]
    assert _parse([_body(parts)]) == parts


def test_preamble_epilogue_and_transport_padding_are_ignored() -> None:
    parts = _parts(7, 3, 200)
    body = _body(parts, preamble=b"This is a multi-part message in MIME format.\r\n--Bogus line, not a delimiter",
                 epilogue=b"\r\nepilogue\r\n--B\r\n\r\nnot a part\r\n--B--\r\n", padding=b" \t ")
    assert _parse([body]) == parts
    assert _parse([body[i : i + 1] for i in range(len(body))]) == parts
    assert _parse([b"\r\n\r\n" + _body(parts)]) == parts


# --- RelatedParts: errors --------------------------------------------------------------------------


def test_every_truncation_of_a_body_is_bad_input_from_finish() -> None:
    """Cut anywhere (headers, data, a delimiter, the closing delimiter) short of its last "-"."""
    body = _body(_parts(3, 3, 30))
    assert body.endswith(b"\r\n--B--")
    for cut in range(len(body)):
        parser = RelatedParts(b"B")
        parser.feed(body[:cut])
        with pytest.raises(BadInput):
            parser.finish()


def test_a_body_without_parts_is_bad_input() -> None:
    for body in (b"--B--", b"\r\n--B--\r\n", b""):
        parser = RelatedParts(b"B")
        assert parser.feed(body) == []
        with pytest.raises(BadInput, match="no part|not a multipart"):
            parser.finish()


@pytest.mark.parametrize(
    "garbage",
    [
        b'{"00080018": {"vr": "UI"}}',
        b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4,
        b"--C\r\n\r\ndata\r\n--C--",
        b"\r\nnot multipart-at all\r\n-",
        b"--B",
    ],
)
def test_garbage_is_bad_input(garbage: bytes) -> None:
    parser = RelatedParts(b"B")
    with pytest.raises(BadInput):
        for i in range(0, len(garbage), 7):
            assert parser.feed(garbage[i : i + 7]) == []
        parser.finish()


def test_garbage_without_a_boundary_fails_while_feeding_not_at_the_end() -> None:
    parser = RelatedParts(b"B")
    chunk = random.Random(1).randbytes(16 * 1024).replace(b"\r", b"")
    with pytest.raises(BadInput, match="no boundary"):
        for _ in range(MAX_PREAMBLE // len(chunk) + 2):
            parser.feed(chunk)


@pytest.mark.parametrize(
    "body",
    [
        b"--B\r\nno colon here\r\n\r\ndata\r\n--B--",
        b"--B\r\nBad Name: x\r\n\r\ndata\r\n--B--",
        b"--B\r\n\r\ndata\r\n--B trailing words\r\n--B--",
        b"--B\r\nA: 1\rB: 2\r\n\r\ndata\r\n--B--",
    ],
)
def test_malformed_parts_are_bad_input_and_stay_failed(body: bytes) -> None:
    parser = RelatedParts(b"B")
    with pytest.raises(BadInput, match="malformed"):
        parser.feed(body)
    with pytest.raises(BadInput):
        parser.feed(b"\r\n--B--")
    with pytest.raises(BadInput):
        parser.finish()


def test_the_constructor_rejects_unusable_boundaries() -> None:
    for boundary in (b"", b"a\r\nb", b"x" * 257):
        with pytest.raises(BadInput):
            RelatedParts(boundary)


# --- bodies as real clients send them --------------------------------------------------------------


def test_a_body_encoded_by_dicomweb_client_parses() -> None:
    from dicomweb_client.web import DICOMwebClient

    rng = random.Random(11)
    instances = [b"\x00" * 128 + b"DICM" + _payload(rng, rng.randint(1, 5000)) for _ in range(4)]
    content_type = 'multipart/related; type="application/dicom"; boundary="0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"'
    body = DICOMwebClient._encode_multipart_message(instances, content_type)
    related = related_content_type(content_type)
    assert related == RelatedType(b"0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1", "application/dicom")
    for chunks in ([body], _random_chunks(rng, body), [body[i : i + 3] for i in range(0, len(body), 3)]):
        parts = _parse(chunks, related.boundary)
        assert [data for _, data in parts] == instances
        assert all(headers == {"content-type": "application/dicom"} for headers, _ in parts)


def test_a_body_in_orthancs_layout_parses() -> None:
    """Orthanc's STOW client: unquoted 73-character boundary "<uuid>-<uuid>", parts with Content-Type
    and Content-Length, each followed by CRLF, and "--boundary--" without a final CRLF."""
    rng = random.Random(12)
    uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    related = related_content_type(f'multipart/related; type="application/dicom"; boundary={uid}-{uid}')
    assert related.boundary == f"{uid}-{uid}".encode() and len(related.boundary) == 73
    instances = [b"\x00" * 128 + b"DICM" + _payload(rng, rng.randint(1, 300_000), related.boundary) for _ in range(5)]
    body = b"".join(
        b"--" + related.boundary + b"\r\nContent-Type: application/dicom\r\nContent-Length: %d\r\n\r\n" % len(dicom)
        + dicom + b"\r\n"
        for dicom in instances
    ) + b"--" + related.boundary + b"--"
    parts = _parse(_random_chunks(rng, body), related.boundary)
    assert parts == [({"content-type": "application/dicom", "content-length": str(len(d))}, d) for d in instances]


# --- memory ------------------------------------------------------------------------------------------


def test_200_mb_in_64_kib_chunks_keeps_the_parser_small() -> None:
    """Every 64 KiB chunk ends in a partial delimiter that the next one breaks: the parser holds it
    back and sends it on with the next chunk's data, so it copies, but keeps nothing."""
    chunk_size, count = 64 * 1024, 3200  # 200 MiB of part data
    boundary = b"0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"
    near = b"\r\n--" + boundary[:20]
    chunk = b"x" + random.Random(5).randbytes(chunk_size - 1 - len(near)).replace(b"\r", b"\n") + near
    assert len(chunk) == chunk_size and chunk.endswith(near) and _clean(chunk, boundary) == chunk
    expected = hashlib.sha256()
    for _ in range(count):
        expected.update(chunk)

    parser, seen, sizes, kinds = RelatedParts(boundary), hashlib.sha256(), [], []

    def take(events: list[PartStart | PartData | PartEnd]) -> None:
        for event in events:
            kinds.append(type(event))
            if isinstance(event, PartData):
                sizes.append(len(event.data))
                seen.update(event.data)

    tracemalloc.start()
    try:
        take(parser.feed(b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"))
        for _ in range(count):
            take(parser.feed(chunk))
        take(parser.feed(b"\r\n--" + boundary + b"--\r\n"))
        parser.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (kinds[0], kinds[-1], kinds.count(PartStart), kinds.count(PartEnd)) == (PartStart, PartEnd, 1, 1)
    assert sum(sizes) == count * chunk_size and seen.digest() == expected.digest()
    assert max(sizes) <= chunk_size + len(boundary) + 8
    assert peak < 8 * chunk_size, f"peak traced memory {peak} bytes"
