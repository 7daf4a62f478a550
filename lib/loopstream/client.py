"""HTTP client: emit through an outbox that never loses or reorders, stream with resume.

No Click here. ``requests`` is imported lazily by callers of this module only
(the CLI imports this module inside its commands).
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

import requests

MAX_BATCH = 50            # events per POST
MAX_BATCH_BYTES = 48_000  # under the sidecar's 64 KB body limit
MAX_OUTPUT_CHUNK = 4096   # output events are merged up to this size while queued


class SidecarError(Exception):
    """The sidecar answered with an error, or could not be reached."""


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
            message = body.get("message") or body.get("error")
            if body.get("field"):
                message = f"{body['field']}: {message}"
        except ValueError:
            message = r.text[:200]
        raise SidecarError(f"{r.status_code} from {url}: {message}")
    return r


def healthy(server: str, timeout: float = 0.5) -> bool:
    try:
        return requests.get(server.rstrip("/") + "/healthz", timeout=timeout).ok
    except requests.RequestException:
        return False


@dataclass
class OutboxStatus:
    state: str = "connecting"   # connecting | live | retrying | rate-limited | off
    queued: int = 0
    delivered: int = 0
    dropped: int = 0
    last_error: str | None = None


class Outbox:
    """Events leave in order through one background thread that retries until delivered.

    Retries on connection errors, timeouts, 5xx and 429 (honouring Retry-After),
    so a restart of the sidecar or a rate limit never loses an event. While
    events wait, consecutive output chunks of one stream are merged (up to 4 KB)
    so a noisy child does not turn into a rate-limit backlog.
    """

    def __init__(self, server: str | None, token: str | None = None,
                 on_status: Callable[[OutboxStatus], None] | None = None, max_backoff: float = 2.0):
        self.url = server.rstrip("/") + "/api/events" if server else None
        self.token = token
        self.status = OutboxStatus(state="connecting" if server else "off")
        self.on_status = on_status
        self.max_backoff = max_backoff
        self._queue: deque[dict] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._inflight = 0
        self._session = requests.Session()
        self._thread = threading.Thread(target=self._run, name="loop-outbox", daemon=True)
        if self.url:
            self._thread.start()

    def put(self, event: dict) -> None:
        if not self.url:
            return
        with self._cond:
            # Merge into the last queued event only if it is not part of the batch in flight.
            last = self._queue[-1] if len(self._queue) > self._inflight else None
            if last is not None and _mergeable(last, event):
                last["data"]["text"] += event["data"]["text"]
            else:
                self._queue.append({**event, "data": dict(event.get("data") or {})})
            self.status.queued = len(self._queue)
            self._cond.notify()

    def close(self, timeout: float = 30.0) -> bool:
        """Deliver what is queued (up to ``timeout`` s); True when nothing was left behind."""
        if not self.url:
            return True
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify()
            while self._queue and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
            left = len(self._queue)
            self._queue.clear()
            self._cond.notify()
        self._thread.join(2)
        if left:
            self.status.dropped += left
        return left == 0

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
                if not self._queue and self._closing:
                    return
                batch = _take_batch(self._queue)
                self._inflight = len(batch)
            wait = self._send(batch)
            with self._cond:
                self._inflight = 0
                if wait is None:      # delivered: drop exactly what was sent from the head
                    for _ in range(min(len(batch), len(self._queue))):  # close() may have cleared it
                        self._queue.popleft()
                    self.status.delivered += len(batch)
                    self.status.queued = len(self._queue)
                    self._cond.notify_all()
                    backoff = 0.1
                    continue
                if not self._queue:
                    return
                if wait < 0:
                    wait, backoff = backoff, min(self.max_backoff, backoff * 2)
                self._cond.wait(wait)

    def _send(self, batch: list[dict]) -> float | None:
        """None when delivered (or refused as invalid); else seconds to wait (-1: back off)."""
        try:
            r = self._session.post(self.url, data=json.dumps(batch), timeout=5,
                                   headers={"Content-Type": "application/json", **auth_headers(self.token)})
        except requests.RequestException as e:
            self._set("retrying", describe(e, "POST", self.url))
            return -1
        if r.status_code == 201:
            self._set("live")
            return None
        if r.status_code == 429:
            self._set("rate-limited")
            try:
                return max(0.05, float(r.headers.get("Retry-After", "1")))
            except ValueError:
                return 1.0
        if r.status_code in (400, 401, 403, 413):
            # Not going to succeed by waiting: say so once, drop this batch, keep the order of the rest.
            self.status.dropped += len(batch)
            self._set("error", f"{r.status_code}: {r.text[:200]}")
            return None
        self._set("retrying", f"{r.status_code} from the sidecar")
        return -1


def _mergeable(a: dict, b: dict) -> bool:
    if a.get("type") != "output" or b.get("type") != "output" or a.get("run") != b.get("run"):
        return False
    da, db = a.get("data") or {}, b.get("data") or {}
    keys = ("story_id", "stream")
    return (all(da.get(k) == db.get(k) for k in keys) and not da.get("final")
            and set(da) <= {"story_id", "stream", "text"} and set(db) <= {"story_id", "stream", "text", "final"}
            and len(da.get("text", "")) + len(db.get("text", "")) <= MAX_OUTPUT_CHUNK)


def _take_batch(queue: deque[dict]) -> list[dict]:
    batch, size = [], 0
    for e in queue:
        n = len(json.dumps(e))
        if batch and (len(batch) >= MAX_BATCH or size + n > MAX_BATCH_BYTES):
            break
        batch.append(e)
        size += n
    return batch


def stream(server: str, token: str | None = None, runs=(), types=(), last_event_id: str | None = None,
           on_state: Callable[[str], None] | None = None, stop: threading.Event | None = None,
           read_timeout: float = 45.0) -> Iterator[tuple[str, str, dict]]:
    """Yield (id, event, data) from /stream/progress forever, reconnecting with Last-Event-ID."""
    import sseclient

    url = server.rstrip("/") + "/stream/progress"
    params = [("run", r) for r in runs] + ([("types", ",".join(types))] if types else [])
    if token:
        params.append(("token", token))
    cursor = last_event_id
    delay = 1.0
    while not (stop and stop.is_set()):
        headers = {"Last-Event-ID": cursor} if cursor else {}
        try:
            r = requests.get(url, params=params, headers=headers, stream=True, timeout=(3, read_timeout))
            if r.status_code in (401, 403):
                raise SidecarError(f"{r.status_code} from {url}: the token is missing or wrong (LOOP_TOKEN)")
            r.raise_for_status()
            if on_state:
                on_state("live")
            delay = 1.0
            for e in sseclient.SSEClient(r).events():
                if e.id:
                    cursor = e.id
                yield e.id, e.event, json.loads(e.data) if e.data else {}
                if stop and stop.is_set():
                    r.close()
                    return
        except (requests.RequestException, ValueError):
            pass
        if on_state:
            on_state("reconnecting")
        if stop:
            if stop.wait(delay):
                return
        else:
            time.sleep(delay)
        delay = min(30.0, delay * 2)
