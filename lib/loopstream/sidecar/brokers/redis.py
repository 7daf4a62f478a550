"""The Redis backend: one event stream shared by every worker on every host.

Redis holds the truth:

- ``<prefix>stream``: a Redis stream of the last N events (``XADD MAXLEN = N``),
  whose entry ids are the event ids ``EPOCH-SEQ``: the epoch is when the
  stream began, the sequence counts from 1 without gaps. So ids are unique and
  totally ordered across workers and hosts, and a cursor from any worker is a
  cursor on every worker.
- ``<prefix>epoch``, ``<prefix>seq``: the id counter. Made sound where it is used (HEAD, below):
  text, a huge number or a stream whose last id is past it (a foreign ``XADD``) gets a fresh epoch
  above every id issued; a key of another type under the prefix is renamed aside. Checkpoints and
  summaries are read through stored.py and skipped (reported once) when they are not sound.
- ``<prefix>transcript:<run>``: every event of a run (the history).
- ``<prefix>runs``: the set of run names; ``<prefix>checkpoint`` a run's
  snapshot as of some event (``<prefix>checkpoint_count``: how many events it
  has folded; ``<prefix>summary``: its run-list summary). A snapshot is its
  checkpoint plus the transcript after it.
- ``<prefix>bucket:<key>``: a rate-limit token bucket (see RedisBuckets).

A publish is one Lua script: it numbers the events and appends each to the
stream and to its run's transcript, atomically, so a 201 means the event is in
both. Publishing computes no snapshot, so emitters on different workers never
conflict.

Each worker keeps a local replica of the stream (the MemoryBroker it extends:
the last-N ring and the run snapshots, folded by the same reducer), fed by one
``XREAD BLOCK`` follower. Subscribers read the replica, exactly as with the
memory backend, so ten thousand streams cost one Redis connection, not ten
thousand. A gap in the sequence (the follower missed events) or a new epoch
(Redis lost its data) makes the follower load everything again.

When Redis cannot be reached, publishing raises BackendDown (the server
answers 503 with Retry-After), open streams are ended so clients reconnect,
and the follower keeps trying; when Redis is back it loads the state again and
everything carries on.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError, RedisError, ResponseError

from loopstream.core import events as ev
from loopstream.core import sse, state
from loopstream.sidecar import stored
from loopstream.sidecar.brokers.memory import (
    BackendDown,
    Cursor,
    Filter,
    MemoryBroker,
    PublishResult,
    ReadResult,
    Staged,
    StoreRefused,
)
from loopstream.sidecar.history import fold
from loopstream.sidecar.ratelimit import Budget, Charge

log = logging.getLogger(__name__)

CHECKPOINT_EVERY = 200        # events of a run between two checkpoints of its snapshot

# The id counter, made sound before it is used: ``loop:epoch`` and ``loop:seq`` must be decimal
# numbers below stored.MAX_EPOCH / MAX_SEQ, and the next id must be above the stream's last one (a
# foreign ``XADD loop:stream * ...`` puts one there). Otherwise a fresh epoch is chosen above the old
# one, above the stream's last id and at least Redis's clock in ms, and the sequence starts again:
# every new id stays above every id already issued, and readable. A key of the wrong type under the
# prefix is renamed aside (``<key>.damaged-<ms>``). KEYS: epoch, seq, stream.
HEAD = """
local MAX = 1e15
local moved = {}
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function aside(key)
  local to = key .. '.damaged-' .. string.format('%.0f', now_ms())
  redis.call('RENAME', key, to)
  moved[#moved + 1] = key .. ' (of another type) to ' .. to
end
local function told(why)
  if #moved == 0 then return why end
  return why .. (why == '' and '' or '; ') .. 'moved ' .. table.concat(moved, ', ')
end
-- an error reply from pcall: WRONGTYPE moves the key aside (true); any other (OOM, NOPERM) is raised
local function wrong_type(key, r)
  if type(r) ~= 'table' or not r.err then return false end
  if not string.find(r.err, 'WRONGTYPE', 1, true) then error(r) end
  aside(key)
  return true
end
local function get(key)
  local v = redis.pcall('GET', key)
  if wrong_type(key, v) then return false end
  return v
end
local function sound(text, least)
  return text and string.match(text, '^%d+$') and #text <= 15 and tonumber(text) >= least
end
local function top()
  local kind = redis.call('TYPE', KEYS[3])
  if type(kind) == 'table' then kind = kind.ok end
  if kind == 'none' then return 0, 0 end
  if kind ~= 'stream' then aside(KEYS[3]) return 0, 0 end
  local info = redis.call('XINFO', 'STREAM', KEYS[3])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local e, s = string.match(info[i + 1], '^(%d+)-(%d+)$')
      if #e > 15 or tonumber(e) >= MAX - 1 then aside(KEYS[3]) return 0, 0 end
      return tonumber(e), tonumber(s)
    end
  end
  return 0, 0
end
local function renew(old)
  local e = now_ms()
  if old and old + 1 > e then e = old + 1 end
  local te = top()
  if te + 1 > e then e = te + 1 end
  local text = string.format('%.0f', e)
  redis.call('SET', KEYS[1], text)
  redis.call('SET', KEYS[2], 0)
  return text
end
local function head()
  local epoch, seq = get(KEYS[1]), get(KEYS[2])
  if sound(epoch, 1) and sound(seq, 0) then return epoch, '' end
  if not epoch and not seq then return renew(nil), '' end
  local why = KEYS[1] .. ' and ' .. KEYS[2] .. ' (' .. string.sub(tostring(epoch), 1, 30) .. ', '
    .. string.sub(tostring(seq), 1, 30) .. ') were not a sound id counter; a new epoch was chosen'
  return renew(sound(epoch, 1) and tonumber(epoch) or nil), why
end
"""

# Numbers a batch and appends each event to the stream and to its run's transcript. The first XADD
# fails only when the stream's last id is ahead of the counter (foreign data): the counter is then
# renewed and the batch numbered in the new epoch. Returns {why the counter was renewed or '', ids...}.
PUBLISH = HEAD + """
local epoch, why = head()
local ids = {}
local function push(key, value)
  local r = redis.pcall('RPUSH', key, value)
  if wrong_type(key, r) then redis.call('RPUSH', key, value) end
end
for i = 3, #ARGV, 2 do
  local run, payload = ARGV[i], ARGV[i + 1]
  local id = epoch .. '-' .. redis.call('INCR', KEYS[2])
  local added = redis.pcall('XADD', KEYS[3], 'MAXLEN', ARGV[1], id, 'e', payload)
  if type(added) == 'table' and added.err then
    if i > 3 then return redis.error_reply(added.err) end
    why = KEYS[3] .. ' held an id past the counter (' .. added.err .. '); a new epoch was chosen'
    epoch = renew(tonumber(epoch))
    id = epoch .. '-' .. redis.call('INCR', KEYS[2])
    redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[1], id, 'e', payload)
  end
  push(ARGV[2] .. 'transcript:' .. run, '{"id":"' .. id .. '",' .. string.sub(payload, 2))
  local r = redis.pcall('SADD', KEYS[4], run)
  if wrong_type(KEYS[4], r) then redis.call('SADD', KEYS[4], run) end
  ids[#ids + 1] = id
end
return {told(why), unpack(ids)}
"""

# At a (re)load: the counter made sound, the next id above the stream's last one, and the run set
# and hashes of their types (KEYS[4..]: runs, checkpoint, checkpoint_count, summary). Returns {epoch, why}.
ENSURE_EPOCH = HEAD + """
for i, want in ipairs({'set', 'hash', 'hash', 'hash'}) do
  local kind = redis.call('TYPE', KEYS[i + 3])
  if type(kind) == 'table' then kind = kind.ok end
  if kind ~= 'none' and kind ~= want then aside(KEYS[i + 3]) end
end
local epoch, why = head()
local te, ts = top()
local seq = tonumber(redis.call('GET', KEYS[2]))
if te > tonumber(epoch) or (te == tonumber(epoch) and ts > seq) then
  why = KEYS[3] .. ' held an id past the counter (' .. string.format('%.0f-%.0f', te, ts)
    .. '); a new epoch was chosen'
  epoch = renew(tonumber(epoch))
end
return {epoch, told(why)}
"""

# Keep the newest checkpoint whichever worker writes it (every worker folds the same events).
CHECKPOINT = """
local have = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if have >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return 1
"""

# Token buckets with bounded debt (the semantics of ratelimit.TokenBuckets.take_all), on
# Redis's clock, so the limits hold across workers and hosts. KEYS: the buckets; ARGV: a rate,
# a burst and a cost per bucket. Charges every bucket its cost or none; returns
# {seconds to wait as text, the 1-based index of the bucket that refused (0: none)}.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local have, worst, worst_i = {}, 0, 0
for i, key in ipairs(KEYS) do
  local rate, burst, cost = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  local b = redis.call('HMGET', key, 'tokens', 'stamp')
  local tokens = tonumber(b[1]) or burst
  local stamp = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
  have[i] = tokens
  local need = math.min(cost, burst)
  if tokens + 1e-9 < need and (need - tokens) / rate > worst then
    worst, worst_i = (need - tokens) / rate, i
  end
end
if worst_i == 0 then
  for i, key in ipairs(KEYS) do
    local rate, burst, cost = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
    local left = math.max(-burst, have[i] - cost)
    redis.call('HSET', key, 'tokens', tostring(left), 'stamp', tostring(now))
    redis.call('PEXPIRE', key, math.ceil((burst - left) / rate * 1000) + 1000)
  end
end
return {tostring(worst), worst_i}
"""


POOL_SIZE = 64        # Redis connections a worker's requests share (its held streams need none)
POOL_WAIT = 5.0       # seconds a request waits for one of them before its 503


def connect(url: str, timeout: float = 5.0) -> redis.Redis:
    """A client whose requests share POOL_SIZE connections and wait (at most POOL_WAIT s) for a free one:
    redis-py's own pool refuses the 101st concurrent command ("Too many connections"), which a
    reconnect storm of a few hundred streams, each asking Redis where the stream is, reached at once."""
    # encoding_errors="replace": bytes that are not UTF-8 (Redis is shared) read as U+FFFD, and the
    # entry is then rejected as not an event instead of stopping the follower.
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=POOL_WAIT, decode_responses=True, encoding_errors="replace",
        socket_connect_timeout=2, socket_timeout=timeout, health_check_interval=30)
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


