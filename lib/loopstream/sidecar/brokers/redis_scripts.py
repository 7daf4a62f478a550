"""What the Redis backend keeps under its prefix, and the Lua scripts that write it.

The keys (``Keys``, below, names them under the prefix, ``loop:`` by default):

- ``stream``: a Redis stream of the last N events (``XADD MAXLEN = N``), whose entry ids are the
  event ids ``EPOCH-SEQ``: the epoch is when the stream began, the sequence counts from 1 without
  gaps. So ids are unique and totally ordered across workers and hosts, and a cursor from any worker
  is a cursor on every worker. An entry's one field ``e`` is the event's JSON without its id.
- ``epoch``, ``seq``: the id counter. Made sound where it is used (HEAD, below): text, a huge number
  or a stream whose last id is past it (a foreign ``XADD``) gets a fresh epoch above every id issued;
  a key of another type under the prefix is renamed aside.
- ``transcript:<run>``: every event of a run (the history), a list of the events' JSON.
- ``runs``: the set of run names; ``checkpoint`` a run's snapshot as of some event
  (``checkpoint_count``: how many events it has folded; ``summary``: its run-list summary), hashes
  by run name. A snapshot is its checkpoint plus the transcript after it.
- ``bucket:<key>``: a rate-limit token bucket, a hash of ``tokens`` and ``stamp``.
- ``reaped:<run>:<id>``: one worker's claim to reap a silent run; ``metrics:...``: fleet.py's.

Every write of an event goes through PUBLISH: the rate limit, the numbering and the appends are one
script, so a publish is one round trip and a 201 means the event is in the stream and its transcript.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """The names of the backend's keys under ``prefix``."""

    prefix: str

    @property
    def epoch(self) -> str:
        return self.prefix + "epoch"

    @property
    def seq(self) -> str:
        return self.prefix + "seq"

    @property
    def stream(self) -> str:
        return self.prefix + "stream"

    @property
    def runs(self) -> str:
        return self.prefix + "runs"

    @property
    def checkpoint(self) -> str:
        return self.prefix + "checkpoint"

    @property
    def checkpoint_count(self) -> str:
        return self.prefix + "checkpoint_count"

    @property
    def summary(self) -> str:
        return self.prefix + "summary"

    def transcript(self, run: str) -> str:
        return f"{self.prefix}transcript:{run}"

    def bucket(self, key: str) -> str:
        return f"{self.prefix}bucket:{key}"

    def reaped(self, run: str, last_event_id: str | None) -> str:
        return f"{self.prefix}reaped:{run}:{last_event_id}"


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

# Token buckets with bounded debt (the semantics of ratelimit.TokenBuckets.take_all), on Redis's
# clock, so the limits hold across workers and hosts. Bucket i is KEYS[4 + i], its rate, burst and
# cost ARGV[3i], ARGV[3i + 1], ARGV[3i + 2] (a bucket of another type is moved aside: a full one).
# Charges every bucket its cost or none; returns the seconds to wait as text and the index of the
# bucket that refused (0: none did, all were charged).
TAKE = """
local function take(n)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local have, worst, worst_i = {}, 0, 0
  for i = 1, n do
    local rate, burst, cost = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
    local b = redis.pcall('HMGET', KEYS[4 + i], 'tokens', 'stamp')
    if wrong_type(KEYS[4 + i], b) then b = {} end
    local tokens = tonumber(b[1]) or burst
    local stamp = tonumber(b[2]) or now
    tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
    have[i] = tokens
    local need = math.min(cost, burst)
    if tokens + 1e-9 < need and (need - tokens) / rate > worst then
      worst, worst_i = (need - tokens) / rate, i
    end
  end
  if worst_i ~= 0 then return tostring(worst), worst_i end
  for i = 1, n do
    local rate, burst, cost = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
    local left = math.max(-burst, have[i] - cost)
    redis.call('HSET', KEYS[4 + i], 'tokens', tostring(left), 'stamp', tostring(now))
    redis.call('PEXPIRE', KEYS[4 + i], math.ceil((burst - left) / rate * 1000) + 1000)
  end
  return '0', 0
end
"""

# A publish: the batch's rate-limit charges (KEYS[5..], see TAKE), then each event numbered and
# appended to the stream and to its run's transcript, and its run named in the run set. KEYS: epoch,
# seq, stream, runs, buckets...; ARGV: the stream's MAXLEN, the prefix, 3 per bucket, then a run and
# an event's JSON without its id per event. The first XADD fails only when the stream's last id is
# ahead of the counter (foreign data): the counter is then renewed and the batch numbered in the new
# epoch. Returns {the bucket that refused (0: none), seconds to wait, why the counter was renewed or
# '', the ids...}: a refused batch is charged nothing and stores nothing.
PUBLISH = HEAD + TAKE + """
local buckets = #KEYS - 4
if buckets > 0 then
  local wait, refused = take(buckets)
  if refused ~= 0 then return {refused, wait, ''} end
end
local epoch, why = head()
local ids = {}
local function push(key, value)
  local r = redis.pcall('RPUSH', key, value)
  if wrong_type(key, r) then redis.call('RPUSH', key, value) end
end
local first = 3 + 3 * buckets
for i = first, #ARGV, 2 do
  local run, payload = ARGV[i], ARGV[i + 1]
  local id = epoch .. '-' .. redis.call('INCR', KEYS[2])
  local added = redis.pcall('XADD', KEYS[3], 'MAXLEN', ARGV[1], id, 'e', payload)
  if type(added) == 'table' and added.err then
    if i > first then return redis.error_reply(added.err) end
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
return {0, '0', told(why), unpack(ids)}
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
# KEYS: checkpoint, checkpoint_count, summary; ARGV: the run, its event count, snapshot, summary.
CHECKPOINT = """
local have = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '-1')
if have >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return 1
"""
