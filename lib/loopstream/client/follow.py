"""Following a stream: what each frame means, read the same way as dashboard/connection.js, with gaps
caught up from /api/events.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from loopstream.client.http import SidecarError, request
from loopstream.client.stream import stream

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