class Lane:
    """One connection of ``client``'s pool kept for one kind of call, sent and read by hand: a call
    costs about a third of ``client.execute_command``'s (no pool checkout and readiness probe, no
    retry wrapper, no reply callback; measured ~45 µs against ~150 µs a round trip on this project's
    machine), and the replies are Redis's own (RESP3: an XREAD reply is a dict). Never retried: a
    script whose reply was lost may have run, and running a publish twice would store it twice.
    One call at a time (a lock); on any error redis-py drops the connection and the next call
    opens a new one, so a reply half read never answers the next command."""

    def __init__(self, client: redis.Redis):
        self.conn = client.connection_pool.make_connection()   # connects on first use
        self.lock = threading.Lock()

    def call(self, *args: Any) -> Any:
        with self.lock:
            self.conn.send_command(*args)
            return self.conn.read_response()

    def script(self, script: Script, keys: list[str], args: list) -> Any:
        """EVALSHA, loading the script first when Redis does not know it (restarted, or flushed)."""
        try:
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.call("SCRIPT", "LOAD", script.script)
            return self.call("EVALSHA", script.sha, len(keys), *keys, *args)

    def close(self) -> None:
        self.conn.disconnect()


def stream_entries(reply: Any) -> list:
    """The ``[id, fields]`` entries of an XREAD reply (RESP3: {key: entries}; RESP2: [[key, entries]])."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (s[1] for s in reply)
    return [entry for entries in streams for entry in entries]


def check(url: str) -> str:
    """Fail early with a message when Redis at ``url`` cannot be used; its version otherwise."""
    try:
        client = connect(url, timeout=2)
        info = client.info("server")
    except (RedisError, ValueError, OSError) as e:
        raise BackendDown(f"cannot reach Redis at {url}: {e}") from e
    version = info.get("redis_version", "0")
    if tuple(int(x) for x in version.split(".")[:2]) < (5, 0):
        raise BackendDown(f"Redis at {url} is {version}; the backend needs streams (Redis 5 or later)")
    return version


class RedisBuckets:
    """TokenBuckets' interface, kept in Redis: one limit for all workers."""

    def __init__(self, client: redis.Redis, prefix: str, rate: float, burst: int):
        self.budget = Budget(float(rate), max(1, int(burst)))
        self.prefix = prefix
        self._take = client.register_script(TAKE)
        self._lane = Lane(client)

    def take(self, key: str, cost: int = 1) -> float:
        return self.take_all([(key, self.budget, cost)])[0]

    def take_all(self, charges: list[Charge]) -> tuple[float, str | None]:
        charges = [c for c in charges if c[1].enabled]
        if not charges:
            return 0.0, None
        args: list = []
        for _, b, cost in charges:
            args += (b.rate, b.burst, cost)
        try:
            wait, index = self._lane.script(self._take, [f"{self.prefix}bucket:{k}" for k, _, _ in charges], args)
        except RedisError as e:
            raise BackendDown(f"Redis: {e}") from e
        return (float(wait), charges[int(index) - 1][0]) if int(index) else (0.0, None)


