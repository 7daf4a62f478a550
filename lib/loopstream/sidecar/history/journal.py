"""The journals: ``runs/<run>.jsonl``, every accepted event of a run, and when they reach the disk.

A batch is appended with one ``write()`` per run before the POST is answered (the line is the JSON
already made for the stream), all or nothing. What survives a power cut is ``fsync``'s (``loop
serve --fsync``): "always" fsyncs before the 201, one fsync for every batch written meanwhile
(group commit); "everysec" from the writer thread about once a second; "never" leaves it to the OS.

Reading one back: a line that is not a sound event is skipped and counted; a torn last line (a
crash in the middle of a ``write()`` that was never acknowledged) is dropped silently; NUL bytes
or other damage at the end are set aside with a warning before the next append.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from loopstream.core import events as ev
from loopstream.core import state
from loopstream.core.events import Event
from loopstream.sidecar import stored
from loopstream.sidecar.history.files import quarantine
from loopstream.sidecar.history.threads import native_thread_tools, off_the_loop

OPEN_JOURNALS = 64    # journal files kept open at once
TAIL_SCAN = 1 << 20   # bytes read back from a journal's end to find its last whole line
LINE_START = b'{"id":"'  # how every journal line starts (ev.dumps of an event)
EPOCH_SCAN = 1 << 17  # bytes read back from a journal's end to find its last id (a line is < 64 KB)

log = logging.getLogger(__name__)


class Journals:
    """The journals of a history folder, appended on the hot path and fsynced as ``fsync`` says
    (config.FSYNC_MODES)."""

    def __init__(self, journal_dir: Path, fsync: str = "everysec"):
        self.dir = journal_dir
        self.fsync = fsync
        self._files: OrderedDict[str, Any] = OrderedDict()
        _, allocate_lock, _ = native_thread_tools()
        self._lock = allocate_lock()
        # fsync bookkeeping (under _lock): journals written since their last fsync, those being
        # fsynced now, evicted ones to close once fsynced; record() calls made and made durable.
        self._dirty: set[Any] = set()
        self._in_flight: set[Any] = set()
        self._closing: set[Any] = set()
        self._writes = 0
        self._synced = 0
        self._synced_at = 0.0
        self.sync_errors = 0
        self._unsynced: deque[tuple[int, int]] = deque(maxlen=64)   # (after, upto): tickets whose fsync failed
        self.fsyncs = 0                          # group fsyncs done (each covers every journal written before it)
        self._leader = False                     # a durable() caller is fsyncing for the group
        self._group = threading.Condition()      # gevent's under the worker: waiting parks a greenlet

    def path(self, run: str) -> Path:
        return self.dir / f"{run}.jsonl"

    # -- the hot path: one write() per request and run -------------------------
    def record(self, events: Iterable[Event]) -> int:
        """Append a batch to its runs' journals, all or nothing: on a failed or short write (a full
        disk) every journal it touched is cut back to where it was and OSError propagates, so a
        batch that gets no 201 leaves no line behind (and its ids are free to be given again).
        Returns a ticket for ``durable()``."""
        by_run: dict[str, list[str]] = {}
        for e in events:
            by_run.setdefault(e.run, []).append(e.json)
        touched: list[tuple[Any, int]] = []
        try:
            for run, lines in by_run.items():
                f = self._journal(run)
                touched.append((f, os.fstat(f.fileno()).st_size))
                data = ("\n".join(lines) + "\n").encode()
                if f.write(data) != len(data):
                    raise OSError(f"short write to the journal of {run}")
        except OSError:
            for f, size in touched:
                try:
                    f.truncate(size)
                except OSError:
                    log.exception("loop: could not cut a journal back after a failed write")
            raise
        if self.fsync == "never":
            return 0
        with self._lock:
            self._dirty.update(f for f, _ in touched)
            self._writes += 1
            return self._writes

    def durable(self, ticket: int) -> None:
        """With fsync "always": return once the batch of ``ticket`` is on disk. Group commit: one
        caller fsyncs every journal written so far (off the event loop) while the others wait, and
        the batches written meanwhile go to disk together in the next fsync. OSError when that
        fsync failed."""
        if self.fsync != "always" or not ticket:
            return
        with self._group:
            while self._synced < ticket:
                if not self._leader:
                    self._leader = True
                    break
                self._group.wait()
            else:
                self._check_synced(ticket)
                return
        try:
            off_the_loop(self.sync)
        finally:
            with self._group:
                self._leader = False
                self._group.notify_all()
        self._check_synced(ticket)

    def _check_synced(self, ticket: int) -> None:
        """OSError when the fsync that covered ``ticket`` failed: its batch may not be on disk (and
        fsyncing again proves nothing: Linux may have dropped the pages it could not write)."""
        with self._lock:
            failed = any(after < ticket <= upto for after, upto in self._unsynced)
        if failed:
            raise OSError("the fsync of its journal failed: the events may not be on disk")

    def sync_due(self) -> bool:
        """With fsync "everysec": has a second passed since the last fsync?"""
        return self.fsync == "everysec" and time.monotonic() - self._synced_at >= 1.0

    def sync(self) -> None:
        """fsync every journal written since its last fsync; close the evicted ones after theirs.
        A failed fsync is logged, counted and remembered for ``durable`` (the data may not be on
        disk), never raised here."""
        with self._lock:
            files, self._dirty = self._dirty, set()
            self._in_flight |= files
            after, upto = self._synced, self._writes
        if files:
            self.fsyncs += 1
        failed = False
        for f in files:
            try:
                os.fsync(f.fileno())
            except (OSError, ValueError) as e:
                failed = True
                self.sync_errors += 1
                log.error("loop: history: fsync of %s failed (%s): acknowledged events may not be on disk",
                          getattr(f, "name", "a journal"), e)
        with self._lock:
            self._in_flight -= files
            for f in files & self._closing:
                self._closing.discard(f)
                f.close()
            if failed:
                self._unsynced.append((after, upto))
            self._synced = max(self._synced, upto)
            self._synced_at = time.monotonic()

    def _journal(self, run: str):
        f = self._files.get(run)
        if f is not None:
            self._files.move_to_end(run)
            return f
        if len(self._files) >= OPEN_JOURNALS:
            _, old = self._files.popitem(last=False)
            with self._lock:
                unsynced = old in self._dirty or old in self._in_flight
                if unsynced:
                    self._closing.add(old)       # closed once fsynced
            if not unsynced:
                old.close()
        path = self.path(run)
        _drop_torn_tail(path)
        f = self._files[run] = open(path, "ab", buffering=0)
        return f

    def close(self) -> None:
        """fsync what is not yet (unless "never") and close every journal."""
        if self.fsync != "never":
            self.sync()
        for f in self._files.values():
            f.close()
        self._files.clear()

    def last_epoch(self) -> int:
        """The highest sound epoch among the last ids of every journal (read from their tails)."""
        best = 0
        for path in self.dir.glob("*.jsonl"):
            try:
                with open(path, "rb") as f:
                    f.seek(max(0, f.seek(0, os.SEEK_END) - EPOCH_SCAN))
                    tail = f.read()
            except OSError:
                continue
            for line in reversed(tail.split(b"\n")):
                e = ev.parse_stored(line) if line.strip() else None
                key = stored.sound_id(e["id"]) if e else None
                if key is not None:
                    best = max(best, key[0])
                    break
        return best


# -- reading a journal back ------------------------------------------------------------------------
def torn(tail: bytes) -> bool:
    """Could ``tail`` (a last line without its newline) be a write a crash cut short? It then starts
    like every line we write. NUL bytes (a file extended but never written: a power cut) or any
    other start are damage, not a torn write."""
    return (tail.startswith(LINE_START) or LINE_START.startswith(tail)) and b"\0" not in tail


def read_journal(path: Path, before: tuple[int, int] | None = None) -> tuple[list[dict], int]:
    """Every sound event of a journal (only those before the id ``before``, when given: the read stops
    there), and how many lines were not one. A torn last line (no newline: a crash mid-write, never
    acknowledged) is left out without being counted."""
    out, skipped = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                skipped += not torn(line)
                break
            e = ev.parse_stored(line)
            if e is None:
                skipped += 1
            elif before is not None and (ev.parse_id(e.get("id")) or (0, 0)) >= before:
                break
            else:
                out.append(e)
    return out, skipped


def fold(events: Iterable[dict], snap: dict | None = None, where: str = "") -> dict | None:
    """Fold events into a snapshot; one the reducer cannot fold is logged and skipped."""
    for e in events:
        try:
            snap = state.apply(snap, e)
        except Exception as exc:  # a reducer bug must not stop a start-up or a follower
            log.warning("loop: history: %s: event %s could not be folded (%s: %s); skipped",
                        where, e.get("id"), type(exc).__name__, exc)
    return snap


def _drop_torn_tail(path: Path) -> None:
    """Cut a journal back to its last whole line before appending: a line torn by a crash (never
    acknowledged) would otherwise swallow the next event written after it. A tail that is not a
    torn write (NUL bytes, anything else) is damage: it is kept aside, with a warning, before the cut;
    a journal that is nothing but such bytes is quarantined whole."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            start = max(0, size - TAIL_SCAN)
            f.seek(start)
            chunk = f.read()
            cut = chunk.rfind(b"\n")
            if torn(chunk[cut + 1:]):
                f.truncate(start + cut + 1 if cut >= 0 else start)
                return
            if cut < 0 and start == 0:
                f.close()
                quarantine(path, "holds no line (NUL bytes or other damage, not a torn write)")
                return
            aside = path.with_name(f"{path.name}.damaged-tail-{int(time.time())}")
            aside.write_bytes(chunk[cut + 1:])
            f.truncate(start + cut + 1 if cut >= 0 else start)
            log.warning("loop: history: %s ended in %d bytes that are not a torn write (NUL bytes?); moved them to %s",
                        path, size - (start + cut + 1), aside.name)
    except FileNotFoundError:
        pass
