"""The Redis backend: one event stream shared by every worker on every host.

Redis holds the truth (redis_scripts.py names its keys and holds the scripts that write them).
A publish is one round trip: one Lua script takes the batch's rate-limit charges, numbers the events
and appends each to the stream and to its run's transcript, atomically, so a 201 means the event is
in both, and a 429 that nothing was charged or stored. Publishing computes no snapshot, so emitters
on different workers never conflict.

Each worker reads from its replica of the stream (redis_replica.py: the memory broker, fed by one
follower), so subscribers cost Redis nothing. This module adds the writing side and the reads that
go to Redis itself (runs the replica no longer holds, summaries, transcripts), and the connections:

- ``client``: the worker's shared pool (``connect``), which waits for a free connection;
- a ``Lane`` each for publishing and for following: a connection of its own, as a redis-py client.

When Redis cannot be reached, publishing raises BackendDown (the server answers 503 with
Retry-After), open streams are ended so clients reconnect, and the follower keeps trying; when
Redis is back it loads the state again and everything carries on.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from loopstream.core import events as ev
from loopstream.core import state
from loopstream.sidecar import stored
from loopstream.sidecar.brokers.memory import (
    BackendDown,
    Cursor,
    Filter,
    OverBudget,
    PublishResult,
    ReadResult,
    Staged,
    StoreRefused,
)
from loopstream.sidecar.brokers.redis_replica import Replica, cursor_of
from loopstream.sidecar.brokers.redis_scripts import PUBLISH, Keys
from loopstream.sidecar.ratelimit import Charge

POOL_SIZE = 64        # Redis connections a worker's requests share (its held streams need none)
POOL_WAIT = 5.0       # seconds a request waits for one of them before its 503
PUBLISH_TIMEOUT = 5.0     # the publisher's socket timeout
FOLLOWER_TIMEOUT = 15.0   # the follower's: longer than one XREAD BLOCK


def options(url: str, **ours: Any) -> dict:
    """Connection options: ``ours``, then the URL's, then what this module reads replies by: RESP2
    (RESP3 nests an XREAD reply differently in older redis-py) decoded as text, bytes that are not
    UTF-8 (Redis is shared) as U+FFFD, so such an entry is rejected as not an event instead of
    stopping the follower."""
    return {**ours, **parse_url(url), "protocol": 2, "decode_responses": True, "encoding_errors": "replace"}


def connect(url: str, timeout: float = 5.0) -> redis.Redis:
    """A client whose requests share POOL_SIZE connections and wait (at most POOL_WAIT s) for a free one:
    redis-py's own pool refuses the 101st concurrent command ("Too many connections"), which a
    reconnect storm of a few hundred streams, each asking Redis where the stream is, reached at once."""
    pool = redis.BlockingConnectionPool(**options(
        url, socket_connect_timeout=2, socket_timeout=timeout, health_check_interval=30),
        max_connections=POOL_SIZE, timeout=POOL_WAIT)
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


class Lane:
    """A connection of its own for one kind of call, as a redis-py client (``single_connection_client``):
    no pool checkout per call (with the pool's readiness probe, that doubled a publish's client-side
    cost), and one call at a time (the client's lock). Never retried: a script whose reply was lost
    may have run, and running a publish twice would store it twice; on an error redis-py drops the
    connection and the next call opens a new one, so a reply half read never answers the next command.
    The client is made on first use: making one connects, and a broker connects to nothing until started."""

    def __init__(self, url: str, timeout: float):
        self._options = options(url, socket_connect_timeout=2, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            pool = redis.ConnectionPool(**self._options)
            client = redis.Redis(connection_pool=pool, single_connection_client=True)
            client.auto_close_connection_pool = True
            self._client = client
        return self._client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except RedisError:
                pass


def check(url: str) -> str:
    """Fail early with a message when Redis at ``url`` cannot be used; its version otherwise."""
    try:
        info = connect(url, timeout=2).info("server")
    except (RedisError, ValueError, OSError) as e:
        raise BackendDown(f"cannot reach Redis at {url}: {e}") from e
    version = info.get("redis_version", "0")
    if tuple(int(x) for x in version.split(".")[:2]) < (5, 0):
        raise BackendDown(f"Redis at {url} is {version}; the backend needs streams (Redis 5 or later)")
    return version


class RedisBroker(Replica):
    """The Redis backend's broker: this worker's replica for reading, and publishing to the shared stream."""

    def __init__(self, url: str, capacity: int = 100, clock: Callable[[], float] = time.time,
                 prefix: str = "loop:", keep_finished: int = 50, retry_s: float = 0.5,
                 on_events: Callable[[list[ev.Event], Cursor, Cursor], None] | None = None,
                 on_down: Callable[[], None] | None = None, on_resync: Callable[[], None] | None = None):
        """Connect (nothing is read yet: ``start()`` loads the state and follows the stream).
        ``on_events(events, before, after)`` is told of the events the follower takes in,
        ``on_down()`` when Redis goes away, ``on_resync()`` when the state was loaded again."""
        client = connect(url)
        super().__init__(client, Lane(url, FOLLOWER_TIMEOUT), Keys(prefix), capacity, clock=clock,
                         keep_finished=keep_finished, retry_s=retry_s, on_events=on_events, on_down=on_down,
                         on_resync=on_resync)
        self.url = url
        self._publisher = Lane(url, PUBLISH_TIMEOUT)
        self._publish = client.register_script(PUBLISH)
        self._staged: tuple[list[ev.Draft], Staged] | None = None   # see stage()
        self.own = 0                              # batches put in the replica by publish(), not the follower

    def claim_reap(self, run: str, last_event_id: str | None) -> bool:
        """One reap per silence, whichever worker sees it first: a SET NX key."""
        try:
            return bool(self.client.set(self.keys.reaped(run, last_event_id), 1, nx=True, ex=86400))
        except RedisError:
            return False

    def close(self) -> None:
        self._publisher.close()
        super().close()

    # -- writing -------------------------------------------------------------------
    def stage(self, drafts: Iterable[ev.Draft]) -> Staged:
        """As the memory broker's (the hub stages every batch first: a reducer bug raises before
        anything is stored); the staged batch is kept for the ``publish`` of the same drafts."""
        drafts = drafts if isinstance(drafts, list) else list(drafts)
        staged = super().stage(drafts)
        self._staged = (drafts, staged)
        return staged

    def publish(self, drafts: Iterable[ev.Draft], charges: Sequence[Charge] = ()) -> PublishResult:
        """Take ``charges`` from their budgets and append the batch to the shared stream, in one
        script: OverBudget (nothing charged, nothing stored) when a budget is spent. The payloads are
        the staged events' JSON (serialised once). When Redis numbered the batch right after this
        replica's head (no other worker's events came between), the staged events and snapshots are
        exactly what the follower would fold: they go in here, and the follower skips them when XREAD
        brings them back. Otherwise the events reach this replica, and the subscribers, through the follower."""
        kept, self._staged = self._staged, None
        staged = kept[1] if kept is not None and kept[0] is drafts else super().stage(list(drafts))
        charged = [c for c in charges if c[1].enabled]
        keys = [self.keys.epoch, self.keys.seq, self.keys.stream, self.keys.runs,
                *(self.keys.bucket(key) for key, _, _ in charged)]
        args: list = [self.capacity, self.prefix]
        for _, budget, cost in charged:
            args += (budget.rate, budget.burst, cost)
        for e in staged.events:
            args += (e.run, "{" + e.json[e.json.index(",") + 1:])   # '{"id":"..",' dropped: Redis gives the id
        try:
            refused, wait, why, *ids = self._publish(keys, args, client=self._publisher.client)
        except ResponseError as e:
            raise StoreRefused(f"Redis: {e}") from e
        except RedisError as e:
            raise BackendDown(f"Redis: {e}") from e
        if refused:
            raise OverBudget(float(wait), charged[refused - 1][0])
        if why:
            self._renewed(why, ids[0])
        return PublishResult(self._published(staged, ids))

    def _published(self, staged: Staged, ids: list[str]) -> list[ev.Event]:
        """The events as Redis numbered them; into the replica at once when numbered right after its head."""
        ts = staged.events[0].ts
        out = [ev.Event(*cursor_of(i), e.type, e.run, ts, e.data) for i, e in zip(ids, staged.events, strict=False)]
        self._known_seq = max(self._known_seq, out[-1].seq)
        with self._writing:                       # the follower may be taking the same batch in
            fits = self.healthy and not self._stale and staged.events[0].seq == self.seq + 1 \
                and staged.events[0].epoch == self.epoch and [e.id for e in staged.events] == ids
            if fits:
                before = self.head
                self._put_in(staged)
                self.own += 1
        if fits:
            self._took_in(staged.events, before, set(staged.finished))
        return out

    # -- reading -------------------------------------------------------------------
    def read(self, cursor: Cursor | None, flt: Filter | None = None, limit: int = 1000) -> ReadResult:
        if cursor is not None and cursor[0] == self.epoch and cursor[1] > self.seq and self._exists(cursor[1]):
            return ReadResult([], cursor)         # another worker is ahead of this one's follower: wait
        return super().read(cursor, flt, limit)

    def snapshot(self, run: str) -> dict | None:
        snap = self.runs.get(run)
        if snap is None:
            try:
                snap = self._load_runs([run], (self.epoch, self.seq)).get(run)
            except RedisError as e:
                raise BackendDown(f"Redis: {e}") from e
        return snap

    def summaries(self) -> dict[str, dict]:
        rows = super().summaries()
        try:
            kept: dict[str, str] = self.client.hgetall(self.keys.summary)  # type: ignore[assignment]
        except RedisError as e:
            raise BackendDown(f"Redis: {e}") from e
        for run, text in kept.items():
            if run not in rows:
                summary = stored.load_or_none(text)
                if stored.sound_summary(summary, run):
                    rows[run] = state.summarize(summary)
                else:
                    self._report_once(f"{self.keys.summary} {run}", "is not a sound run summary; skipped")
        return rows

    def transcript(self, run: str) -> tuple[list[dict], bool]:
        key = self.keys.transcript(run)
        try:
            lines: list[str] = self.client.lrange(key, 0, -1)  # type: ignore[assignment]
        except ResponseError as e:     # a key of another type: the run's next event moves it aside
            self._report_once(key, f"cannot be read ({e}); skipped")
            return [], False
        except RedisError as e:
            raise BackendDown(f"Redis: {e}") from e
        events = [e for e in map(ev.parse_stored, lines) if e is not None]
        if len(events) < len(lines):
            self._log_damaged(key, len(lines) - len(events))
        return events, len(events) == len(lines)


if __name__ == "__main__":  # `python -m loopstream.sidecar.brokers.redis URL`: the check `loop serve` makes
    import sys

    try:
        print(check(sys.argv[1]))
    except BackendDown as e:
        sys.exit(str(e))
