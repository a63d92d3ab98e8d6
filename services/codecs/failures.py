"""What a codec may let through unchanged: only the exits of the process itself.

Native decoders report failures in their own ways; pyo3's ``PanicException`` (a Rust panic in
pylibjpeg-rle on corrupt RLE segments) derives from ``BaseException``, so ``except Exception``
misses it. Codecs catch ``BaseException`` and re-raise these alone.
"""

from __future__ import annotations

PROCESS_EXITS: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit, GeneratorExit)


def reraise_process_exit(error: BaseException) -> None:
    """Re-raise ``error`` when it asks the process (or a generator) to stop; return otherwise."""
    if isinstance(error, PROCESS_EXITS):
        raise error
