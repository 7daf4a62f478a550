"""HTTP client: emit through an outbox that never loses or reorders, stream with resume.

No Click here. ``requests`` is imported lazily by callers of this module only
(the CLI imports this module inside its commands).
"""
from __future__ import annotations

import json
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from loopstream.core.exitstatus import ExitStatus
from loopstream.core.formats.common import one_line

MAX_BATCH = 50            # events per POST
MAX_BATCH_BYTES = 48_000  # under the sidecar's 64 KB body limit
MAX_OUTPUT_CHUNK = 4096   # characters of text in one output event
PENDING_OUTPUT = 64_000   # characters of one stream's output kept while it waits; older text is elided
RESERVE = 5               # tokens kept for lifecycle events once the sidecar has rate-limited us


class SidecarError(Exception):
    """The sidecar answered with an error (``status`` is its HTTP status), or could not be reached
    (``status`` is None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def auth_headers(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def describe(e: Exception, method: str, url: str) -> str:
    if isinstance(e, requests.ConnectionError):
        return f"cannot reach the sidecar at {url} ({method}); is `loop serve` running? (set LOOP_SERVER)"
    if isinstance(e, requests.Timeout):
        return f"the sidecar at {url} did not answer in time ({method})"
    return f"{type(e).__name__} while doing a {method} request to {url}: {e}"


def request(method: str, url: str, token: str | None = None, timeout: float = 5.0, **kw):
    """One request; errors become SidecarError with a message a person can act on."""
    try:
        r = requests.request(method, url, headers={**auth_headers(token), **kw.pop("headers", {})},
                             timeout=timeout, **kw)
    except requests.RequestException as e:
        raise SidecarError(describe(e, method, url)) from e
    if r.status_code >= 400:
        try:
            body = r.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and (body.get("message") or body.get("error")):
            message = str(body.get("message") or body.get("error"))
            if body.get("field"):
                message = f"{body['field']}: {message}"
        else:      # not loop's JSON (another server, a proxy's page): one clean line of it
            message = f"{r.reason or 'error'} (not a loop sidecar's answer: {r.text[:80]!r})"
        # a 404 that is not loop's own says nothing about the run: no status a caller would read as "not yet"
        status = None if r.status_code == 404 and not isinstance(body, dict) else r.status_code
        raise SidecarError(one_line(f"{r.status_code} from {url}: {message}", 300), status)
    return r


def request_json(method: str, url: str, token: str | None = None, *keys: str, timeout: float = 5.0,
                 **kw) -> dict:
    """``request``'s answer as a JSON object holding ``keys``; anything else (another server answering
    at that address) is a SidecarError that says so, never a traceback."""
    r = request(method, url, token, timeout=timeout, **kw)
    try:
        body = r.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or any(k not in body for k in keys):
        raise SidecarError(f"{url} did not answer as a loop sidecar (is LOOP_SERVER right?)", r.status_code)
    return body


def healthy(server: str, timeout: float = 0.5) -> bool:
    try:
        return requests.get(server.rstrip("/") + "/healthz", timeout=timeout).ok
    except requests.RequestException:
        return False


@dataclass
class OutboxStatus:
    state: str = "connecting"   # connecting | live | retrying | rate-limited | error | off
    queued: int = 0
    delivered: int = 0
    dropped: int = 0            # refused by the sidecar, or still queued when the outbox closed
    last_error: str | None = None
    elided_bytes: int = 0       # output bytes left out of the stream (the runner's log keeps them)
    refused: dict[str, int] = field(default_factory=dict)   # reason -> events the sidecar refused
    undelivered: int = 0        # events still queued when close() gave up


def _size(value) -> int:
    """Bytes of ``value`` as the outbox posts it (UTF-8 JSON)."""
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "replace"))


def _marker(elided: int) -> str:
    return f"[… {elided} bytes elided …]\n"


class PendingOutput:
    """One stream's output waiting to be sent: a bounded tail, and the bytes cut before it.

    Output is the one kind of event that may be elided: whatever exceeds
    ``PENDING_OUTPUT`` while it waits, or all but the last chunk when the
    sidecar's rate limit is in the way, is counted and replaced by a visible
    marker ("[… N bytes elided …]"), never dropped silently.
    """

    __slots__ = ("run", "story_id", "stream", "text", "elided")

    def __init__(self, run: str | None, story_id: str | None, stream: str, text: str = "", elided: int = 0):
        self.run, self.story_id, self.stream = run, story_id, stream
        self.text, self.elided = "", elided
        self.add(text)

    @property
    def key(self) -> tuple:
        return self.run, self.story_id, self.stream

    def add(self, text: str, cap: int = PENDING_OUTPUT) -> None:
        self.text += text
        if len(self.text) > cap:
            self._cut(len(self.text) - cap)

    def _cut(self, chars: int) -> None:
        self.elided += len(self.text[:chars].encode("utf-8", "replace"))
        self.text = self.text[chars:]

    def collapse(self) -> None:
        """Keep only what fits one event (whole lines where possible); count the rest as elided."""
        room = MAX_OUTPUT_CHUNK - len(_marker(self.elided + len(self.text.encode("utf-8", "replace"))))
        if len(self.text) <= room and not self.elided:
            return
        if len(self.text) > room:
            start = len(self.text) - room
            newline = self.text.find("\n", start - 1, len(self.text) - 1)
            self._cut(newline + 1 if newline >= start - 1 else start)

    def split(self, max_events: int, max_bytes: int) -> PendingOutput | None:
        """Take from the front what fits ``max_events`` events and ``max_bytes`` of JSON; None if nothing."""
        first = MAX_OUTPUT_CHUNK - (len(_marker(self.elided)) if self.elided else 0)
        room = first + (max_events - 1) * MAX_OUTPUT_CHUNK
        budget = max_bytes - 200 * max_events
        while room > 256 and _size(self.text[:room]) > budget:
            room //= 2
        if max_events < 1 or _size(self.text[:room]) > budget:
            return None
        taken = PendingOutput(self.run, self.story_id, self.stream, elided=self.elided)
        taken.text, self.text, self.elided = self.text[:room], self.text[room:], 0
        return taken

    def events(self) -> list[dict]:
        text = (_marker(self.elided) if self.elided else "") + self.text
        data = {"story_id": self.story_id} if self.story_id is not None else {}
        out = []
        for i in range(0, max(1, len(text)), MAX_OUTPUT_CHUNK):
            d: dict[str, Any] = {**data, "stream": self.stream, "text": text[i:i + MAX_OUTPUT_CHUNK]}
            if self.elided and not i:
                d["elided"] = self.elided
            out.append({"type": "output", **({"run": self.run} if self.run else {}), "data": d})
        return out

    def absorb(self, newer: PendingOutput) -> None:
        """Put ``newer`` (the same stream, later text) after this one."""
        self.elided += newer.elided
        self.add(newer.text)


class Pace:
    """A mirror of the sidecar's token bucket for our run, kept once the sidecar has said 429.

    Its rate and burst come from the 429's ``rate`` and ``burst`` fields (from an older sidecar's
    message, "over 10 events/s (burst 20 ...", when it has none). Output then
    goes only as fast as the bucket refills while keeping ``RESERVE`` tokens for lifecycle events,
    so a run's last events never wait out a rate limit that its own output ran into.
    """

    def __init__(self) -> None:
        self.rate = 0.0          # 0: not rate-limited (yet)
        self.burst = 20
        self.tokens = 0.0
        self.stamp = time.monotonic()

    @property
    def active(self) -> bool:
        return self.rate > 0

    def learn(self, body: dict, wait: float, count: int) -> None:
        """A batch of ``count`` events was refused: the bucket lacks ``wait`` seconds of refill."""
        rate, burst = body.get("rate"), body.get("burst")
        if not (_is_number(rate) and _is_number(burst)):
            m = re.search(r"over ([0-9.]+) events/s \(burst (\d+)", str(body.get("message") or ""))
            try:
                rate, burst = (float(m.group(1)), int(m.group(2))) if m else (None, None)
            except ValueError:       # "over 1.2.3 events/s": not a figure
                rate, burst = None, None
        if rate is not None and burst is not None:
            self.rate, self.burst = min(1e6, max(0.1, float(rate))), min(10**6, max(1, int(burst or 1)))
        elif not self.active:
            self.rate = 10.0
        self.tokens, self.stamp = min(count, self.burst) - wait * self.rate, time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def output_room(self, closing: bool) -> int | None:
        """Output events the next batch may carry (None: no limit known)."""
        if not self.active:
            return None
        self._refill()
        return max(1, int(self.tokens - (0 if closing else RESERVE)))

    def delay(self, count: int, lifecycle: bool) -> float:
        """Seconds to wait before posting ``count`` events so that the sidecar takes them."""
        if not self.active:
            return 0.0
        self._refill()
        need = min(count, self.burst) + (0 if lifecycle else RESERVE)
        return max(0.0, (need - self.tokens) / self.rate)

    def spend(self, count: int) -> None:
        if self.active:
            self._refill()
            self.tokens = max(-float(self.burst), self.tokens - count)


def _is_plain_output(event: dict) -> bool:
    data = event.get("data") or {}
    return (event.get("type") == "output" and isinstance(data.get("text"), str) and not data.get("final")
            and set(data) <= {"story_id", "stream", "text"})


def _refusal(r) -> str:
    """Why the sidecar refused a batch, in its own words (never None)."""
    body = _json_body(r)
    message = str(body.get("message") or body.get("error") or "")
    if body.get("field"):
        message = f"{body['field']}: {message}"
    if not body:
        message = r.text[:200].strip()
    if r.status_code == 401:
        message = message or "the token is missing or wrong (LOOP_TOKEN)"
    return f"{r.status_code} {message or r.reason or 'refused'}"


def _is_number(value) -> bool:
    """A finite number within ±1e15 (a huge int would overflow float(); bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) <= 1e15 if isinstance(value, int) else math.isfinite(value) and abs(value) <= 1e15


