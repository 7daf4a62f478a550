"""Reading /stream/progress: (id, event, data) frames, reconnecting with Last-Event-ID until stopped."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator

import requests

from loopstream.client.http import SidecarError


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
