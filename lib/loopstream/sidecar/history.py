"""Run history: a journal per run, a TinyDB file per finished run, and a TinyDB index.

Three layers, so that a 201 means "recorded" without putting a database on the
hot path, and so that history costs the same with 5 or 500 finished runs:

- ``runs/<run>.jsonl`` — every accepted event of a run, appended with one
  ``write()`` before the POST is answered (the line is the JSON already made
  for the stream). The OS keeps it if the server is killed; it is the run's
  transcript. What survives a power cut is ``fsync``'s (``loop serve
  --fsync``): "always" fsyncs before the 201, one fsync for every batch
  written meanwhile (group commit); "everysec" from the writer thread about
  once a second; "never" leaves it to the OS.
- ``finished/<run>.json`` — one small TinyDB file per finished run (its final
  snapshot), written once by a background thread: a finished-run request
  reads that file and nothing else.
- ``history.json`` — the TinyDB index: a ``meta`` table (the last epoch) and
  an ``index`` table (one run-list summary, ~1 KB, per finished run). The
  writer keeps it open through TinyDB's ``CachingMiddleware`` and writes it
  once per flush, with the new runs' files; never a snapshot in it.

Every file is replaced atomically (a temporary file renamed over the old one).
A finished run is readable the moment it finishes: until its file is written,
requests read the record the writer is about to write. ``index`` (run ->
summary) is changed only by the serving thread (``finished``, pruning); the
writer thread only writes files.

Damaged files are never trusted and never stop a start (every file is read
through stored.py: strict, bounded JSON of the shape we write): a journal line
that is not a sound event is skipped, counted and logged, and the run's
transcript says ``complete: false`` (a torn last line — a crash in the middle
of a ``write()`` that was never acknowledged — is dropped silently; NUL bytes
or other damage at the end are set aside with a warning); a journal with no
readable line, an index or run file that is not what we wrote (another shape,
NaN, deep nesting, an epoch past stored.MAX_EPOCH), is renamed aside
(``<name>.damaged-<time>``) with a one-line warning naming it, and the rest is
served: runs the index lost come back from their own files and journals, and
the epoch stays above every id they hold.

At start-up, a journal whose run has no finished record is folded back into a
snapshot: the run was live when the server died and is marked ``interrupted``
until its runner comes back.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast

from tinydb import TinyDB
from tinydb.middlewares import CachingMiddleware
from tinydb.storages import Storage
from tinydb.table import Document

from loopstream.core import events as ev
from loopstream.core import state
from loopstream.core.events import Event
from loopstream.sidecar import stored

KEEP_RUNS = 500       # finished runs kept in history (older ones are pruned)
OPEN_JOURNALS = 64    # journal files kept open at once
TAIL_SCAN = 1 << 20   # bytes read back from a journal's end to find its last whole line
LINE_START = b'{"id":"'  # how every journal line starts (ev.dumps of an event)
EPOCH_SCAN = 1 << 17  # bytes read back from a journal's end to find its last id (a line is < 64 KB)
INDEX_EVERY = 5.0     # seconds between two writes of the index (run files are written at once)

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


def _off_the_loop(fn, *args):
    """Run a blocking call (an fsync) in gevent's thread pool when gevent has patched threading, so
    the worker's other greenlets go on meanwhile (and write the next group of events); else here."""
    try:
        from gevent import monkey
        if monkey.is_module_patched("threading"):
            import gevent
            return gevent.get_hub().threadpool.apply(fn, args)
    except ImportError:
        pass
    return fn(*args)


def _native_thread_tools():
    """A real OS thread, lock and sleep, even when gevent has patched threading."""
    import _thread
    try:
        from gevent import monkey
        if monkey.is_module_patched("threading"):
            return (monkey.get_original("_thread", "start_new_thread"),
                    monkey.get_original("_thread", "allocate_lock"),
                    monkey.get_original("time", "sleep"))
    except ImportError:
        pass
    return _thread.start_new_thread, _thread.allocate_lock, time.sleep


def torn(tail: bytes) -> bool:
    """Could ``tail`` (a last line without its newline) be a write a crash cut short? It then starts
    like every line we write. NUL bytes (a file extended but never written: a power cut) or any
    other start are damage, not a torn write."""
    return (tail.startswith(LINE_START) or LINE_START.startswith(tail)) and b"\0" not in tail


def read_journal(path: Path) -> tuple[list[dict], int]:
    """Every sound event of a journal, and how many lines were not one. A torn last line (no
    newline: a crash mid-write, never acknowledged) is left out without being counted."""
    out, skipped = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                skipped += not torn(line)
                break
            e = ev.parse_stored(line)
            if e is None:
                skipped += 1
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


def _epoch_of(summary: dict) -> int:
    key = stored.sound_id(summary.get("last_event_id"))
    return key[0] if key else 0


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