def _json_body(r) -> dict:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _retry_after(r, body: dict) -> float:
    """Seconds to wait after a 429: its exact ``retry_after`` (an older sidecar: the figure in its
    message) when given, else the Retry-After header; at most a minute, whatever it says."""
    wait = body.get("retry_after")
    if not _is_number(wait):
        m = re.search(r"retry after ([0-9.]+)s", _refusal(r))
        wait = m.group(1) if m else r.headers.get("Retry-After", "1")
    try:
        return min(60.0, max(0.02, float(str(wait))))
    except ValueError:
        return 1.0


def _refused_index(r) -> int | None:
    """The batch index a 400 names in its ``field`` ("[3].data.text" -> 3), if any."""
    try:
        body = r.json()
    except ValueError:
        return None
    field_ = body.get("field") if isinstance(body, dict) else None
    if isinstance(field_, str) and field_.startswith("[") and "]" in field_:
        number = field_[1:field_.index("]")]
        return int(number) if number.isascii() and number.isdigit() and len(number) < 10 else None
    return None


def _owner(taken: list, index: int | None) -> int | None:
    """Which taken entry produced event ``index`` of the batch (output pieces make several)."""
    if index is None:
        return None
    seen = 0
    for i, entry in enumerate(taken):
        seen += len(entry.events()) if isinstance(entry, PendingOutput) else 1
        if index < seen:
            return i
    return None


