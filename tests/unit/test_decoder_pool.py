"""Decoding corrupt and hostile uploads: native panics typed in-process, and the DecoderPool's
budget, crash isolation and process recycling."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from load.burst import corrupt
from services.codecs import decode
from services.codecs.decoder_pool import DecodeFailed, DecoderPool
from services.errors import BadInput, MedsegError, UnprocessableImage, UnsupportedMediaType

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
RLE_FILE = TEST_FILES / "MR_small_RLE.dcm"


class NativePanic(BaseException):
    """Stands for pyo3's PanicException: a BaseException that is not an Exception."""


def raise_native_panic() -> None:
    raise NativePanic("index out of bounds")


def raise_value_error() -> None:
    raise ValueError("a codec bug")


def pid_of_decoder() -> int:
    return os.getpid()


def allocate_megabytes(count: int) -> int:
    return len(bytearray(count << 20))


def test_rust_panics_of_the_rle_decoder_become_bad_input() -> None:
    """pylibjpeg-rle panics (pyo3 PanicException, a BaseException) on some corrupt segments: 19 of
    these 100 seeds did before the codecs caught BaseException. Every one is now a typed error."""
    source = RLE_FILE.read_bytes()
    outcomes: Counter[str] = Counter()
    for seed in range(100):
        try:
            decode(corrupt(source, seed))
            outcomes["decoded"] += 1
        except MedsegError as error:
            outcomes[error.code] += 1
    assert outcomes["bad_input"] >= 80, outcomes
    assert sum(outcomes.values()) == 100


@pytest.fixture(scope="module")
def pool() -> Iterator[DecoderPool]:
    decoders = DecoderPool(workers=2, budget_s=3.0, memory_bytes=2 << 30, max_tasks=5)
    yield decoders
    decoders.close()


def run(coroutine):  # noqa: ANN001, ANN201 - a tiny asyncio.run alias
    return asyncio.run(coroutine)


def test_pool_decodes_in_another_process(pool: DecoderPool) -> None:
    image = run(pool.run(decode, (TEST_FILES / "CT_small.dcm").read_bytes()))
    assert image.pixels.shape == (1, 128, 128)
    assert run(pool.run(pid_of_decoder)) != os.getpid()


def test_typed_errors_pass_through(pool: DecoderPool) -> None:
    with pytest.raises(UnsupportedMediaType):
        run(pool.run(decode, b"not an image at all, just text"))


def test_a_decode_past_its_budget_is_stopped_with_a_422(pool: DecoderPool) -> None:
    began = time.monotonic()
    with pytest.raises(UnprocessableImage, match="decoding budget"):
        run(pool.run(time.sleep, 60))
    assert time.monotonic() - began < 10
    # the pool replaced the stopped process and goes on decoding
    assert run(pool.run(decode, RLE_FILE.read_bytes())).pixels.shape == (1, 64, 64)


def test_a_decoder_that_kills_its_process_is_a_400(pool: DecoderPool) -> None:
    with pytest.raises(BadInput, match="decoder fail"):
        run(pool.run(os.abort))
    assert run(pool.run(decode, RLE_FILE.read_bytes())).pixels.shape == (1, 64, 64)


def test_a_base_exception_from_a_decoder_is_a_400(pool: DecoderPool) -> None:
    with pytest.raises(BadInput):
        run(pool.run(raise_native_panic))


def test_an_untyped_codec_failure_is_not_disguised_as_bad_input(pool: DecoderPool) -> None:
    """A plain Exception escaping a codec is a bug of ours: it surfaces as such (the route's 500)."""
    with pytest.raises(DecodeFailed, match="ValueError"):
        run(pool.run(raise_value_error))


def test_a_decoder_process_cannot_take_more_than_its_memory(pool: DecoderPool) -> None:
    """A corrupt JPEG 2000 codestream can declare gigabytes; the allocation fails in the decoder
    process (2 GiB here) instead of growing it until the kernel kills something."""
    with pytest.raises(DecodeFailed, match="MemoryError"):
        run(pool.run(allocate_megabytes, 3 << 10))
    assert run(pool.run(allocate_megabytes, 256)) == 256 << 20


def test_a_corrupt_jpeg2000_declaring_a_huge_image_is_refused_quickly(pool: DecoderPool) -> None:
    """Fuzz seed 11 of 693_J2KI.dcm: unbounded, OpenJPEG grew past 24 GB on it and was killed."""
    began = time.monotonic()
    with pytest.raises(BadInput):
        run(pool.run(decode, corrupt((TEST_FILES / "693_J2KI.dcm").read_bytes(), 11)))
    assert time.monotonic() - began < 5


def test_decoder_processes_are_recycled(pool: DecoderPool) -> None:
    """max_tasks=5: after 5 decodes each process is replaced, so its heap is given back."""
    pids = {run(pool.run(pid_of_decoder)) for _ in range(30)}
    assert len(pids) >= 4
