"""The finished runs: a TinyDB file per run and the index, written by the writer thread.

- ``finished/<run>.json`` — one small TinyDB file per finished run (its final
  snapshot), written once by a background thread: a finished-run request
  reads that file and nothing else.
- ``history.json`` — the TinyDB index: a ``meta`` table (the last epoch) and
  an ``index`` table (one run-list summary, ~1 KB, per finished run). The
  writer keeps it open through TinyDB's ``CachingMiddleware`` and writes it
  once per flush, with the new runs' files; never a snapshot in it.

A finished run is readable the moment it finishes: until its file is written,
requests read the record the writer is about to write. ``index`` (run ->
summary) is changed only by the serving thread (``finished``, pruning); the
writer thread only writes files.

Read back, an index or run file that is not what we wrote (another shape, NaN,
deep nesting, an epoch past stored.MAX_EPOCH) is moved aside (files.quarantine)
and the rest is served: runs the index lost come back from their own files.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

from tinydb import TinyDB
from tinydb.middlewares import CachingMiddleware
from tinydb.table import Document

from loopstream.core import events as ev
from loopstream.core import state
from loopstream.sidecar import stored
from loopstream.sidecar.history.files import AtomicJSONStorage, quarantine, write_atomic
from loopstream.sidecar.history.threads import native_thread_tools

KEEP_RUNS = 500       # finished runs kept in history (older ones are pruned)
INDEX_EVERY = 5.0     # seconds between two writes of the index (run files are written at once)

log = logging.getLogger(__name__)


def _finished_at(summary: dict) -> float:
    t = summary.get("finished_at")
    return t if isinstance(t, (int, float)) and not isinstance(t, bool) else 0


def _sound_record(rec: Any) -> bool:
    """An index row or a run file's record: a run name and a summary of that run."""
    return (isinstance(rec, dict) and isinstance(rec.get("run"), str) and ev.RUN_RE.match(rec["run"]) is not None
            and stored.sound_summary(rec.get("summary"), rec["run"]))


def _table(value: Any, problems: list[str], name: str) -> dict[str, Any]:
    """A TinyDB table as we write it ({"<doc id>": document}); what is not one counts as a problem."""
    if not isinstance(value, dict):
        problems.append(f"its {name} table is not an object")
        return {}
    table = {k: v for k, v in value.items() if re.fullmatch(r"[0-9]{1,9}", k)}   # not "²": int() refuses it
    if len(table) < len(value):
        problems.append(f"its {name} table has {len(value) - len(table)} rows that are not numbered")
    return table