class Outbox:
    """Events leave in order through one background thread that retries until delivered.

    ``put`` never blocks. Lifecycle events (everything but plain output) wait
    in one ordered queue and are never dropped or merged. Output between them
    is kept per stream as a bounded tail (see ``PendingOutput``): when the
    sidecar is slow, down or rate-limiting, a noisy child costs a marker with
    the number of bytes left out, not a backlog. Retries cover connection
    errors, timeouts, 5xx and 429 (honouring Retry-After); 400/401/413 are
    refusals: counted by reason in ``status.refused``, reported once through
    ``on_refused``, and the rest goes on.
    """

    def __init__(self, server: str | None, token: str | None = None,
                 on_status: Callable[[OutboxStatus], None] | None = None, max_backoff: float = 2.0,
                 on_refused: Callable[[str, int], None] | None = None, read_timeout: float = 30.0):
        self.url = server.rstrip("/") + "/api/events" if server else None
        self.token = token
        self.status = OutboxStatus(state="connecting" if server else "off")
        self.on_status = on_status
        self.on_refused = on_refused
        self.max_backoff = max_backoff
        self.read_timeout = read_timeout
        self._queue: deque = deque()      # dict events and PendingOutput, in order
        self._inflight = 0
        self.leftovers: list[dict] = []     # what close() could not deliver, in order (not the batch in flight)
        self._cond = threading.Condition()
        self._closing = False
        self._held: list | None = None     # a batch taken but not yet being posted (its pacing wait)
        self._abandoned = False            # close() took the held batch back for the spool
        self.pace = Pace()
        self._max_events = MAX_BATCH
        self._session = requests.Session()
        self._thread = threading.Thread(target=self._run, name="loop-outbox", daemon=True)
        if self.url:
            self._thread.start()

    def put(self, event: dict) -> None:
        """Queue one event; returns at once whatever the sidecar does."""
        if not self.url:
            return
        with self._cond:
            if _is_plain_output(event):
                d = event["data"]
                last = self._queue[-1] if self._queue else None
                key = (event.get("run"), d.get("story_id"), d.get("stream", "stdout"))
                if isinstance(last, PendingOutput) and last.key == key:
                    last.add(d["text"])
                else:
                    self._queue.append(PendingOutput(*key, text=d["text"]))
            else:
                self._queue.append({**event, "data": dict(event.get("data") or {})})
            self.status.queued = len(self._queue)
            self._cond.notify()

    def close(self, timeout: float = 30.0) -> bool:
        """Deliver what is queued within ``timeout`` s (output collapsed to its tail); True when all went."""
        if not self.url:
            return True
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while (self._queue or self._inflight) and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            left = sum(1 for e in self._queue if isinstance(e, dict)) + self._inflight
            # Not a batch being posted: a hung sidecar still holds it and stores it when it wakes up.
            # A batch still waiting for its turn under the rate limit was never sent: it goes too.
            pending = list(self._queue)
            if self._held is not None:
                pending = self._held + pending
                self._abandoned = True
            self.leftovers = [ev for entry in pending
                              for ev in (entry.events() if isinstance(entry, PendingOutput) else [entry])]
            self._queue.clear()
            self._cond.notify_all()
        if left:
            self.status.undelivered += left
            self.status.dropped += left
        return left == 0

    # -- the sending thread ----------------------------------------------------------------------------
    def _set(self, state: str, error: str | None = None) -> None:
        changed = self.status.state != state
        self.status.state = state
        self.status.last_error = error
        if changed and self.on_status:
            self.on_status(self.status)

    def _run(self) -> None:
        backoff = 0.1
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                taken, batch = self._take()
                self._inflight = len(batch)
                if not self._wait_turn(taken, batch):
                    return
            wait = self._deliver(taken, batch)
            with self._cond:
                self._inflight = 0
                self.status.queued = len(self._queue)
                self._cond.notify_all()
                if wait == 0:
                    backoff = 0.1
                    continue
                if wait < 0:
                    wait, backoff = backoff, min(self.max_backoff, backoff * 2)
                self._sleep(wait)

    def _wait_turn(self, taken: list, batch: list[dict]) -> bool:
        """Wait (holding the condition) until the rate allows ``batch``; False when close() took it
        back meanwhile (it goes to the spool instead, so it is never posted twice or out of order)."""
        self._held = taken
        until = time.monotonic() + self.pace.delay(len(batch), lifecycle=any(isinstance(e, dict) for e in taken))
        while not self._abandoned and (left := until - time.monotonic()) > 0:
            self._cond.wait(left)
        self._held = None
        if self._abandoned:
            self._inflight = 0
            self._cond.notify_all()
            return False
        return True

    def _sleep(self, seconds: float) -> None:
        """Wait (holding the condition) for ``seconds``: new events must not cut a Retry-After short."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0 and (self._queue or not self._closing):
            self._cond.wait(left)

    def _take(self) -> tuple[list, list[dict]]:
        """Remove the next batch from the queue: (the entries, to put back on failure; the events)."""
        room = self.pace.output_room(self._closing)
        taken: list = []
        batch: list[dict] = []
        size = 0
        while self._queue and len(batch) < self._max_events:
            head = self._queue[0]
            if isinstance(head, dict):
                n = _size(head)
                if batch and size + n > MAX_BATCH_BYTES:
                    break
                taken.append(self._queue.popleft())
                batch.append(head)
                size += n
                continue
            if room is not None and (room < 1 or len(head.text) > room * MAX_OUTPUT_CHUNK - 200):
                head.collapse()             # more than the rate allows: the tail, and a marker for the rest
            events_left = self._max_events - len(batch)
            piece = head.split(events_left if room is None else max(1, min(room, events_left)),
                               MAX_BATCH_BYTES - size)
            if piece is None:
                break
            if not head.text:
                self._queue.popleft()
            taken.append(piece)
            events = piece.events()
            room = None if room is None else room - len(events)
            batch += events
            size += sum(_size(e) for e in events)
            if head.text:
                break
        self._max_events = MAX_BATCH
        return taken, batch

    def _put_back(self, taken: list) -> None:
        """Return entries that were not delivered to the front of the queue, merging output again."""
        for entry in reversed(taken):
            head = self._queue[0] if self._queue else None
            if isinstance(entry, PendingOutput) and isinstance(head, PendingOutput) and head.key == entry.key:
                entry.absorb(head)
                self._queue[0] = entry
            else:
                self._queue.appendleft(entry)

    def _deliver(self, taken: list, batch: list[dict]) -> float:
        """POST one batch. 0: go on at once; > 0: wait that long; -1: back off. Puts back what must be retried."""
        url = self.url
        assert url is not None                   # the sender runs only with a sidecar
        try:
            body = json.dumps(batch, ensure_ascii=False).encode("utf-8", "replace")
            r = self._session.post(url, data=body, timeout=(2, self.read_timeout),
                                   headers={"Content-Type": "application/json", **auth_headers(self.token)})
        except requests.RequestException as e:
            self._set("retrying", describe(e, "POST", url))
            return self._retry(taken, -1)
        if r.status_code == 201:
            self.pace.spend(len(batch))
            self._delivered(taken, len(batch))
            return 0
        if r.status_code == 429:
            self._set("rate-limited", "rate-limited by the sidecar")
            answer = _json_body(r)
            wait = _retry_after(r, answer)
            self.pace.learn(answer, wait, len(batch))
            return self._retry(taken, wait)
        if r.status_code in (400, 401, 403, 413):
            return self._refused(r, taken, batch)
        self._set("retrying", f"{r.status_code} from the sidecar")
        return self._retry(taken, -1)

    def _retry(self, taken: list, wait: float) -> float:
        with self._cond:
            self._put_back(taken)
        return wait

    def _delivered(self, taken: list, count: int) -> None:
        self._set("live")
        self.status.delivered += count
        self.status.elided_bytes += sum(e.elided for e in taken if isinstance(e, PendingOutput))

    def _refused(self, r, taken: list, batch: list[dict]) -> float:
        """Drop what the sidecar will never take (the one event a 400 names, else the batch); keep the rest."""
        reason = _refusal(r)
        owner = _owner(taken, _refused_index(r)) if r.status_code == 400 else None
        if owner is None and len(batch) > 1 and r.status_code in (400, 413):
            self._max_events = max(1, len(batch) // 2)     # find the culprit: send fewer at a time
            return self._retry(taken, 0)
        if owner is not None:
            dropped = taken[owner]
            count = len(dropped.events()) if isinstance(dropped, PendingOutput) else 1
            rest = taken[:owner] + taken[owner + 1:]
        else:
            count, rest = len(batch), []
        self._record_refusal(reason, count)
        return self._retry(rest, 0)

    def _record_refusal(self, reason: str, count: int) -> None:
        first = reason not in self.status.refused
        self.status.refused[reason] = self.status.refused.get(reason, 0) + count
        self.status.dropped += count
        self._set("error", reason)
        if first and self.on_refused:
            self.on_refused(reason, count)


def _close_when_stopped(stop: threading.Event | None, response) -> threading.Event:
    """A stop ends a read that waits for the next event, not only the next read. Set the returned
    event when the connection is over, so the watcher ends with it (one per connection, not one
    parked thread per reconnect)."""
    ended = threading.Event()
    if stop is not None:
        threading.Thread(target=_close_when, args=(stop, ended, response), daemon=True).start()
    return ended


def _close_when(stop: threading.Event, ended: threading.Event, response) -> None:
    """Once ``stop`` is set, shut the stream's socket down: a read blocked on it returns at once."""
    import socket

    while not stop.wait(0.5):
        if ended.is_set():
            return
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    try:
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    response.close()


