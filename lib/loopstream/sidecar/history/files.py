"""History's files on disk: each replaced atomically, and a damaged one moved aside, never trusted.

A file is written to a temporary name, fsynced and renamed over the old one, so a reader (or a
start after a crash) sees the old file or the new one, never half of one. A file that is not what
we wrote is renamed to ``<name>.damaged-<time>`` (kept for a human to look at) with a one-line
warning naming it.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from tinydb.storages import Storage

from loopstream.sidecar import stored

log = logging.getLogger(__name__)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: a temporary file, fsynced, renamed over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class AtomicJSONStorage(Storage):
    """TinyDB storage that replaces the file atomically on every write."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self):
        try:
            with open(self.path, "rb") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        return stored.load(text) if text.strip() else None

    def write(self, data) -> None:
        write_atomic(self.path, json.dumps(data, allow_nan=False))


def quarantine(path: Path, why: str) -> None:
    """Rename a damaged file aside (kept for a human to look at) and say so in one line."""
    aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    try:
        os.replace(path, aside)
        log.warning("loop: history: %s %s; moved it to %s, serving the rest", path, why, aside.name)
    except OSError as e:
        log.warning("loop: history: %s %s; skipped it (cannot move it aside: %s)", path, why, e)
