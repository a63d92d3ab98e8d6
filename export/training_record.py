"""Shared parts of the demo-weight training records (``export/weights/<model>_small_demo.json``)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch


def environment(threads: int) -> dict[str, Any]:
    """Threads and library versions a record is reproduced with."""
    return {
        "threads": threads,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def write_record(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``record`` as indented JSON (trailing newline); return it."""
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record