def spool_path(server: str, run: str | None) -> Path:
    """The spool bin/loop-emit uses for this server and run (the same naming, so one shipper serves both)."""
    base = os.environ.get("LOOP_SPOOL_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state"), "loop", "spool")
    host = re.sub(r"[^A-Za-z0-9]", "_", server.split("://", 1)[-1])
    return Path(base) / f"{host}__{re.sub(r'[^A-Za-z0-9._-]', '_', run or '')}.jsonl"


def hand_to_spool(server: str, run: str | None, events: list[dict], token: str | None = None) -> Path | None:
    """Queue ``events`` in the shell hooks' spool and make sure its shipper runs (bin/loop-emit --ship):
    what `loop run` could not deliver before exiting is delivered, in order, once the sidecar answers.
    None when loop-emit is not installed (installed.hook_path) or the spool cannot be written."""
    import fcntl
    import subprocess

    from loopstream.installed import hook_path

    emit = hook_path("loop-emit")
    if not events or emit is None:
        return None
    spool = spool_path(server, run)
    try:
        spool.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{spool}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with open(spool, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))
            if not _shipper_alive(Path(f"{spool}.pid")):
                with open(f"{spool}.log", "ab") as log:
                    proc = subprocess.Popen(["bash", str(emit), "--ship", str(spool), server], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, **({"LOOP_TOKEN": token} if token else {})})
                Path(f"{spool}.pid").write_text(f"{proc.pid}\n")
    except OSError:
        return None
    return spool