UNREADABLE = "loop.unreadable"   # stands in for a stream entry that is not an event: never folded or read


def _cursor(entry_id: object) -> Cursor:
    """An id that Redis or our own checks already vouch for, as a cursor."""
    key = ev.parse_id(entry_id)
    assert key is not None, f"not an event id: {entry_id!r}"
    return key


def _event(entry_id: str, fields: object) -> ev.Event:
    """A stream entry as an Event. Entries are written by our Lua script, but Redis is shared and
    may hold what an older version or someone else wrote: an entry that is not a sound event is
    logged and replaced by a stand-in with the same id, so the buffer keeps no gap; the stand-in is
    never folded, never returned by ``read`` and its frame is an SSE comment: no client sees it."""
    epoch, seq = _cursor(entry_id)
    if isinstance(fields, list):   # a raw reply: [field, value, ...]
        fields = dict(zip(fields[::2], fields[1::2], strict=False))
    payload = fields.get("e") if isinstance(fields, dict) else None
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


class RedisBroker(MemoryBroker):
    fans_out_on_publish = False

    def __init__(self, url: str, capacity: int = 100, clock: Callable[[], float] = time.time,
                 prefix: str = "loop:", keep_finished: int = 50, retry_s: float = 0.5,
                 on_events: Callable[[list[ev.Event], Cursor, Cursor], None] | None = None,
                 on_down: Callable[[], None] | None = None, on_resync: Callable[[], None] | None = None):
        """Connect (nothing is read yet: ``start()`` loads the state and follows the stream).
        ``on_events(events, before, after)`` is told of the events the follower takes in,
        ``on_down()`` when Redis goes away, ``on_resync()`` when the state was loaded again."""
        super().__init__(capacity, epoch=0, clock=clock, keep_finished=keep_finished)
        self.url = url
        self.prefix = prefix
        self.retry_s = retry_s
        names = ("epoch", "seq", "stream", "runs", "checkpoint", "checkpoint_count", "summary")
        self.keys = {k: prefix + k for k in names}
        self.client = connect(url)
        self._follower_client = connect(url, timeout=15)
        self._publish = self.client.register_script(PUBLISH)
        self._ensure_epoch = self.client.register_script(ENSURE_EPOCH)
        self._checkpoint = self._follower_client.register_script(CHECKPOINT)
        self._publish_lane = Lane(self.client)            # the per-event round trips: see Lane
        self._follow_lane = Lane(self._follower_client)
        self.on_events = on_events
        self.on_down = on_down
        self.on_resync = on_resync
        self.healthy = False                      # Redis answers and this replica is loaded
        self._stale = True                        # the replica must be loaded (again)
        self.resyncs = 0
        self._known_seq = 0                       # the highest sequence number seen in Redis
        self._checkpointed: dict[str, int] = {}   # run -> event_count of its last checkpoint
        self._closed = False
        self._advanced = threading.Condition()
        self._thread: threading.Thread | None = None
        self._staged: tuple[list[ev.Draft], Staged] | None = None   # see stage()
        self.own = 0                              # batches put in the replica by publish(), not the follower
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

    def claim_reap(self, run: str, last_event_id: str | None) -> bool:
        """One reap per silence, whichever worker sees it first: a SET NX key."""
        try:
            return bool(self.client.set(f"{self.prefix}reaped:{run}:{last_event_id}", 1, nx=True, ex=86400))
        except RedisError:
            return False

    # -- writing -------------------------------------------------------------------
    def stage(self, drafts: Iterable[ev.Draft]) -> Staged:
        """As the memory broker's (the hub stages every batch first: a reducer bug raises before
        anything is stored); the staged batch is kept for the ``publish`` of the same drafts."""
        drafts = drafts if isinstance(drafts, list) else list(drafts)
        staged = super().stage(drafts)
        self._staged = (drafts, staged)
        return staged

    def publish(self, drafts: Iterable[ev.Draft]) -> PublishResult:
        """Append to the shared stream. The payloads are the staged events' JSON (serialised once).
        When Redis numbered the batch right after this replica's head (no other worker's events
        came between), the staged events and snapshots are exactly what the follower would fold:
        they go in here, and the follower skips them when XREAD brings them back. Otherwise the
        events reach this replica, and the subscribers, through the follower."""
        kept, self._staged = self._staged, None
        staged = kept[1] if kept is not None and kept[0] is drafts else super().stage(list(drafts))
        args: list = [self.capacity, self.prefix]
        for e in staged.events:
            args += (e.run, "{" + e.json[e.json.index(",") + 1:])   # '{"id":"..",' dropped: Redis gives the id
        keys = [self.keys["epoch"], self.keys["seq"], self.keys["stream"], self.keys["runs"]]
        try:
            why, *ids = self._publish_lane.script(self._publish, keys, args)
        except ResponseError as e:
            raise StoreRefused(f"Redis: {e}") from e
        except RedisError as e:
            raise BackendDown(f"Redis: {e}") from e
        if why:
            self._renewed(why, ids[0])
        ts = staged.events[0].ts
        out = [ev.Event(*_cursor(i), e.type, e.run, ts, e.data) for i, e in zip(ids, staged.events, strict=False)]
        self._known_seq = max(self._known_seq, out[-1].seq)
        if self.healthy and not self._stale and staged.events[0].seq == self.seq + 1 \
                and staged.events[0].epoch == self.epoch and [e.id for e in staged.events] == ids:
            self._take_own(staged)
        return PublishResult(out)

    def _take_own(self, staged: Staged) -> None:
        """Put a batch this worker published (numbered right after the head) into the replica."""
        before = self.head
        self._put_in(staged)
        self.own += 1
        self._took_in(staged.events, before, set(staged.finished))

    # -- reading -------------------------------------------------------------------
    def read(self, cursor: Cursor | None, flt: Filter | None = None, limit: int = 1000) -> ReadResult:
        if cursor is not None and cursor[0] == self.epoch and cursor[1] > self.seq and self._exists(cursor[1]):
            return ReadResult([], cursor)         # another worker is ahead of this one's follower: wait
        res = super().read(cursor, flt, limit)
        if any(e.type == UNREADABLE for e in res.events):
            res.events = [e for e in res.events if e.type != UNREADABLE]
        return res

    def _renewed(self, why: str, first_id: str) -> None:
        log.warning("loop: redis: %s; ids go on from %s, above every id issued", why, first_id)

    def _stored_seq(self) -> int:
        """Redis's sequence counter now; 0 when it is not sound (the next publish or load renews it)."""
        return stored.sound_seq(self.client.get(self.keys["seq"])) or 0

    def _exists(self, seq: int) -> bool:
        if seq <= self._known_seq:
            return True
        try:
            self._known_seq = max(self._known_seq, self._stored_seq())
        except RedisError:
            return False
        return seq <= self._known_seq

    def catch_up(self, timeout: float = 2.0) -> None:
        """Wait until this worker's replica holds every event Redis holds now (read your writes,
        and other workers' too): a decision taken on a snapshot then sees them all."""
        try:
            target = self._stored_seq()
        except RedisError as e:
            raise BackendDown(f"Redis: {e}") from e
        with self._advanced:
            if not self._advanced.wait_for(lambda: self.seq >= target or not self.healthy, timeout):
                raise BackendDown("this worker is behind the shared stream")

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
            kept: dict[str, str] = self.client.hgetall(self.keys["summary"])  # type: ignore[assignment]
        except RedisError as e:
            raise BackendDown(f"Redis: {e}") from e
        for run, text in kept.items():
            if run not in rows:
                summary = stored.load_or_none(text)
                if stored.sound_summary(summary, run):
                    rows[run] = state.summarize(summary)
                else:
                    self._report_once(f"{self.keys['summary']} {run}", "is not a sound run summary; skipped")
        return rows

    def _report_once(self, what: str, why: str) -> None:
        """A one-line warning for a damaged key or field, once per worker (it is read again and again)."""
        if what not in self._reported:
            if len(self._reported) < 10_000:
                self._reported.add(what)
            log.warning("loop: redis: %s %s", what, why)

    def transcript(self, run: str) -> tuple[list[dict], bool]:
        try:
            lines = self.client.lrange(f"{self.prefix}transcript:{run}", 0, -1)
        except ResponseError as e:     # a key of another type: the run's next event moves it aside
            self._report_once(f"{self.prefix}transcript:{run}", f"cannot be read ({e}); skipped")
            return [], False
        except RedisError as e:
            raise BackendDown(f"Redis: {e}") from e
        events = [e for e in map(ev.parse_stored, lines) if e is not None]
        if len(events) < len(lines):
            log.warning("loop: redis: %stranscript:%s: %d damaged entries skipped", self.prefix, run,
                        len(lines) - len(events))
        return events, len(events) == len(lines)

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

    def close(self) -> None:
        self._closed = True
        for c in (self.client, self._follower_client, self._publish_lane, self._follow_lane):
            try:
                c.close()
            except RedisError:
                pass

    # -- following -----------------------------------------------------------------
    def _follow(self) -> None:
        while not self._closed:
            try:
                if self._stale or not self.healthy:
                    self._resync()
                    if self.on_resync:
                        self.on_resync()
                entries = stream_entries(self._follow_lane.call(
                    "XREAD", "COUNT", 1000, "BLOCK", 5000, "STREAMS", self.keys["stream"], f"{self.epoch}-{self.seq}"))
                entries = [(i, f) for i, f in entries if self._unseen(i)]
                if entries:
                    self._take_in([_event(i, f) for i, f in entries])
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
        if events[0].epoch != self.epoch or events[0].seq != self.seq + 1:
            self._stale = True
            return
        before = self.head
        self._took_in(events, before, set(self.append(events, forget=False)))

    def _unseen(self, entry_id: object) -> bool:
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
        for run in runs:
            snap = self.runs.get(run)
            if snap is None:
                continue
            count = snap["event_count"]
            if run in finished or count - self._checkpointed.get(run, 0) >= CHECKPOINT_EVERY:
                self._checkpoint(keys=[self.keys["checkpoint"], self.keys["checkpoint_count"], self.keys["summary"]],
                                 args=[run, count, ev.dumps(snap), ev.dumps(state.summarize(snap))])
                self._checkpointed[run] = count

    def _resync(self) -> None:
        """Load the stream, the counter and every run's snapshot as of one moment."""
        epoch_text, why = self._ensure_epoch(keys=[self.keys[k] for k in (
            "epoch", "seq", "stream", "runs", "checkpoint", "checkpoint_count", "summary")])
        if why:
            self._renewed(why, f"{epoch_text}-1")
        with self.client.pipeline(transaction=True) as pipe:
            p: Any = pipe
            p.get(self.keys["epoch"]).get(self.keys["seq"]).xrange(self.keys["stream"]).smembers(self.keys["runs"])
            now_epoch, seq_text, entries, names = p.execute()
        epoch = stored.sound_epoch(now_epoch) or int(epoch_text)
        events = [_event(i, f) for i, f in entries]
        events = [e for e in events if e.epoch == epoch]
        # Only a run of consecutive ids can be read by cursor: keep the newest such run.
        start = len(events) - 1
        while start > 0 and events[start - 1].seq == events[start].seq - 1:
            start -= 1
        events = events[max(start, 0):]
        seq = events[-1].seq if events else stored.sound_seq(seq_text) or 0
        runs = self._load_runs(self._worth_loading(sorted(names)), (epoch, seq))
        # Only the follower (or start(), before it starts the follower) writes the replica: no lock.
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
            p.hmget(self.keys["summary"], names)
            for name in names:
                p.llen(f"{self.prefix}transcript:{name}")
            summaries, *lengths = p.execute(raise_on_error=False)
        lengths = [self._list_length(name, n) for name, n in zip(names, lengths, strict=False)]
        load, finished = [], []
        for name, text, length in zip(names, summaries, lengths, strict=False):
            summary = stored.load_or_none(text)
            if not stored.sound_summary(summary, name) or "event_count" not in summary:
                if text is not None:
                    self._report_once(f"{self.keys['summary']} {name}", "is not a sound run summary; its "
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
        self._report_once(f"{self.prefix}transcript:{name}", f"cannot be read ({reply}); skipped")
        return 0

    def _load_runs(self, names: list[str], upto: Cursor) -> dict[str, dict]:
        """Each run's snapshot as of ``upto``: its checkpoint plus the transcript after it."""
        if not names:
            return {}
        bases = []
        for name, text in zip(names, self.client.hmget(self.keys["checkpoint"], names), strict=False):
            snap = stored.load_or_none(text)
            if not stored.sound_snapshot(snap, name):
                if text is not None:
                    self._report_once(f"{self.keys['checkpoint']} {name}",
                                      "is not a sound snapshot; skipped (the transcript is folded from its start)")
                snap = None   # none, or not one we wrote: fold the transcript from its start
            # A checkpoint newer than ``upto`` (written meanwhile) cannot be wound back: fold from the start.
            if snap and _cursor(snap["last_event_id"] or "0-0") > upto:
                snap = None
            bases.append(snap)
        out: dict[str, dict] = {}
        with self.client.pipeline(transaction=False) as p:
            for name, snap in zip(names, bases, strict=False):
                p.lrange(f"{self.prefix}transcript:{name}", snap["event_count"] if snap else 0, -1)
            tails = [t if isinstance(t, list) else [] for t in p.execute(raise_on_error=False)]
        for name, snap, tail in zip(names, bases, tails, strict=False):
            snap = self._fold_tail(name, snap, tail, upto)
            if snap is not None:
                out[name] = snap
        return out

    def _fold_tail(self, name: str, snap: dict | None, tail: list[str], upto: Cursor) -> dict | None:
        """Fold a transcript's entries after ``snap`` up to ``upto``; damaged ones are logged and
        skipped (their places still count, so entries already folded are recognised by id)."""
        done = _cursor(snap["last_event_id"] or "0-0") if snap else (0, 0)
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
            log.warning("loop: redis: %stranscript:%s: %d damaged entries skipped", self.prefix, name, skipped)
        return fold(events, snap, where=f"{self.prefix}transcript:{name}")


if __name__ == "__main__":  # `python -m loopstream.sidecar.brokers.redis URL`: the check `loop serve` makes
    import sys

    try:
        print(check(sys.argv[1]))
    except BackendDown as e:
        sys.exit(str(e))
