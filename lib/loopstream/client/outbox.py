"""The outbox: events leave in order through one background thread that retries until they are delivered.

Lifecycle events are never dropped or reordered; output waits as a bounded tail (client.pending); once
the sidecar has rate-limited us, batches go at its pace (client.pace); refusals are counted by reason.
"""
from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from loopstream.client.http import auth_headers, describe
from loopstream.client.pace import Pace, _is_number
from loopstream.client.pending import MAX_OUTPUT_CHUNK, PendingOutput, _size

MAX_BATCH = 50            # events per POST
MAX_BATCH_BYTES = 48_000  # under the sidecar's 64 KB body limit


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