def _shipper_alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


def stream(server: str, token: str | None = None, runs=(), types=(), last_event_id: str | None = None,
           on_state: Callable[[str], None] | None = None, stop: threading.Event | None = None,
           read_timeout: float = 45.0, cursor: Callable[[], str | None] | None = None,
           ) -> Iterator[tuple[str | None, str, dict]]:
    """Yield (id, event, data) from /stream/progress forever, reconnecting with Last-Event-ID
    (the last id seen, or ``cursor()`` when given: a Follower's cursor, which polls move too)."""
    url = server.rstrip("/") + "/stream/progress"
    params = [("run", r) for r in runs] + ([("types", ",".join(types))] if types else [])
    if token:
        params.append(("token", token))
    seen = [last_event_id]
    delay = 1.0
    while not (stop and stop.is_set()):
        resume_from = cursor() if cursor is not None else seen[0]
        try:
            for frame in _one_connection(url, params, resume_from, stop, on_state, read_timeout):
                delay = 1.0
                if frame[0]:
                    seen[0] = frame[0]
                yield frame
                if stop and stop.is_set():
                    return
        except (requests.RequestException, ValueError):
            pass
        if on_state:
            on_state("reconnecting")
        if _wait(stop, delay):
            return
        delay = min(30.0, delay * 2)


