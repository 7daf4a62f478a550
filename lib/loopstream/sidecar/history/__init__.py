"""Run history: a journal per run, a TinyDB file per finished run, and a TinyDB index.

Three layers, so that a 201 means "recorded" without putting a database on the
hot path, and so that history costs the same with 5 or 500 finished runs:

- ``runs/<run>.jsonl`` — every accepted event of a run, appended with one
  ``write()`` before the POST is answered. The OS keeps it if the server is
  killed; it is the run's transcript. What survives a power cut is
  ``fsync``'s (``loop serve --fsync``): journal.py.
- ``finished/<run>.json`` — one small TinyDB file per finished run (its final
  snapshot), and ``history.json``, the TinyDB index (the last epoch, one
  run-list summary per finished run), written by a background thread:
  finished.py.

Every file is replaced atomically, and damaged files are never trusted and never
stop a start (files.py; every file is read through stored.py: strict, bounded
JSON of the shape we write): a journal line that is not a sound event is
skipped, counted and logged, and the run's transcript says ``complete: false``;
a journal with no readable line, an index or run file that is not what we
wrote, is renamed aside (``<name>.damaged-<time>``) with a one-line warning
naming it, and the rest is served: runs the index lost come back from their own
files and journals, and the epoch stays above every id they hold.

At start-up, a journal whose run has no finished record is folded back into a
snapshot: the run was live when the server died and is marked ``interrupted``
until its runner comes back.

``History`` is what the hub holds: it opens the folder, recovers, runs the writer
thread (threads.py: a real thread, even under gevent) and answers reads from
whichever layer has the run.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from loopstream.core import events as ev
from loopstream.core import state
from loopstream.core.events import Event
from loopstream.sidecar import stored
from loopstream.sidecar.history.files import AtomicJSONStorage, quarantine
from loopstream.sidecar.history.finished import KEEP_RUNS, FinishedRuns
from loopstream.sidecar.history.journal import Journals, fold, read_journal
from loopstream.sidecar.history.threads import native_thread_tools, off_the_loop

__all__ = ["KEEP_RUNS", "AtomicJSONStorage", "History", "fold", "read_journal"]

log = logging.getLogger(__name__)


def _epoch_of(summary: dict) -> int:
    key = stored.sound_id(summary.get("last_event_id"))
    return key[0] if key else 0


class History:
    def __init__(self, path: str | Path, keep: int = KEEP_RUNS, fsync: str = "everysec"):
        """``fsync`` (config.FSYNC_MODES): "always" — ``durable()`` waits for the journal on disk;
        "everysec" — the writer thread fsyncs what was written about once a second; "never" — the OS."""
        self.path = Path(path)
        self.journal_dir = self.path.parent / "runs"
        self.journals = Journals(self.journal_dir, fsync)
        self.finished_runs = FinishedRuns(self.path, self.journal_dir, keep)
        self._warned: set[str] = set()
        self._stop = False
        self._done: Any = None                   # a native lock, held until the writer thread ends

    # what the hub reads and the tests set
    @property
    def index(self) -> dict[str, dict]:
        """run -> summary of every finished run, oldest finished first."""
        return self.finished_runs.index

    @property
    def keep(self) -> int:
        return self.finished_runs.keep

    @keep.setter
    def keep(self, value: int) -> None:
        self.finished_runs.keep = value

    @property
    def write_errors(self) -> int:
        return self.finished_runs.write_errors

    @property
    def sync_errors(self) -> int:
        return self.journals.sync_errors

    @property
    def fsyncs(self) -> int:
        return self.journals.fsyncs

    # -- start-up ------------------------------------------------------------
    def open(self) -> tuple[int, list[dict]]:
        """Load the index, recover interrupted runs; return (epoch floor, snapshots to restore)."""
        for d in (self.journal_dir, self.finished_runs.run_dir):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OSError(f"cannot create the history folder {d}: {e}") from e
        epoch = self.finished_runs.open()
        restored = self._recover_journals()
        floor = max([epoch or 0, *(_epoch_of(s) for s in [*self.index.values(), *restored])])
        if epoch is None:   # no sound epoch stored: stay above every id any journal holds
            floor = max(floor, self.journals.last_epoch())
        return floor, restored

    def _recover_journals(self) -> list[dict]:
        restored = []
        for name in sorted(os.listdir(self.journal_dir)):
            if not name.endswith(".jsonl"):
                continue
            run, path = name[: -len(".jsonl")], self.journal_dir / name
            if not path.is_file() or not ev.RUN_RE.match(run):
                log.warning("loop: history: %s is not a run's journal (not a file, or not a run name); skipped", path)
                continue
            if run in self.index and self.index[run].get("status") in state.FINISHED:
                continue
            snap = self._fold_journal(run, path)
            if snap is None:
                continue
            if state.is_live(snap):
                snap["status"] = "interrupted"
                snap["eta_s"] = None
            restored.append(snap)
        return restored

    def _fold_journal(self, run: str, path: Path) -> dict | None:
        try:
            events, skipped = read_journal(path)
        except OSError as e:
            log.warning("loop: history: %s cannot be read (%s); skipped", path, e)
            return None
        if not events:
            if skipped:
                quarantine(path, f"holds no readable event ({skipped} damaged lines)")
            return None
        if skipped:
            self._warn_damaged(run, path, skipped)
        return fold(events, where=str(path))

    def _warn_damaged(self, run: str, path: Path, skipped: int) -> None:
        if run not in self._warned:
            self._warned.add(run)
            log.warning("loop: history: %s: %d damaged lines skipped; its transcript is marked incomplete",
                        path, skipped)

    def save_epoch(self, epoch: int) -> None:
        self.finished_runs.save_epoch(epoch)

    # -- the hot path (journal.py) --------------------------------------------------
    def record(self, events: Iterable[Event]) -> int:
        """Append a batch to its runs' journals, all or nothing; a ticket for ``durable()``."""
        return self.journals.record(events)

    def durable(self, ticket: int) -> None:
        """With fsync "always": return once the batch of ``ticket`` is on disk (OSError if it may not be)."""
        self.journals.durable(ticket)

    def sync_journals(self) -> None:
        self.journals.sync()

    # -- finished runs (finished.py), written by the writer thread ---------------------
    def finished(self, snap: dict, is_live: Callable[[str], bool] = lambda run: False) -> None:
        """A run finished: listed and readable at once, its file written by the writer thread. Past
        ``keep``, the oldest finished runs are pruned, but not one that ``is_live`` again (a resumed
        Claude Code session): its journal is still appended to."""
        self.finished_runs.finished(snap, is_live)

    def flush(self) -> None:
        self.finished_runs.flush(final=self._stop)

    def start_writer(self, interval: float = 0.5) -> None:
        start_thread, allocate_lock, sleep = native_thread_tools()
        self._done = allocate_lock()
        self._done.acquire()

        def loop():
            try:
                while not self._stop:
                    self.finished_runs.flush_logged(final=self._stop)
                    if self.journals.sync_due():
                        self.journals.sync()
                    sleep(min(interval, 0.5))
                self.finished_runs.flush_logged(final=True)
                self.finished_runs.write_index(force=True)
            finally:
                self._done.release()

        start_thread(loop, ())

    def close(self, timeout: float = 2.0) -> None:
        self._stop = True
        if self._done is not None:
            self._done.acquire(True, timeout)
        elif self.finished_runs.opened:
            self.finished_runs.flush(final=True)
        self.journals.close()

    # -- reading ------------------------------------------------------------------
    def transcript(self, run: str) -> tuple[list[dict], bool]:
        """A run's recorded events and whether they are all there (no damaged line skipped)."""
        path = self.journals.path(run)
        if not path.is_file():
            return [], True
        try:
            events, skipped = read_journal(path)
        except OSError:
            return [], False
        if skipped:
            self._warn_damaged(run, path, skipped)
        return events, skipped == 0

    def transcript_before(self, run: str, before: tuple[int, int] | None) -> list[dict]:
        """A run's recorded events before the id ``before`` (None: all), read in gevent's thread pool
        (off_the_loop) so that a long journal does not stop the worker's other greenlets; the read stops
        at ``before``. OSError when the journal cannot be read."""
        path = self.journals.path(run)
        if not path.is_file():
            return []
        return off_the_loop(read_journal, path, before)[0]

    def snapshot(self, run: str) -> dict | None:
        """A finished run's final snapshot: one small file read, or the record not yet written."""
        if run not in self.index:
            return None
        snap = self.finished_runs.snapshot(run)
        if snap is not None:
            return snap
        events, _ = self.transcript(run)   # the file is gone or damaged: the journal stands in
        return fold(events, where=f"{self.journal_dir / run}.jsonl")
