"""Which Triton servers take calls: round robin over the healthy ones (pure logic, no I/O).

A server that fails a call or a health probe is taken out; a probe that finds it ready (every
model loaded) puts it back. With every server out, ``choose`` returns None and the caller answers
503; ``order`` lists the servers to try for one call (healthy first, each once).
"""

from __future__ import annotations

import itertools
import threading


class ServerPool:
    """Health state of a fixed list of server addresses (thread-safe)."""

    def __init__(self, urls: list[str]) -> None:
        if not urls:
            raise ValueError("at least one Triton server address is needed")
        self.urls = list(dict.fromkeys(urls))
        self._healthy: set[str] = set()
        self._turn = itertools.count()
        self._lock = threading.Lock()

    def mark_up(self, url: str) -> None:
        with self._lock:
            self._healthy.add(url)

    def mark_down(self, url: str) -> None:
        with self._lock:
            self._healthy.discard(url)

    def healthy(self) -> list[str]:
        with self._lock:
            return [u for u in self.urls if u in self._healthy]

    def order(self) -> list[str]:
        """Healthy servers rotated round robin, then the others (a last resort: they may be back)."""
        with self._lock:
            healthy = [u for u in self.urls if u in self._healthy]
            rest = [u for u in self.urls if u not in self._healthy]
            if healthy:
                shift = next(self._turn) % len(healthy)
                healthy = healthy[shift:] + healthy[:shift]
            return healthy + rest