def _one_connection(url: str, params: list, resume_from: str | None, stop: threading.Event | None,
                    on_state: Callable[[str], None] | None,
                    read_timeout: float) -> Iterator[tuple[str | None, str, dict]]:
    """The frames of one stream connection, until it ends (or raises)."""
    import sseclient

    headers = {"Last-Event-ID": resume_from} if resume_from else {}
    r = requests.get(url, params=params, headers=headers, stream=True, timeout=(3, read_timeout))
    if r.status_code in (401, 403):
        raise SidecarError(f"{r.status_code} from {url}: the token is missing or wrong (LOOP_TOKEN)", r.status_code)
    r.raise_for_status()
    ended = _close_when_stopped(stop, r)
    if on_state:
        on_state("live")
    try:
        for e in sseclient.SSEClient(r).events():  # type: ignore[arg-type]  # a Response iterates its bytes
            yield e.id, e.event, json.loads(e.data) if e.data else {}
    finally:
        ended.set()
        r.close()


def _wait(stop: threading.Event | None, seconds: float) -> bool:
    """Sleep before a reconnect; True when ``stop`` was set meanwhile."""
    if stop:
        return stop.wait(seconds)
    time.sleep(seconds)
    return False


# -- following a stream: the same reading as dashboard/connection.js ------------------------------------

