"""Run history: a journal per run, and a TinyDB index of finished runs.

Two layers, so that a 201 means "recorded" without putting a database on the
hot path:

- ``runs/<run>.jsonl`` — every accepted event of a run, appended with one
  ``write()`` before the POST is answered (the line is the JSON already made
  for the stream). The OS keeps it if the server is killed; it is the run's
  transcript.
- ``history.json`` (TinyDB) — one record per finished run (status, summary,
  final snapshot) and the last epoch, written by a background thread, each
  write to a temporary file renamed over the old one (never half-written).

At start-up, a journal whose run has no finished record is folded back into a
snapshot: the run was live when the server died and is marked
``interrupted`` until its runner comes back.
"""
from __future__ import annotations

import json
import os
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Iterable

from tinydb import Query, TinyDB
from tinydb.table import Document
from tinydb.storages import Storage

from . import state
from .events import Event

KEEP_RUNS = 500       # finished runs kept in history (older ones are pruned)
OPEN_JOURNALS = 64    # journal files kept open at once


class AtomicJSONStorage(Storage):
    """TinyDB storage that replaces the file atomically on every write."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        return json.loads(text) if text.strip() else None

    def write(self, data) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _native_thread_tools():
    """A real OS thread and sleep, even when gevent has patched threading."""
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


def read_journal(path: Path) -> list[dict]:
    """Every whole line of a journal; a torn last line (a crash mid-write) is skipped."""
    out = []
    try:
        with open(path, "rb") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    except FileNotFoundError:
        pass
    return out


class History:
    def __init__(self, path: str | Path, keep: int = KEEP_RUNS):
        self.path = Path(path)
        self.journal_dir = self.path.parent / "runs"
        self.keep = keep
        self._files: OrderedDict[str, object] = OrderedDict()
        self._pending: deque[tuple[str, str]] = deque()   # (run, record json) for the writer
        self.index: dict[str, dict] = {}                   # run -> summary of finished runs
        self.write_errors = 0
        self._stop = False
        self._done = None

    # -- start-up ------------------------------------------------------------
    def open(self) -> tuple[int, list[dict]]:
        """Load the index, recover interrupted runs; return (epoch floor, snapshots to restore)."""
        try:
            self.journal_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create the history folder {self.journal_dir}: {e}") from e
        try:
            db = TinyDB(self.path, storage=AtomicJSONStorage)
            records = db.table("runs").all()
            meta = db.table("meta").get(doc_id=1) or {}
            db.close()
        except ValueError as e:
            raise ValueError(f"the history file {self.path} is not valid JSON ({e}); "
                             f"move it away or pass another --db") from e
        for rec in records:
            self.index[rec["run"]] = rec["summary"]
        restored = []
        for name in sorted(os.listdir(self.journal_dir)):
            if not name.endswith(".jsonl"):
                continue
            run = name[: -len(".jsonl")]
            if run in self.index and self.index[run].get("status") in state.FINISHED:
                continue
            snap = state.reduce(read_journal(self.journal_dir / name))
            if snap is None:
                continue
            if state.is_live(snap):
                snap["status"] = "interrupted"
                snap["eta_s"] = None
            restored.append(snap)
        return int(meta.get("epoch", 0)), restored

    def save_epoch(self, epoch: int) -> None:
        db = TinyDB(self.path, storage=AtomicJSONStorage)
        db.table("meta").upsert(Document({"epoch": epoch}, doc_id=1))
        db.close()

    # -- the hot path: one write() per request and run -------------------------
    def record(self, events: Iterable[Event]) -> None:
        by_run: dict[str, list[str]] = {}
        for e in events:
            by_run.setdefault(e.run, []).append(e.json)
        for run, lines in by_run.items():
            f = self._journal(run)
            f.write(("\n".join(lines) + "\n").encode())

    def _journal(self, run: str):
        f = self._files.get(run)
        if f is not None:
            self._files.move_to_end(run)
            return f
        if len(self._files) >= OPEN_JOURNALS:
            _, old = self._files.popitem(last=False)
            old.close()
        f = self._files[run] = open(self.journal_dir / f"{run}.jsonl", "ab", buffering=0)
        return f

    # -- finished runs, written in the background -------------------------------
    def finished(self, snap: dict) -> None:
        summary = state.summarize(snap)
        self.index[snap["run"]] = summary
        record = {"run": snap["run"], "summary": summary, "snapshot": snap}
        self._pending.append((snap["run"], json.dumps(record)))

    def start_writer(self, interval: float = 0.2) -> None:
        start_thread, allocate_lock, sleep = _native_thread_tools()
        self._done = allocate_lock()
        self._done.acquire()

        def loop():
            try:
                while not self._stop:
                    self.flush()
                    sleep(interval)
                self.flush()
            finally:
                self._done.release()

        start_thread(loop, ())

    def flush(self) -> None:
        """Write every pending finished run to TinyDB (one atomic file write)."""
        if not self._pending:
            return
        batch = []
        while self._pending:
            batch.append(self._pending.popleft())
        try:
            db = TinyDB(self.path, storage=AtomicJSONStorage)
            runs = db.table("runs")
            Run = Query()
            for run, record in batch:
                runs.upsert(json.loads(record), Run.run == run)
            self._prune(runs)
            db.close()
        except OSError:
            self.write_errors += 1
            self._pending.extendleft(reversed(batch))

    def _prune(self, runs) -> None:
        docs = runs.all()
        if len(docs) <= self.keep:
            return
        docs.sort(key=lambda d: d["summary"].get("finished_at") or 0)
        old = docs[: len(docs) - self.keep]
        runs.remove(doc_ids=[d.doc_id for d in old])
        for d in old:
            self.index.pop(d["run"], None)
            try:
                os.unlink(self.journal_dir / f"{d['run']}.jsonl")
            except FileNotFoundError:
                pass

    def close(self, timeout: float = 2.0) -> None:
        self._stop = True
        if self._done is not None:
            self._done.acquire(True, timeout)
        else:
            self.flush()
        for f in self._files.values():
            f.close()
        self._files.clear()

    # -- reading ------------------------------------------------------------------
    def transcript(self, run: str) -> list[dict] | None:
        path = self.journal_dir / f"{run}.jsonl"
        return read_journal(path) if path.exists() else None

    def snapshot(self, run: str) -> dict | None:
        if run not in self.index:
            return None
        db = TinyDB(self.path, storage=AtomicJSONStorage)
        try:
            rec = db.table("runs").get(Query().run == run)
        finally:
            db.close()
        return rec["snapshot"] if rec else None
