"""File checksums recorded in medseg.json and the demo-weight records."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_graph(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of an ONNX graph file followed by its external-data file
    (``<name>.data`` beside it) when it has one, so the digest covers the weights either way."""
    digest = hashlib.sha256()
    for part in (path, path.with_name(path.name + ".data")):
        if part == path or part.exists():
            with part.open("rb") as handle:
                while chunk := handle.read(chunk_bytes):
                    digest.update(chunk)
    return digest.hexdigest()