POLL_PAGE = 1000    # events in a full /api/events page (a shorter one is the last)
POLL_PAGES = 20     # pages read at most in one catch-up


class Follower:
    """What each frame of /stream/progress means, read exactly as dashboard/connection.js reads it
    (tests/fixtures/tables/follower_cases.json is run against both): a fresh ``hello`` and every
    ``reset`` replace the snapshots (``on_snapshots(runs, reason)``) and move the cursor; a resumed
    ``hello`` keeps them; an event at or before the cursor (same epoch) is dropped; a gap in ids, or
    a heartbeat past the cursor, is caught up from /api/events (``poll(since) -> page | None``)
    before the event is applied; an event of another epoch is applied as it comes.

    Sans-IO: the caller feeds frames and supplies ``poll``; nothing here reads a socket.
    """

    def __init__(self, on_event: Callable[[dict], None], on_snapshots: Callable[[list, str | None], None],
                 poll: Callable[[str], dict | None] | None = None, cursor: str | None = None):
        self.on_event, self.on_snapshots, self.poll = on_event, on_snapshots, poll
        self.cursor = cursor

    def feed(self, eid: str | None, name: str, data: dict) -> None:
        """One frame: its id (the SSE ``id:``), event name and parsed data."""
        if name in ("hello", "reset"):
            self.cursor = data.get("cursor")
            if name == "reset" or not data.get("resumed"):
                self.on_snapshots(data.get("runs") or [], data.get("reason") if name == "reset" else None)
        elif name == "heartbeat":
            self._check_gap(eid)
        else:
            self.receive(data)

    def receive(self, event: dict) -> None:
        """An event from either the stream or a poll: applied once, in order."""
        eid, cur = _parse_id(event.get("id")), _parse_id(self.cursor)
        if eid and cur and eid[0] == cur[0]:
            if eid[1] <= cur[1]:
                return                       # seen already
            if eid[1] > cur[1] + 1 and self.poll is not None:
                self._catch_up(eid[1])       # the ones between, then this one
                if self._seen(eid):
                    return
        self.cursor = event.get("id")
        self.on_event(event)

    def _seen(self, eid: tuple[int, int] | None) -> bool:
        cur = _parse_id(self.cursor)
        return bool(eid and cur and eid[0] == cur[0] and eid[1] <= cur[1])

    def _check_gap(self, heartbeat_id: str | None) -> None:
        hid, cur = _parse_id(heartbeat_id), _parse_id(self.cursor)
        if hid and cur and hid[0] == cur[0] and hid[1] > cur[1] and self.poll is not None:
            self._catch_up(None)

    def _catch_up(self, before_seq: int | None) -> bool:
        """Read /api/events from the cursor, applying events below ``before_seq``; False if it failed."""
        assert self.poll is not None
        for _ in range(POLL_PAGES):
            page = self.poll(self.cursor or "0-0")
            if page is None:
                return False
            if page.get("reset"):
                self.cursor = page.get("cursor")
                self.on_snapshots(page.get("runs") or [], "poll")
                return True
            events = page.get("events") or []
            if self._apply_page(events, before_seq):
                return True
            if len(events) < POLL_PAGE:
                return True
        return True

    def _apply_page(self, events: list[dict], before_seq: int | None) -> bool:
        """Apply a page's events in order; True once one at or past ``before_seq`` is reached."""
        for event in events:
            eid = _parse_id(event.get("id"))
            if eid and before_seq is not None and eid[1] >= before_seq:
                return True
            if not self._seen(eid):
                self.cursor = event.get("id")
                self.on_event(event)
        return False


