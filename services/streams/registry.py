"""How many streams are open, bounded by ``MEDSEG_MAX_STREAMS``; what /metrics reports of them."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StreamsFull(Exception):
    """``max_streams`` streams are open: the new one is closed with 1013 (try again later)."""


class StreamRegistry:
    """Open streams by id. ``observe(count)`` is told the count after every change."""

    def __init__(self, max_streams: int, observe: Callable[[int], None] | None = None) -> None:
        self.max_streams = max_streams
        self.observe = observe
        self.open: set[str] = set()

    @contextmanager
    def stream(self) -> Iterator[str]:
        """A new stream's id for the block; StreamsFull when none is free. The slot (and with
        it the stream's state, held by the caller) is released when the block exits."""
        if len(self.open) >= self.max_streams:
            raise StreamsFull(f"{self.max_streams} streams are open, the most this service takes; retry later")
        stream_id = uuid.uuid4().hex[:16]
        self.open.add(stream_id)
        self._report()
        try:
            yield stream_id
        finally:
            self.open.discard(stream_id)
            self._report()

    def _report(self) -> None:
        if self.observe is not None:
            self.observe(len(self.open))
