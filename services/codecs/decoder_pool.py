"""DecoderPool: uploads decoded in separate processes, each decode with a time budget of its own.

The decoders behind pydicom (pylibjpeg's Rust RLE, OpenJPEG, libjpeg, CharLS), Pillow, zlib and
nibabel run on bytes from the network. In the API process, a decoder that crashes takes every
request of the process with it, one that loops holds its request until the global timeout in a
thread nothing can stop, and what a decoder leaves in the heap stays there. Here every decode
runs in one of ``workers`` child processes:

- a decode that runs past ``budget_s`` is stopped with its process: 422 ``unprocessable_image``;
- each process has ``memory_bytes`` of address space (RLIMIT_AS): a corrupt JPEG 2000 codestream
  can declare an image of gigabytes, and OpenJPEG allocates it (one of the fuzz seeds grew past
  24 GB here and was killed by the kernel); under the limit the allocation fails at once and the
  codec answers its typed error;
- a process that dies while decoding (segfault, abort, out of memory): 400 ``bad_input``;
- a failure that is not an ``Exception`` (a Rust panic surfaces as ``BaseException``) and was not
  already typed by the codec: 400 ``bad_input``;
- each process is replaced after ``max_tasks`` decodes, so the heap it fragments is given back.

Processes come from a forkserver whose preloaded codecs make a replacement start in tens of
milliseconds; typed errors (``services.errors``) raised by a codec pass through unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import resource
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from pebble import ProcessExpired, ProcessPool

from services.errors import PROCESS_EXITS, BadInput, MedsegError, UnprocessableImage

log = logging.getLogger("medseg.decode")
T = TypeVar("T")

# Imported once in the forkserver, so that every decoder process starts with them loaded.
PRELOADED = ["numpy", "pydicom", "pydicom.pixels", "PIL.Image", "nibabel", "services.codecs", "services.usecases.segment_volume"]


class DecodeFailed(Exception):
    """A codec failure that is not typed, carried back from a decoder process by name only
    (exception messages of third-party decoders can quote the file's content)."""


def _prepare_process(memory_bytes: int) -> None:
    """Decoder-process initialiser: the address-space limit, and a Rust panic prints its one-line
    message, not a backtrace."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    os.environ["RUST_BACKTRACE"] = "0"


def _run_typed(function: Callable[..., T], args: tuple[Any, ...]) -> T:
    """In the decoder process: ``function(*args)`` with every failure made picklable and typed."""
    try:
        return function(*args)
    except MedsegError:
        raise
    except PROCESS_EXITS:
        raise
    except Exception as error:  # noqa: BLE001 - a codec bug: the caller answers 500
        raise DecodeFailed(type(error).__name__) from None
    except BaseException:  # noqa: BLE001 - e.g. pyo3's PanicException from a native decoder
        raise BadInput("the file could not be decoded; it may be corrupt") from None


class DecoderPool:
    """``await pool.run(decode, data)`` runs ``decode(data)`` in a decoder process.

    ``function`` and its arguments must be picklable (module-level functions, bytes, dataclasses).
    """

    def __init__(self, workers: int, budget_s: float, memory_bytes: int, max_tasks: int = 200) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOADED)
        self.budget_s = budget_s
        self._pool = ProcessPool(
            max_workers=workers, max_tasks=max_tasks, initializer=_prepare_process, initargs=(memory_bytes,), context=context
        )

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a decoder process; typed errors as described in the module."""
        future = self._pool.schedule(_run_typed, args=(function, args), timeout=self.budget_s)
        try:
            return await asyncio.wrap_future(future)
        except FutureTimeout:
            log.warning("a decode ran past its %g s budget; its process was stopped", self.budget_s)
            raise UnprocessableImage(
                f"the file could not be decoded within the {self.budget_s:g} s decoding budget"
            ) from None
        except ProcessExpired as error:
            log.warning("a decoder process died while decoding (exit code %s)", error.exitcode)
            raise BadInput("the file made the decoder fail; it may be corrupt") from None
        except asyncio.CancelledError:
            future.cancel()  # the request went away: stop its decode too
            raise

    def close(self) -> None:
        """Stop the decoder processes (running decodes are abandoned)."""
        self._pool.stop()
        self._pool.join(timeout=5)