def _parse_id(value) -> tuple[int, int] | None:
    from loopstream.core.events import parse_id

    return parse_id(value) if isinstance(value, str) else None


def poller(server: str, token: str | None, runs=(), types=()) -> Callable[[str], dict | None]:
    """``poll(since)`` for a Follower: one page of /api/events with the stream's filter, None on failure."""
    url = server.rstrip("/") + "/api/events"
    params = [("run", r) for r in runs] + ([("types", ",".join(types))] if types else [])

    def poll(since: str) -> dict | None:
        try:
            return request("GET", url, token, timeout=5, params=[*params, ("since", since)]).json()
        except (SidecarError, ValueError):
            return None
    return poll


def follow(server: str, token: str | None, follower: Follower, runs=(), types=(),
           stop: threading.Event | None = None, on_state: Callable[[str], None] | None = None,
           on_frame: Callable[[str | None, str, dict], None] | None = None,
           until: Callable[[], bool] | None = None) -> None:
    """Feed /stream/progress to ``follower`` (resuming from its cursor) until ``stop`` is set or
    ``until()`` is true after a frame. ``on_frame`` sees every frame first (e.g. to print it)."""
    for eid, name, data in stream(server, token, runs=runs, types=types, stop=stop, on_state=on_state,
                                  cursor=lambda: follower.cursor):
        if on_frame is not None:
            on_frame(eid, name, data)
        follower.feed(eid, name, data)
        if until is not None and until():
            return


class RunWatch:
    """`loop watch`'s runs: every run's snapshot (replaced by a fresh hello or a reset, folded event by
    event), and the run shown: the named one, else the live run updated last when the watch began (or
    the first to start after), followed to its end like a named one."""

    def __init__(self, run_id: str | None, known: dict | None = None):
        self.run_id = run_id
        self.followed = run_id
        self.known = known           # the named run as /api/runs/RUN gave it before the stream opened
        self.snaps: dict[str, dict] = {}

    def replace(self, runs: list, reason: str | None = None) -> None:
        """A fresh hello or a reset: these snapshots are the whole picture now."""
        self.snaps = {s["run"]: s for s in runs if isinstance(s, dict) and "run" in s}
        self._follow_latest()

    def apply(self, event: dict) -> None:
        from loopstream.core import state

        self.snaps[event["run"]] = state.apply(self.snaps.get(event["run"]), event)
        self._follow_latest()

    def current(self) -> dict | None:
        if not self.followed:
            return None
        return self.snaps.get(self.followed) or (self.known if self.followed == self.run_id else None)

    def finished(self) -> ExitStatus | None:
        """The exit status once the named run has finished ("interrupted" may yet come back: not finished)."""
        from loopstream.core import state

        s = self.current()
        if self.run_id and s and s["status"] in state.FINISHED:
            return ExitStatus.of_run(s["status"])
        return None

    def _follow_latest(self) -> None:
        """No run named: pick the live run updated last (or the first to start), then keep to it to its end."""
        from loopstream.core import state

        if self.run_id:
            return
        live = [s for s in self.snaps.values() if state.is_live(s)]
        if live:
            self.followed = self.run_id = max(live, key=lambda s: s.get("updated_at") or 0)["run"]
