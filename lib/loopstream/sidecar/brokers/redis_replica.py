"""A worker's replica of the shared Redis stream, and the follower that keeps it current.

Each worker keeps a local replica of the stream (the MemoryBroker this extends: the last-N ring and
the run snapshots, folded by the same reducer), fed by one ``XREAD BLOCK`` follower on a connection
of its own. Subscribers read the replica, exactly as with the memory backend, so ten thousand streams
cost one Redis connection, not ten thousand. A gap in the sequence (the follower missed events) or a
new epoch (Redis lost its data) makes the follower load everything again (``_resync``). When Redis
cannot be reached the follower says so (``on_down``: open streams end) and keeps trying.

What is read back is checked (stored.py): Redis is shared and may hold what an older version or
another program wrote. A stream entry that is not a sound event keeps its place as a stand-in that
is never folded or served; a damaged checkpoint, summary or transcript entry is reported once and
skipped.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import RedisError

from loopstream.core import events as ev
from loopstream.core import sse, state
from loopstream.sidecar import stored
from loopstream.sidecar.brokers.memory import BackendDown, Cursor, Filter, MemoryBroker, ReadResult
from loopstream.sidecar.brokers.redis_scripts import CHECKPOINT, ENSURE_EPOCH, Keys
from loopstream.sidecar.history import fold

if TYPE_CHECKING:
    from loopstream.sidecar.brokers.redis import Lane

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 200        # events of a run between two checkpoints of its snapshot
FOLLOW_COUNT = 1000           # entries the follower reads at a time
FOLLOW_BLOCK_MS = 5000        # how long one XREAD waits for new entries (the follower's socket waits longer)
UNREADABLE = "loop.unreadable"   # stands in for a stream entry that is not an event: never folded or read
Entry = tuple[str, dict[str, str]]   # a stream entry as redis-py reads it (XRANGE, XREAD): its id and fields


def cursor_of(entry_id: object) -> Cursor:
    """An id that Redis or our own checks already vouch for, as a cursor."""
    key = ev.parse_id(entry_id)
    assert key is not None, f"not an event id: {entry_id!r}"
    return key


def stream_event(entry_id: str, fields: dict[str, str]) -> ev.Event:
    """A stream entry as an Event. Entries are written by the publish script, but Redis is shared and
    may hold what an older version or someone else wrote: an entry that is not a sound event is
    logged and replaced by a stand-in with the same id, so the buffer keeps no gap; the stand-in is
    never folded, never returned by ``read`` and its frame is an SSE comment: no client sees it."""
    epoch, seq = cursor_of(entry_id)
    payload = fields.get("e")
    if isinstance(payload, str) and payload.startswith("{") and payload != "{}":
        text = f'{{"id":"{entry_id}",{payload[1:]}'
        d = ev.parse_stored(text)
        if d is not None:
            e = ev.Event(epoch, seq, d["type"], d["run"], d.get("ts") or 0.0, d["data"])
            e.json = text
            e.frame = sse.frame(entry_id, e.type, e.json)
            return e
    log.warning("loop: redis: stream entry %s is not a sound event; skipped", entry_id)
    e = ev.Event(epoch, seq, UNREADABLE, "unreadable", 0.0,
                 {"message": f"entry {entry_id} of the shared stream is not a sound event; skipped"})
    e.json = ev.dumps(e.as_dict())
    e.frame = f": entry {entry_id} is not a sound event; skipped\n\n".encode()
    return e


class Replica(MemoryBroker):
    """The memory broker as a copy of the shared stream: loaded from Redis, followed, never published to
    directly (RedisBroker, in redis.py, adds publishing). ``client`` is the worker's shared pool;
    ``follower`` the connection the follower blocks on."""

    fans_out_on_publish = False

    def __init__(self, client: redis.Redis, follower: Lane, keys: Keys, capacity: int = 100,
                 clock: Callable[[], float] = time.time, keep_finished: int = 50, retry_s: float = 0.5,
                 on_events: Callable[[list[ev.Event], Cursor, Cursor], None] | None = None,
                 on_down: Callable[[], None] | None = None, on_resync: Callable[[], None] | None = None):
        super().__init__(capacity, epoch=0, clock=clock, keep_finished=keep_finished)
        self.client, self.keys, self.prefix = client, keys, keys.prefix
        self._follower = follower
        self.retry_s = retry_s
        self._ensure_epoch = client.register_script(ENSURE_EPOCH)
        self._checkpoint = client.register_script(CHECKPOINT)
        self.on_events, self.on_down, self.on_resync = on_events, on_down, on_resync
        self.healthy = False                      # Redis answers and this replica is loaded
        self._stale = True                        # the replica must be loaded (again)
        self.resyncs = 0
        self._known_seq = 0                       # the highest sequence number seen in Redis
        self._checkpointed: dict[str, int] = {}   # run -> event_count of its last checkpoint
        self._closed = False
        self._advanced = threading.Condition()
        self._writing = threading.Lock()          # the follower and this worker's publishes both write the replica
        self._thread: threading.Thread | None = None
        self._reported: set[str] = set()          # damaged keys already reported (see _report_once)

    def start(self) -> None:
        """Load the state (if Redis answers) and start the follower thread; once."""
        if self._thread is not None:
            return
        try:
            self._resync()
        except RedisError:
            pass                                  # the follower keeps trying
        self._thread = threading.Thread(target=self._follow, name="loop-redis-follower", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed = True
        self._follower.close()
        try:
            self.client.close()
        except RedisError:
            pass

    # -- reading -------------------------------------------------------------------
    def read(self, cursor: Cursor | None, flt: Filter | None = None, limit: int = 1000) -> ReadResult:
        res = super().read(cursor, flt, limit)
        if any(e.type == UNREADABLE for e in res.events):
            res.events = [e for e in res.events if e.type != UNREADABLE]
        return res

    def catch_up(self, timeout: float = 2.0) -> None:
        """Wait until this worker's replica holds every event Redis holds now (read your writes,
        and other workers' too): a decision taken on a snapshot then sees them all."""
        try:
            epoch_text, seq_text = self.client.mget(self.keys.epoch, self.keys.seq)
        except RedisError as e:
            raise BackendDown(f"Redis: {e}") from e
        # The id, not only its sequence number: after a new epoch the counter starts low again, and a
        # replica still in the old epoch is behind however high its own counter is.
        target = (stored.sound_epoch(epoch_text) or 0, stored.sound_seq(seq_text) or 0)
        with self._advanced:
            if not self._advanced.wait_for(lambda: (self.epoch, self.seq) >= target or not self.healthy, timeout):
                if target[0] != self.epoch:
                    self._stale = True             # an epoch no entry has brought yet: load the state again
                raise BackendDown("this worker is behind the shared stream")

    def _stored_seq(self) -> int:
        """Redis's sequence counter now; 0 when it is not sound (the next publish or load renews it)."""
        return stored.sound_seq(self.client.get(self.keys.seq)) or 0

    def _exists(self, seq: int) -> bool:
        """Has Redis issued ``seq`` in this epoch (though the follower has not brought it yet)?"""
        if seq <= self._known_seq:
            return True
        try:
            self._known_seq = max(self._known_seq, self._stored_seq())
        except RedisError:
            return False
        return seq <= self._known_seq

    def _renewed(self, why: str, first_id: str) -> None:
        log.warning("loop: redis: %s; ids go on from %s, above every id issued", why, first_id)

    def _report_once(self, what: str, why: str) -> None:
        """A one-line warning for a damaged key or field, once per worker (it is read again and again)."""
        if what not in self._reported:
            if len(self._reported) < 10_000:
                self._reported.add(what)
            log.warning("loop: redis: %s %s", what, why)

    @staticmethod
    def _log_damaged(key: str, skipped: int) -> None:
        log.warning("loop: redis: %s: %d damaged entries skipped", key, skipped)

    def _fold(self, e: ev.Event) -> bool:
        """Fold one followed event; a stand-in is not folded, and one the reducer cannot fold is
        logged and skipped: no event can stop the follower."""
        if e.type == UNREADABLE:
            return False
        before = self.runs.get(e.run)
        try:
            return super()._fold(e)
        except Exception as exc:
            log.warning("loop: redis: event %s could not be folded (%s: %s); skipped", e.id, type(exc).__name__, exc)
            if before is not None:
                self.runs[e.run] = before
            return False

    # -- following -----------------------------------------------------------------
    def _follow(self) -> None:
        while not self._closed:
            try:
                if self._stale or not self.healthy:
                    self._resync()
                    if self.on_resync:
                        self.on_resync()
                reply: list[tuple[str, list[Entry]]] = self._follower.client.xread(  # type: ignore[assignment]
                    {self.keys.stream: f"{self.epoch}-{self.seq}"}, count=FOLLOW_COUNT, block=FOLLOW_BLOCK_MS)
                entries = [(i, f) for _, batch in reply or () for i, f in batch if self._unseen(i)]
                if entries:
                    self._take_in([stream_event(i, f) for i, f in entries])
            except Exception as e:
                if self._closed:
                    return
                if not isinstance(e, RedisError):
                    log.exception("the Redis follower failed; loading the state again")
                if self.healthy:
                    self.healthy = False
                    if self.on_down:
                        self.on_down()
                time.sleep(self.retry_s)

    def _take_in(self, events: list[ev.Event]) -> None:
        """Apply what the follower read; load everything again on a gap or a new epoch."""
        with self._writing:                       # this worker's own publish may have put them in meanwhile
            events = [e for e in events if e.epoch != self.epoch or e.seq > self.seq]
            if not events:
                return
            # Only the events that go on right after the head, in its epoch: a batch can run past a new
            # epoch (or a gap), and append() takes sequence numbers alone (a mixed batch set the head back
            # into the old epoch, so the same events came again and were folded again, without end).
            fits = 0
            while fits < len(events) and events[fits].epoch == self.epoch \
                    and events[fits].seq == self.seq + 1 + fits:
                fits += 1
            if fits < len(events):
                self._stale = True                 # the rest: load the state again
            if not fits:
                return
            events = events[:fits]
            before = self.head
            finished = set(self.append(events, forget=False))
        self._took_in(events, before, finished)

    def _unseen(self, entry_id: str) -> bool:
        """Is this stream entry not yet in the replica? (This worker's own batches went in as
        they were published.) An id of another epoch, or not an id, is unseen: ``_take_in`` decides."""
        key = ev.parse_id(entry_id)
        return key is None or key[0] != self.epoch or key[1] > self.seq

    def _took_in(self, events: list[ev.Event], before: Cursor, finished: set[str]) -> None:
        """What follows events going into the replica: waiters woken, subscribers told, checkpoints."""
        self._known_seq = max(self._known_seq, self.seq)
        with self._advanced:
            self._advanced.notify_all()
        if self.on_events:
            self.on_events(events, before, self.head)
        self._write_checkpoints({e.run for e in events}, finished)
        if finished:
            self._forget_old_finished()   # after their final checkpoint

    def _write_checkpoints(self, runs: set[str], finished: set[str]) -> None:
        k = self.keys
        for run in runs:
            snap = self.runs.get(run)
            if snap is None:
                continue
            count = snap["event_count"]
            if run in finished or count - self._checkpointed.get(run, 0) >= CHECKPOINT_EVERY:
                try:
                    self._checkpoint(keys=[k.checkpoint, k.checkpoint_count, k.summary],
                                     args=[run, count, ev.dumps(snap), ev.dumps(state.summarize(snap))])
                except RedisError as e:   # the transcript stands for it; tried again with the run's next event
                    log.warning("loop: redis: the checkpoint of %s could not be written (%s)", run, e)
                    continue
                self._checkpointed[run] = count

    # -- loading -------------------------------------------------------------------
    def _resync(self) -> None:
        """Load the stream, the counter and every run's snapshot as of one moment."""
        k = self.keys
        epoch_text, why = self._ensure_epoch(
            keys=[k.epoch, k.seq, k.stream, k.runs, k.checkpoint, k.checkpoint_count, k.summary])
        if why:
            self._renewed(why, f"{epoch_text}-1")
        with self.client.pipeline(transaction=True) as pipe:
            p: Any = pipe
            p.get(k.epoch).get(k.seq).xrange(k.stream).smembers(k.runs)
            now_epoch, seq_text, entries, names = p.execute()
        epoch = stored.sound_epoch(now_epoch) or int(epoch_text)
        events = [stream_event(i, f) for i, f in entries]
        events = [e for e in events if e.epoch == epoch]
        # Only a run of consecutive ids can be read by cursor: keep the newest such run.
        start = len(events) - 1
        while start > 0 and events[start - 1].seq == events[start].seq - 1:
            start -= 1
        events = events[max(start, 0):]
        seq = events[-1].seq if events else stored.sound_seq(seq_text) or 0
        runs = self._load_runs(self._worth_loading(sorted(names)), (epoch, seq))
        # The follower (or start(), before it starts the follower) loads the replica; a publish's own
        # batch goes in under the same lock, before or after, never halfway.
        with self._writing:
            self.epoch, self.seq = epoch, seq
            self.buffer.clear()
            self.buffer.extend(events)
            self.runs = dict(sorted(runs.items(), key=lambda kv: kv[1].get("updated_at") or 0))
            self._forget_old_finished()
            self._checkpointed = {r: s["event_count"] for r, s in self.runs.items()}
            self._known_seq = max(self._known_seq, seq)
        self.resyncs += 1
        self._stale = False
        self.healthy = True
        with self._advanced:
            self._advanced.notify_all()

    def _worth_loading(self, names: list[str]) -> list[str]:
        """The runs a replica holds: live ones, ones without a checkpoint or with events after
        it, and the latest finished ones. Older finished runs are read from Redis when asked for."""
        if not names:
            return []
        with self.client.pipeline(transaction=False) as p:
            p.hmget(self.keys.summary, names)
            for name in names:
                p.llen(self.keys.transcript(name))
            summaries, *lengths = p.execute(raise_on_error=False)
        lengths = [self._list_length(name, n) for name, n in zip(names, lengths, strict=False)]
        load, finished = [], []
        for name, text, length in zip(names, summaries, lengths, strict=False):
            summary = stored.load_or_none(text)
            if not stored.sound_summary(summary, name) or "event_count" not in summary:
                if text is not None:
                    self._report_once(f"{self.keys.summary} {name}", "is not a sound run summary; its "
                                                                     "transcript is folded instead")
                summary = None
            if summary is None or summary.get("status") in state.LIVE or length > summary["event_count"]:
                load.append(name)
            else:
                # recency by the run's last event id: one total order across workers, no ties
                finished.append((ev.parse_id(summary.get("last_event_id")) or (0, 0), name))
        return load + [name for _, name in sorted(finished)[-self.keep_finished:]]

    def _list_length(self, name: str, reply: object) -> int:
        """LLEN's reply for a run's transcript; a key of another type (an error) reads as empty."""
        if isinstance(reply, int):
            return reply
        self._report_once(self.keys.transcript(name), f"cannot be read ({reply}); skipped")
        return 0

    def _load_runs(self, names: list[str], upto: Cursor) -> dict[str, dict]:
        """Each run's snapshot as of ``upto``: its checkpoint plus the transcript after it."""
        if not names:
            return {}
        bases = []
        for name, text in zip(names, self.client.hmget(self.keys.checkpoint, names), strict=False):
            snap = stored.load_or_none(text)
            if not stored.sound_snapshot(snap, name):
                if text is not None:
                    self._report_once(f"{self.keys.checkpoint} {name}",
                                      "is not a sound snapshot; skipped (the transcript is folded from its start)")
                snap = None   # none, or not one we wrote: fold the transcript from its start
            # A checkpoint newer than ``upto`` (written meanwhile) cannot be wound back: fold from the start.
            if snap and cursor_of(snap["last_event_id"] or "0-0") > upto:
                snap = None
            bases.append(snap)
        out: dict[str, dict] = {}
        with self.client.pipeline(transaction=False) as p:
            for name, snap in zip(names, bases, strict=False):
                p.lrange(self.keys.transcript(name), snap["event_count"] if snap else 0, -1)
            tails = [t if isinstance(t, list) else [] for t in p.execute(raise_on_error=False)]
        for name, snap, tail in zip(names, bases, tails, strict=False):
            snap = self._fold_tail(name, snap, tail, upto)
            if snap is not None:
                out[name] = snap
        return out

    def _fold_tail(self, name: str, snap: dict | None, tail: list[str], upto: Cursor) -> dict | None:
        """Fold a transcript's entries after ``snap`` up to ``upto``; damaged ones are logged and
        skipped (their places still count, so entries already folded are recognised by id)."""
        done = cursor_of(snap["last_event_id"] or "0-0") if snap else (0, 0)
        events, skipped = [], 0
        for line in tail:
            e = ev.parse_stored(line)
            if e is None:
                skipped += 1
                continue
            key = ev.parse_id(e.get("id"))
            if key is None:
                skipped += 1
                continue
            if key > upto:
                break
            if key > done:
                events.append(e)
        if skipped:
            self._log_damaged(self.keys.transcript(name), skipped)
        return fold(events, snap, where=self.keys.transcript(name))
