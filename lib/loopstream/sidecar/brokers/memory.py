"""The in-memory broker: ids, the last-N buffer, cursors and run snapshots.

Sans-IO: no sockets, no Flask, no waiting; the clock is injected. Subscribers
do not get a queue each: they read the one shared buffer by cursor, so a
publish costs the same for 1 or 10,000 subscribers, and a slow reader only
falls behind itself. A cursor that has fallen out of the buffer (or comes
from another epoch, i.e. before a restart) reads as a *reset*: the caller
sends the current snapshots and continues from the head.

The same small interface (``Broker``, below: publish, read, head, tail,
snapshots, transcript...) is what the Redis broker (brokers/redis.py) keeps:
there, this class is each worker's local replica of the shared stream.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from loopstream.core import events as ev
from loopstream.core import sse, state
from loopstream.sidecar.ratelimit import Charge

Cursor = tuple[int, int]
ENDED = (*state.FINISHED, "interrupted")   # a run that reaches one of these goes to history
HELLO_LIVE = 200                           # live runs a hello or reset carries in full


class BackendDown(RuntimeError):
    """The shared store (Redis) cannot be reached: the request can be retried later."""


class StoreRefused(BackendDown):
    """The shared store answered but refused the write (out of memory, read-only...): reachable, not usable."""


class OverBudget(Exception):
    """A publish's rate-limit charge was refused: nothing was charged or stored. ``wait``: seconds until
    the bucket ``refused_by`` holds enough."""

    def __init__(self, wait: float, refused_by: str):
        super().__init__(f"{refused_by}: retry after {wait:.2f}s")
        self.wait, self.refused_by = wait, refused_by


@dataclass(slots=True)
class ReadResult:
    events: list[ev.Event]
    cursor: Cursor
    reset: bool = False
    reason: str = ""          # with a reset: "restart" (another epoch), "evicted" or "unknown" (a future id)


@dataclass(slots=True)
class Filter:
    runs: frozenset[str] | None = None
    types: frozenset[str] | None = None

    def __call__(self, e: ev.Event) -> bool:
        return (self.runs is None or e.run in self.runs) and (self.types is None or e.type in self.types)

    @property
    def everything(self) -> bool:
        return self.runs is None and self.types is None


@dataclass(slots=True)
class PublishResult:
    events: list[ev.Event]
    finished: list[str] = field(default_factory=list)  # runs this publish finished
    before: Cursor | None = None                        # the head before and after it
    after: Cursor | None = None
    # the finished runs' final snapshots, kept here because the broker may already have
    # forgotten the oldest finished runs when a batch finished many of them
    finished_snapshots: dict[str, dict] = field(default_factory=dict)


@dataclass(slots=True)
class Staged:
    """A publish prepared but not yet visible: the events with their ids, and every run they
    touch folded on a copy of its snapshot (what ``commit`` puts in place)."""

    events: list[ev.Event]
    runs: dict[str, dict]
    finished: list[str]


def ends(before: dict | None, after: dict) -> bool:
    """Did this event finish the run (so it goes to history)?"""
    was_live = before is None or state.is_live(before) or before["status"] == "interrupted"
    return was_live and after["status"] in ENDED


@runtime_checkable
class Broker(Protocol):
    """What the hub (hub.py) relies on in a broker; MemoryBroker and RedisBroker both are one."""

    fans_out_on_publish: bool      # True: the hub fans a publish out; False: the broker's on_events does
    healthy: bool                  # False while the shared store is unreachable
    capacity: int
    epoch: int
    buffer: deque[ev.Event]        # the last ``capacity`` events, oldest first
    runs: dict[str, dict]          # run -> snapshot held here, most recently updated last

    @property
    def head(self) -> Cursor: ...
    @property
    def tail(self) -> Cursor: ...
    def start(self) -> None: ...
    def stage(self, drafts: Iterable[ev.Draft]) -> Staged: ...
    def commit(self, staged: Staged) -> PublishResult: ...
    def publish(self, drafts: Iterable[ev.Draft], charges: Sequence[Charge] = ()) -> PublishResult: ...
    def read(self, cursor: Cursor | None, flt: Filter | None = None, limit: int = 1000) -> ReadResult: ...
    def catch_up(self, timeout: float = 2.0) -> None: ...
    def snapshot(self, run: str) -> dict | None: ...
    def snapshots(self, flt: Filter | None = None, recent: int = 10, live: int = HELLO_LIVE) -> list[dict]: ...
    def summaries(self) -> dict[str, dict]: ...
    def transcript(self, run: str) -> tuple[list[dict], bool]: ...
    def live_count(self) -> int: ...
    def is_live_run(self, run: str) -> bool: ...
    def claim_reap(self, run: str, last_event_id: str | None) -> bool: ...
    def close(self) -> None: ...


class MemoryBroker:
    # The server fans a publish out itself; a broker fed by other processes
    # (Redis) says False and calls ``on_events`` when the events reach it.
    fans_out_on_publish = True
    healthy = True

    def __init__(self, capacity: int = 100, epoch: int | None = None,
                 clock: Callable[[], float] = time.time, keep_finished: int = 50):
        self.capacity = max(1, int(capacity))
        self.clock = clock
        self.epoch = epoch if epoch is not None else int(clock() * 1000)
        self.seq = 0
        self.buffer: deque[ev.Event] = deque(maxlen=self.capacity)
        self.runs: dict[str, dict] = {}        # run -> snapshot, most recently updated last
        self.keep_finished = keep_finished

    # -- writing -----------------------------------------------------------
    def publish(self, drafts: Iterable[ev.Draft], charges: Sequence[Charge] = ()) -> PublishResult:
        """Give drafts ids and times, append them to the buffer, fold them into runs. ``charges``: a
        broker that keeps rate-limit budgets (Redis) takes them with the batch (OverBudget); this one
        keeps none, and is given none (the hub's in-process limiter charges first)."""
        if charges:
            raise ValueError("the memory broker keeps no budgets: charge the hub's limiter first")
        return self.commit(self.stage(drafts))

    def stage(self, drafts: Iterable[ev.Draft]) -> Staged:
        """Everything a publish computes, with nothing made visible: ids, frames, and the
        snapshots folded on copies. Raises (a reducer bug) without changing anything."""
        now = round(self.clock(), 3)
        out = []
        for seq, d in enumerate(drafts, self.seq + 1):
            e = ev.Event(self.epoch, seq, d.type, d.run, now, d.data)
            e.json = ev.dumps(e.as_dict())
            e.frame = sse.frame(e.id, e.type, e.json)
            out.append(e)
        runs, finished = self.fold_copies(out)
        return Staged(out, runs, finished)

    def fold_copies(self, events: list[ev.Event]) -> tuple[dict[str, dict], list[str]]:
        """Each touched run's snapshot after ``events`` (new objects: the reducer changes none it is
        given); the runs they finished."""
        staged: dict[str, dict] = {}
        finished = []
        for e in events:
            before: dict | None = staged[e.run] if e.run in staged else self.runs.get(e.run)   # apply() copies on write
            was = None if before is None else {"status": before["status"]}
            staged[e.run] = self.reduce(before, e.as_dict())
            if ends(was, staged[e.run]):
                finished.append(e.run)
        return staged, finished

    def commit(self, staged: Staged) -> PublishResult:
        """Make a staged publish visible: the buffer and the snapshots, in one step."""
        if staged.events[0].seq != self.seq + 1:
            raise RuntimeError("another publish came between stage() and commit()")
        before = self.head
        self._put_in(staged)
        if staged.finished:
            self._forget_old_finished()
        final = {run: staged.runs[run] for run in staged.finished if run in staged.runs}
        return PublishResult(staged.events, staged.finished, before, self.head, final)

    def _put_in(self, staged: Staged) -> None:
        """The staged events into the buffer and their runs' snapshots into place (numbered after the head)."""
        self.seq = staged.events[-1].seq
        self.buffer.extend(staged.events)
        for run, snap in staged.runs.items():
            self.runs.pop(run, None)
            self.runs[run] = snap   # re-insert: dict order is recency

    @staticmethod
    def reduce(snapshot: dict | None, event: dict) -> dict:
        """The reducer (state.apply); a seam for tests that need it to fail like a bug would."""
        return state.apply(snapshot, event)

    def append(self, events: list[ev.Event], forget: bool = True) -> list[str]:
        """Add events that already have their ids (the next ones in sequence); the runs they finished.
        ``forget=False`` keeps old finished runs until the caller has used them."""
        finished = []
        for e in events:
            self.seq = e.seq
            self.buffer.append(e)
            if self._fold(e):
                finished.append(e.run)
        if finished and forget:
            self._forget_old_finished()
        return finished

    def restore(self, snapshot: dict) -> None:
        """Adopt a run snapshot recovered from history (at start-up)."""
        self.runs[snapshot["run"]] = snapshot

    def _fold(self, e: ev.Event) -> bool:
        before = self.runs.pop(e.run, None)
        was = None if before is None else {"status": before["status"]}
        snap = self.reduce(before, {"id": e.id, "type": e.type, "run": e.run, "ts": e.ts, "data": e.data})
        self.runs[e.run] = snap  # re-insert: dict order is recency
        return ends(was, snap)

    def _forget_old_finished(self) -> None:
        finished = [r for r, s in self.runs.items() if not state.is_live(s)]
        for r in finished[: max(0, len(finished) - self.keep_finished)]:
            del self.runs[r]

    # -- reading -----------------------------------------------------------
    @property
    def head(self) -> Cursor:
        return (self.epoch, self.seq)

    @property
    def tail(self) -> Cursor:
        """The cursor that reads the whole buffer."""
        first = self.buffer[0].seq if self.buffer else self.seq + 1
        return (self.epoch, first - 1)

    def read(self, cursor: Cursor | None, flt: Filter | None = None, limit: int = 1000) -> ReadResult:
        """Events after ``cursor`` that pass ``flt``, at most ``limit``; or a reset."""
        if cursor is None:
            return ReadResult([], self.head)
        epoch, seq = cursor
        if epoch != self.epoch or seq > self.seq or seq < self.tail[1]:
            reason = "restart" if epoch != self.epoch else "unknown" if seq > self.seq else "evicted"
            return ReadResult([], self.head, reset=True, reason=reason)
        if seq == self.seq:
            return ReadResult([], cursor)
        start = seq - self.tail[1]  # index of the first unseen event
        buf = self.buffer
        if flt is None or flt.everything:
            stop = min(len(buf), start + limit)
            picked = [buf[i] for i in range(start, stop)]
            return ReadResult(picked, (epoch, buf[stop - 1].seq))
        picked = []
        last = seq
        for i in range(start, len(buf)):
            e = buf[i]
            last = e.seq
            if flt(e):
                picked.append(e)
                if len(picked) >= limit:
                    break
        return ReadResult(picked, (epoch, last))

    def start(self) -> None:
        """Begin following the shared stream (here there is none: nothing to start)."""

    def catch_up(self, timeout: float = 2.0) -> None:
        """Wait until every published event is in this broker (here they always are)."""

    def claim_reap(self, run: str, last_event_id: str | None) -> bool:
        """May this worker finish ``run``, silent since ``last_event_id``? One process: always."""
        return True

    def snapshot(self, run: str) -> dict | None:
        return self.runs.get(run)

    def summaries(self) -> dict[str, dict]:
        """Run name -> its run-list summary, for every run this broker knows."""
        return {r: state.summarize(s) for r, s in self.runs.items()}

    def transcript(self, run: str) -> tuple[list[dict], bool]:
        """A run's events and whether that is all of them (here: only what the buffer holds)."""
        return [e.as_dict() for e in self.buffer if e.run == run], False

    def close(self) -> None:
        pass

    def snapshots(self, flt: Filter | None = None, recent: int = 10, live: int = HELLO_LIVE) -> list[dict]:
        """The ``live`` most recently updated live runs in full, and the ``recent`` latest finished
        runs, oldest first: a hello stays bounded however many runs there are (the rest: /api/runs)."""
        wanted = [s for r, s in self.runs.items() if flt is None or flt.runs is None or r in flt.runs]
        running = [s for s in wanted if state.is_live(s)][-live:] if live else []
        done = [s for s in wanted if not state.is_live(s)][-recent:] if recent else []
        return done + running

    def live_count(self) -> int:
        return sum(1 for s in self.runs.values() if state.is_live(s))

    def is_live_run(self, run: str) -> bool:
        snap = self.runs.get(run)
        return snap is not None and state.is_live(snap)
