"""Unit tests of result delivery by STOW-RS: services/jobs/outbox.py, against httpx.MockTransport."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from python_multipart.multipart import MultipartParser, parse_options_header

from services.jobs.outbox import MAX_BACKOFF_S, DeliveryError, backoff_s, deliver
from services.jobs.store import Result

STUDY = "1.2.826.0.1.3680043.8.498.1"
PACS = "http://pacs.example:8042/dicom-web"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture
def results(tmp_path: Path) -> list[Result]:
    """Three result files; their bytes include runs a naive multipart parser trips on."""
    out = []
    for n in range(3):
        sop = f"2.25.{1000 + n}"
        data = b"\0" * 128 + b"DICM" + os.urandom(2000 + n) + b"\r\n--\r\n\r\n" + bytes(range(256)) * (n + 1)
        path = tmp_path / f"{sop}.dcm"
        path.write_bytes(data)
        out.append(Result(sop, SEG_CLASS, STUDY, "2.25.77", "SEG", path, len(data)))
    return out


def store_response(sops: list[str], failed: list[str] = (), status: int = 200) -> httpx.Response:  # type: ignore[assignment]
    body: dict = {
        "00081190": {"vr": "UR", "Value": [f"{PACS}/studies/{STUDY}"]},
        "00081199": {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", "Value": [SEG_CLASS]}, "00081155": {"vr": "UI", "Value": [sop]},
             "00081190": {"vr": "UR", "Value": [f"{PACS}/studies/{STUDY}/series/2.25.77/instances/{sop}"]}}
            for sop in sops
        ]},
    }
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [
            {"00081150": {"vr": "UI", "Value": [SEG_CLASS]}, "00081155": {"vr": "UI", "Value": [sop]},
             "00081197": {"vr": "US", "Value": [0xA700]}} for sop in failed
        ]}
    return httpx.Response(status, json=body, headers={"Content-Type": "application/dicom+json"})


def run(results: list[Result], answer: Callable[[httpx.Request], httpx.Response], url: str = PACS) -> list[httpx.Request]:
    """deliver() against a mock PACS; the requests it made."""
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return answer(request)

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await deliver(client, url, results)

    asyncio.run(main())
    return requests


def parts(request: httpx.Request) -> list[tuple[dict[str, str], bytes]]:
    """The request's multipart/related body parsed by python-multipart: (headers, data) per part."""
    content_type, params = parse_options_header(request.headers["content-type"])
    assert content_type == b"multipart/related"
    found: list[tuple[dict[str, str], bytes]] = []
    state: dict = {}

    def on_part_begin() -> None:
        state.update(headers={}, data=bytearray(), field=b"", value=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode().lower()] = state["value"].decode()
        state["field"], state["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        state["data"] += data[start:end]

    def on_part_end() -> None:
        found.append((state["headers"], bytes(state["data"])))

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_part_end": on_part_end,
    })
    parser.write(request.content)
    parser.finalize()
    return found


def test_the_request_is_a_stow_rs_post_with_one_part_per_result(results: list[Result]) -> None:
    (request,) = run(results, lambda r: store_response([x.sop_uid for x in results]), url=PACS + "/")
    assert request.method == "POST"
    assert str(request.url) == f"{PACS}/studies"
    content_type, params = parse_options_header(request.headers["content-type"])
    assert content_type == b"multipart/related"
    assert params[b"type"] == b"application/dicom"
    assert params[b"boundary"]
    assert request.headers["accept"] == "application/dicom+json"
    found = parts(request)
    assert [data for _, data in found] == [r.path.read_bytes() for r in results]
    for headers, data in found:
        assert headers["content-type"] == "application/dicom"
        assert int(headers["content-length"]) == len(data)
    assert request.headers.get("transfer-encoding") == "chunked"  # streamed one file at a time


def test_each_delivery_uses_a_fresh_boundary_absent_from_the_files(results: list[Result]) -> None:
    answer = lambda r: store_response([x.sop_uid for x in results])  # noqa: E731
    first, second = run(results, answer)[0], run(results, answer)[0]
    b1 = parse_options_header(first.headers["content-type"])[1][b"boundary"]
    b2 = parse_options_header(second.headers["content-type"])[1][b"boundary"]
    assert b1 != b2
    assert all(b1 not in r.path.read_bytes() for r in results)


@pytest.mark.parametrize("status", [200, 202])
def test_every_instance_referenced_is_a_delivery(results: list[Result], status: int) -> None:
    # in another order, with a warning on one of them (202): still all stored
    def answer(request: httpx.Request) -> httpx.Response:
        response = store_response([x.sop_uid for x in reversed(results)], status=status)
        body = response.json()
        body["00081199"]["Value"][0]["00081196"] = {"vr": "US", "Value": [0xB000]}
        return httpx.Response(status, json=body)

    assert len(run(results, answer)) == 1