class FinishedRuns:
    """The finished runs of a history folder: listed in ``index`` the moment they finish, their
    files written by ``flush`` (the writer thread). ``journals`` is where a pruned run's journal is."""

    def __init__(self, path: Path, journals: Path, keep: int = KEEP_RUNS):
        self.path = path
        self.run_dir = path.parent / "finished"
        self.journal_dir = journals
        self.keep = keep
        self._pending: deque[tuple[str, str, str | None, str | None]] = deque()  # (kind, run, record, summary)
        self.index: dict[str, dict] = {}         # run -> summary, oldest finished first (serving thread only)
        self._doc_ids: dict[str, int] = {}       # run -> its row in the index table (writer thread only)
        self._unwritten: dict[str, str] = {}     # run -> record JSON whose file the writer has yet to write
        self.write_errors = 0
        self._db: Any = None                     # TinyDB over CachingMiddleware (whose flush() types do not show)
        self._index_written = 0.0
        _, allocate_lock, _ = native_thread_tools()
        self._lock = allocate_lock()

    @property
    def opened(self) -> bool:
        return self._db is not None

    # -- start-up: the index read back --------------------------------------------------
    def open(self) -> int | None:
        """Load the index (and adopt run files it lost); return the stored epoch (None: none sound)."""
        epoch, records = self._load_index()
        self._db = TinyDB(self.path, storage=CachingMiddleware(AtomicJSONStorage))
        self._db.storage.WRITE_CACHE_SIZE = 1 << 30    # written once per flush, by flush()
        for rec in sorted(records, key=lambda r: _finished_at(r["summary"])):
            if self._run_file(rec["run"]).exists():   # else pruned after the index was last written
                self.index[rec["run"]] = rec["summary"]
        self._doc_ids = {doc["run"]: doc.doc_id for doc in self._db.table("index").all()}
        self._next_doc = max(self._doc_ids.values(), default=0) + 1
        self._adopt_run_files()
        return epoch

    def _load_index(self) -> tuple[int | None, list[dict]]:
        """The epoch (None: none sound) and the sound index rows of history.json. A file that is
        not exactly what we write is moved aside and replaced by what could be read of it."""
        try:
            raw = AtomicJSONStorage(self.path).read()
        except (ValueError, OSError) as e:
            quarantine(self.path, f"is not a readable history file ({type(e).__name__}: {e})")
            return None, []
        if raw is None:   # no file yet, or an empty one
            return None, []
        if not isinstance(raw, dict):
            quarantine(self.path, f"is JSON but not a history file (a {type(raw).__name__})")
            return None, []
        problems: list[str] = [f"has an unknown table {k!r}" for k in raw if k not in ("meta", "index", "runs")]
        epoch = self._read_meta(raw.get("meta", {}), problems)
        rows = self._read_rows(raw.get("index", {}), problems)
        rows += self._migrate(_table(raw.get("runs", {}), problems, "runs").values())
        if problems or "runs" in raw:
            if problems:
                quarantine(self.path, "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)"
                                                                 if len(problems) > 3 else ""))
            AtomicJSONStorage(self.path).write({
                "meta": {"1": {"epoch": epoch}} if epoch is not None else {},
                "index": {str(i): {"run": r["run"], "summary": r["summary"]} for i, r in enumerate(rows, 1)}})
        return epoch, rows

    @staticmethod
    def _read_meta(meta: Any, problems: list[str]) -> int | None:
        table = _table(meta, problems, "meta")
        if not table:
            return None
        doc = table.get("1")
        epoch = stored.sound_epoch(doc.get("epoch")) if isinstance(doc, dict) else None
        if epoch is None or len(table) > 1:
            problems.append(f"its epoch {str(doc)[:40]} is not a sound epoch; a new one is chosen above every "
                            "id in the journals")
        return epoch

    @staticmethod
    def _read_rows(index: Any, problems: list[str]) -> list[dict]:
        rows = list(_table(index, problems, "index").values())
        sound = [r for r in rows if _sound_record(r)]
        if len(sound) < len(rows):
            problems.append(f"{len(rows) - len(sound)} damaged index rows")
        return sound

    def _migrate(self, old: Iterable[Any]) -> list[dict]:
        """Rows of the one-file layout (snapshots inside history.json): each snapshot to its own file."""
        rows = []
        for rec in old:
            if not (_sound_record(rec) and isinstance(rec.get("snapshot"), dict)):
                continue
            try:
                text = ev.dumps(rec)
            except ValueError:   # NaN or Infinity, written before the input checks
                log.warning("loop: history: %s: run %s holds a number that is not finite; its journal stands in",
                            self.path, rec["run"])
                continue
            write_atomic(self._run_file(rec["run"]), self._run_file_text(text))
            rows.append(rec)
        return rows

    def _adopt_run_files(self) -> None:
        """Finished-run files the index does not list (it was lost or damaged) go back into it."""
        for path in sorted(self.run_dir.glob("*.json")):
            run = path.name[: -len(".json")]
            if run in self.index or not ev.RUN_RE.match(run):
                continue
            rec = self._read_run_file(run)
            if rec is not None:
                self.index[run] = rec["summary"]
                self._pending.append(("finished", run, None, ev.dumps(rec["summary"])))   # the row, not the file

    def save_epoch(self, epoch: int) -> None:
        self._db.table("meta").upsert(Document({"epoch": epoch}, doc_id=1))
        self._db.storage.flush()

    # -- finished runs, written in the background -------------------------------
    def finished(self, snap: dict, is_live: Callable[[str], bool] = lambda run: False) -> None:
        """A run finished: listed and readable at once, its file written by the writer thread. Past
        ``keep``, the oldest finished runs are pruned, but not one that ``is_live`` again (a resumed
        Claude Code session): its journal is still appended to."""
        run = snap["run"]
        summary = state.summarize(snap)
        summary_json = ev.dumps(summary)     # the writer gets text: the live snapshot may change meanwhile
        record = ev.dumps({"run": run, "summary": summary, "snapshot": snap})
        with self._lock:
            self._unwritten[run] = record
        self.index.pop(run, None)
        self.index[run] = json.loads(summary_json)
        self._pending.append(("finished", run, record, summary_json))
        while len(self.index) > self.keep:
            oldest = next((r for r in self.index if not is_live(r)), None)   # finished first
            if oldest is None:
                break
            del self.index[oldest]
            with self._lock:
                self._unwritten.pop(oldest, None)
            self._pending.append(("pruned", oldest, None, None))

    def flush_logged(self, final: bool = False) -> None:
        """flush(), for the writer thread: a bug is logged and counted, and the thread goes on."""
        try:
            self.flush(final)
        except Exception as e:
            self.write_errors += 1
            log.warning("loop: history: the writer failed (%s: %s); finished runs stay readable from memory",
                        type(e).__name__, e)

    def flush(self, final: bool = False) -> None:
        """Write what changed since the last flush: each newly finished run's own file and pruned
        runs' files removed at once; the index (one file of summaries) at most every INDEX_EVERY s,
        or now when ``final`` (the history is closing)."""
        if self._pending:
            self._write_batch()
        try:
            self.write_index(force=final)
        except OSError as e:
            self.write_errors += 1
            log.warning("loop: history: writing %s failed (%s); will retry", self.path, e)

    def _write_batch(self) -> None:
        batch = []
        while self._pending:
            batch.append(self._pending.popleft())
        try:
            table = self._db.table("index")
            for kind, run, record, summary in batch:
                if kind == "finished":
                    self._write_finished(table, run, record, cast(str, summary))
                else:
                    self._remove(table, run)
        except OSError as e:
            self.write_errors += 1
            log.warning("loop: history: writing under %s failed (%s); will retry", self.run_dir, e)
            self._pending.extendleft(reversed(batch))
            return
        with self._lock:
            for _kind, run, record, _ in batch:
                if record is not None and self._unwritten.get(run) is record:
                    del self._unwritten[run]

    def write_index(self, force: bool = False) -> None:
        """The index file, at most every INDEX_EVERY seconds (CachingMiddleware holds the changes
        meanwhile): serialising every summary is the one cost of a flush that grows with history,
        and the index may lag — a run file it does not list is adopted at the next start."""
        now = time.monotonic()
        if force or now - self._index_written >= INDEX_EVERY:
            self._db.storage.flush()
            self._index_written = now

    def _write_finished(self, table, run: str, record: str | None, summary: str) -> None:
        """The run's own file, then its index row (by doc id: no scan of the table)."""
        if record is not None:
            write_atomic(self._run_file(run), self._run_file_text(record))
        doc_id = self._doc_ids.get(run)
        if doc_id is None:
            doc_id = self._doc_ids[run] = self._next_doc
            self._next_doc += 1
        table.upsert(Document({"run": run, "summary": json.loads(summary)}, doc_id=doc_id))

    def _remove(self, table, run: str) -> None:
        doc_id = self._doc_ids.pop(run, None)
        if doc_id is not None:
            table.remove(doc_ids=[doc_id])
        for path in (self._run_file(run), self.journal_dir / f"{run}.jsonl"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # -- one finished run's file ------------------------------------------------------
    def _run_file(self, run: str) -> Path:
        return self.run_dir / f"{run}.json"

    @staticmethod
    def _run_file_text(record: str) -> str:
        return '{"run": {"1": ' + record + "}}"     # what TinyDB writes for a table "run" of one document

    def _read_run_file(self, run: str) -> dict | None:
        """The record in ``finished/<run>.json``; a damaged file is moved aside (the run's journal
        then stands in for it)."""
        path = self._run_file(run)
        try:
            with open(path, "rb") as f:
                raw = stored.load(f.read())
        except FileNotFoundError:
            return None
        except (ValueError, OSError) as e:
            quarantine(path, f"is not a readable run file ({type(e).__name__}: {e})")
            return None
        table = raw.get("run") if isinstance(raw, dict) else None
        rec = table.get("1") if isinstance(table, dict) else None
        snap = rec.get("snapshot") if isinstance(rec, dict) else None   # only shown: a summary's checks do
        if not (isinstance(rec, dict) and _sound_record(rec) and stored.sound_summary(snap, run) and rec["run"] == run):
            quarantine(path, "is JSON but not this run's record")
            return None
        return rec

    def snapshot(self, run: str) -> dict | None:
        """A finished run's final snapshot: the record not yet written, or its file (None when that
        is gone or damaged: the journal then stands in)."""
        with self._lock:
            text = self._unwritten.get(run)
        if text is not None:
            return json.loads(text)["snapshot"]
        rec = self._read_run_file(run)
        return rec["snapshot"] if rec is not None else None
