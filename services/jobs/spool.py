"""Durable files under ``MEDSEG_DATA_DIR``: received instances and produced results.

Layout: ``incoming/`` (parts being received; cleared at start: nothing there was acknowledged),
``instances/<study>/<series>/<sop>.dcm`` and ``results/<study>/<series>/<sop>.dcm``. A file is
fsynced, renamed into place and its folder fsynced before anyone is told it is stored.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

from services.errors import BadInput

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_uid(value: object, keyword: str) -> str:
    """A DICOM UID (digits and dots, at most 64 characters), safe as a file name; BadInput otherwise."""
    text = str(value or "").strip().rstrip("\x00")
    if not text or len(text) > 64 or not _UID.match(text):
        raise BadInput(f"{keyword} is missing or not a valid DICOM UID")
    return text


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / "incoming"
        shutil.rmtree(self.incoming, ignore_errors=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    def new_part(self) -> Path:
        """A fresh path in ``incoming/`` for a part being received."""
        return self.incoming / f"{uuid.uuid4().hex}.part"

    def _place(self, temp: Path, kind: str, study: str, series: str, sop: str) -> Path:
        folder = self.root / kind / study / series
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{sop}.dcm"
        os.replace(temp, target)
        fsync_directory(folder)
        if created:
            fsync_directory(folder.parent)
            fsync_directory(folder.parent.parent)
        return target

    def keep_instance(self, temp: Path, study: str, series: str, sop: str) -> Path:
        """Move an fsynced received part to its place; returns its path."""
        return self._place(temp, "instances", study, series, sop)

    def write_result(self, data: bytes, study: str, series: str, sop: str) -> Path:
        """Write a produced object durably; returns its path."""
        temp = self.new_part()
        with open(temp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        return self._place(temp, "results", study, series, sop)