def test_one_instance_missing_from_the_answer_is_a_failed_delivery(results: list[Result]) -> None:
    with pytest.raises(DeliveryError, match="2 of 3"):
        run(results, lambda r: store_response([x.sop_uid for x in results[:2]]))


def test_an_answer_referencing_other_instances_is_a_failed_delivery(results: list[Result]) -> None:
    with pytest.raises(DeliveryError):
        run(results, lambda r: store_response([x.sop_uid for x in results[1:]] + ["2.25.999"]))


def test_a_failed_sop_sequence_item_is_a_failed_delivery(results: list[Result]) -> None:
    sops = [x.sop_uid for x in results]
    with pytest.raises(DeliveryError, match="1 failed"):
        run(results, lambda r: store_response(sops, failed=[sops[1]], status=202))


@pytest.mark.parametrize("status", [400, 409, 415, 500, 503])
def test_an_error_status_is_a_failed_delivery(results: list[Result], status: int) -> None:
    with pytest.raises(DeliveryError, match=str(status)):
        run(results, lambda r: store_response([x.sop_uid for x in results], status=status))


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(204),
        httpx.Response(200),
        httpx.Response(200, content=b"<NativeDicomModel/>", headers={"Content-Type": "application/dicom+xml"}),
        httpx.Response(200, content=b"\xff\xfe not json"),
        httpx.Response(200, json=[]),
        httpx.Response(200, json={}),
        httpx.Response(200, json="stored"),
    ],
    ids=["204", "200-empty", "200-xml", "200-garbage", "200-list", "200-empty-object", "200-string"],
)
def test_a_2xx_without_a_store_instances_response_is_a_failed_delivery(results: list[Result], response: httpx.Response) -> None:
    with pytest.raises(DeliveryError):
        run(results, lambda r: response)


@pytest.mark.parametrize(
    "body",
    [
        {"00081199": ["2.25.1000"]},
        {"00081199": {"vr": "SQ", "Value": [{"00081155": "2.25.1000"}]}},
        {"00081199": "stored"},
        {"00081199": {"vr": "SQ", "Value": []}, "00081198": ["x"]},
    ],
    ids=["sequence-as-list", "uid-as-string", "sequence-as-string", "failed-as-list"],
)
def test_a_malformed_store_instances_response_is_a_failed_delivery(results: list[Result], body: dict) -> None:
    """Regression (fixed, all four): _referenced_uids calls .get on whatever the PACS put there (the
    sequence, an item's UID, FailedSOPSequence), so a malformed answer raises AttributeError, not
    DeliveryError, which escapes Scheduler.deliver_job and stops the job loop."""
    with pytest.raises(DeliveryError):
        run(results, lambda r: httpx.Response(200, json=body))


def test_a_connection_error_is_a_failed_delivery_without_the_urls_credentials(results: list[Result]) -> None:
    url = "http://medseg:s3cr3t-pw@pacs.example:8042/dicom-web"

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"connection refused: {request.url}", request=request)

    with pytest.raises(DeliveryError) as caught:
        run(results, refuse, url=url)
    message = str(caught.value)
    assert "s3cr3t" not in message and "medseg:" not in message and "pacs.example" not in message
    assert "ConnectError" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


@pytest.mark.parametrize("error", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.WriteError])
def test_other_transport_errors_are_failed_deliveries(results: list[Result], error: type[httpx.HTTPError]) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error("boom", request=request)

    with pytest.raises(DeliveryError, match=error.__name__):
        run(results, fail)


def test_a_mistyped_pacs_url_is_a_failed_delivery(results: list[Result]) -> None:
    """Regression (fixed): httpx.InvalidURL is not an httpx.HTTPError, so a MEDSEG_PACS_URL with a bad port
    raises it out of deliver() (and out of the job loop) instead of DeliveryError."""
    with pytest.raises(DeliveryError):
        run(results, lambda r: store_response([x.sop_uid for x in results]), url="http://pacs.example:80a42/dicom-web")


def test_backoff_doubles_from_the_first_delay_and_caps_at_five_minutes() -> None:
    assert [backoff_s(n, 2.0) for n in range(1, 9)] == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
    assert backoff_s(9, 2.0) == MAX_BACKOFF_S == 300.0
    assert backoff_s(40, 2.0) == 300.0
    assert backoff_s(1, 500.0) == 300.0
    assert [backoff_s(n, 100.0) for n in (1, 2, 3)] == [100.0, 200.0, 300.0]