class History:
    def __init__(self, path: str | Path, keep: int = KEEP_RUNS, fsync: str = "everysec"):
        """``fsync`` (config.FSYNC_MODES): "always" — ``durable()`` waits for the journal on disk;
        "everysec" — the writer thread fsyncs what was written about once a second; "never" — the OS."""
        self.path = Path(path)
        self.fsync = fsync
        self.journal_dir = self.path.parent / "runs"
        self.run_dir = self.path.parent / "finished"
        self.keep = keep
        self._files: OrderedDict[str, Any] = OrderedDict()
        self._pending: deque[tuple[str, str, str | None, str | None]] = deque()  # (kind, run, record, summary)
        self.index: dict[str, dict] = {}         # run -> summary, oldest finished first (serving thread only)
        self._doc_ids: dict[str, int] = {}       # run -> its row in the index table (writer thread only)
        self._unwritten: dict[str, str] = {}     # run -> record JSON whose file the writer has yet to write
        self._warned: set[str] = set()
        self.write_errors = 0
        self._db: Any = None                     # TinyDB over CachingMiddleware (whose flush() types do not show)
        self._index_written = 0.0
        self._stop = False
        self._done: Any = None                   # a native lock, held until the writer thread ends
        _, allocate_lock, _ = _native_thread_tools()
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

    # -- start-up ------------------------------------------------------------
    def open(self) -> tuple[int, list[dict]]:
        """Load the index, recover interrupted runs; return (epoch floor, snapshots to restore)."""
        for d in (self.journal_dir, self.run_dir):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OSError(f"cannot create the history folder {d}: {e}") from e
        epoch, records = self._load_index()
        self._db = TinyDB(self.path, storage=CachingMiddleware(AtomicJSONStorage))
        self._db.storage.WRITE_CACHE_SIZE = 1 << 30    # written once per flush, by flush()
        for rec in sorted(records, key=lambda r: _finished_at(r["summary"])):
            if self._run_file(rec["run"]).exists():   # else pruned after the index was last written
                self.index[rec["run"]] = rec["summary"]
        self._doc_ids = {doc["run"]: doc.doc_id for doc in self._db.table("index").all()}
        self._next_doc = max(self._doc_ids.values(), default=0) + 1
        self._adopt_run_files()
        restored = self._recover_journals()
        floor = max([epoch or 0, *(_epoch_of(s) for s in [*self.index.values(), *restored])])
        if epoch is None:   # no sound epoch stored: stay above every id any journal holds
            floor = max(floor, self._journals_epoch())
        return floor, restored

    def _journals_epoch(self) -> int:
        """The highest sound epoch among the last ids of every journal (read from their tails)."""
        best = 0
        for path in self.journal_dir.glob("*.jsonl"):
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
        self._db.table("meta").upsert(Document({"epoch": epoch}, doc_id=1))
        self._db.storage.flush()

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
            _off_the_loop(self.sync_journals)
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

    def sync_journals(self) -> None:
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
        path = self.journal_dir / f"{run}.jsonl"
        _drop_torn_tail(path)
        f = self._files[run] = open(path, "ab", buffering=0)
        return f

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

    def start_writer(self, interval: float = 0.5) -> None:
        start_thread, allocate_lock, sleep = _native_thread_tools()
        self._done = allocate_lock()
        self._done.acquire()

        def loop():
            try:
                while not self._stop:
                    self._flush_logged()
                    if self.fsync == "everysec" and time.monotonic() - self._synced_at >= 1.0:
                        self.sync_journals()
                    sleep(min(interval, 0.5))
                self._flush_logged()
                self._write_index(force=True)
            finally:
                self._done.release()

        start_thread(loop, ())

    def _flush_logged(self) -> None:
        """flush(), for the writer thread: a bug is logged and counted, and the thread goes on."""
        try:
            self.flush()
        except Exception as e:
            self.write_errors += 1
            log.warning("loop: history: the writer failed (%s: %s); finished runs stay readable from memory",
                        type(e).__name__, e)

    def flush(self) -> None:
        """Write what changed since the last flush: each newly finished run's own file and pruned
        runs' files removed at once; the index (one file of summaries) at most every INDEX_EVERY s."""
        if self._pending:
            self._write_batch()
        try:
            self._write_index()
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

    def _write_index(self, force: bool = False) -> None:
        """The index file, at most every INDEX_EVERY seconds (CachingMiddleware holds the changes
        meanwhile): serialising every summary is the one cost of a flush that grows with history,
        and the index may lag — a run file it does not list is adopted at the next start."""
        now = time.monotonic()
        if force or self._stop or now - self._index_written >= INDEX_EVERY:
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

    def close(self, timeout: float = 2.0) -> None:
        self._stop = True
        if self._done is not None:
            self._done.acquire(True, timeout)
        elif self._db is not None:
            self.flush()
        if self.fsync != "never":
            self.sync_journals()
        for f in self._files.values():
            f.close()
        self._files.clear()

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

    # -- reading ------------------------------------------------------------------
    def transcript(self, run: str) -> tuple[list[dict], bool]:
        """A run's recorded events and whether they are all there (no damaged line skipped)."""
        path = self.journal_dir / f"{run}.jsonl"
        if not path.is_file():
            return [], True
        try:
            events, skipped = read_journal(path)
        except OSError:
            return [], False
        if skipped:
            self._warn_damaged(run, path, skipped)
        return events, skipped == 0

    def snapshot(self, run: str) -> dict | None:
        """A finished run's final snapshot: one small file read, or the record not yet written."""
        if run not in self.index:
            return None
        with self._lock:
            text = self._unwritten.get(run)
        if text is not None:
            return json.loads(text)["snapshot"]
        rec = self._read_run_file(run)
        if rec is not None:
            return rec["snapshot"]
        events, _ = self.transcript(run)   # the file is gone or damaged: the journal stands in
        return fold(events, where=f"{self.journal_dir / run}.jsonl")


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
