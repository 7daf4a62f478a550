"""A stream's life, in one place: each SSE stream's phase, the moves between phases, and the writes.

A stream (GET /stream/progress) starts in its request's greenlet, which
writes ``retry``, the ``hello`` and whatever it must catch up on through
gunicorn. At the head, it is *handed off*: its connection becomes this
module's (worker_io.take), its request ends, and gunicorn's request, the WSGI
environ and the greenlet's stack are freed, so a held stream costs a
``Stream`` and a socket. A publish then writes straight to every held stream
parked at the head with one non-blocking ``send()`` (a few microseconds,
where waking a greenlet to write through gunicorn costs tens), and never
waits on any: a stream that is behind, or whose socket did not take the whole
write, is caught up by a short-lived greenlet that writes from the buffer (or
a ``reset``, when its cursor has left the buffer) and parks it again. That is
also where a slow reader falls behind, never delaying the others. A held
stream's socket is watched: an SSE client sends nothing, so it turns
readable when the client has gone, and the stream ends then (its client's
stream count drops at once, not at the next heartbeat that fails to write).

The hub decides (``Source``: the hello, the next frames or a reset, a
heartbeat, the count of streams); this module only moves and writes. A
stream's phase is one ``Phase``, and ``MOVES`` are the only ways on:

================  =========================================================
IN_REQUEST        its request's greenlet writes it, through gunicorn; at the
                  head it is handed off (PARKED), or WAITING with no
                  connection to take (another server, a test)
WAITING           asleep in its request until a publish wakes it
                  (IN_REQUEST again) or a heartbeat is due
ENDING            told to end while in its request: its request's close
                  makes it GONE
PARKED            handed off, at the head: a publish writes its socket;
                  behind, or a write left over: CATCHING_UP
CATCHING_UP       a short-lived greenlet writes what it lacks from the
                  buffer (or a reset), then PARKED again; the client leaving
                  meanwhile makes it LEAVING
LEAVING           the greenlet finishes, then ends it
GONE              over: its socket closed, its client's count dropped
================  =========================================================

A ``reset`` is not a phase: it is the frame a stream catching up (in its
request, or held) is given when its cursor has left the buffer, and it goes
on from the new cursor in the same phase.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from loopstream.core import sse
from loopstream.core.events import Event
from loopstream.sidecar import worker_io
from loopstream.sidecar.brokers.memory import Cursor, Filter

if TYPE_CHECKING:
    from loopstream.sidecar.config import Config

log = logging.getLogger("loopstream.server")


class Phase(Enum):
    IN_REQUEST = "in its request"        # its request's greenlet writes it, through gunicorn
    WAITING = "waiting"                  # at the head in its request's greenlet (no socket to hold)
    ENDING = "ending"                    # told to end while in its request: the request's close ends it
    PARKED = "parked"                    # handed off, at the head: a publish writes its socket directly
    CATCHING_UP = "catching up"          # handed off, a greenlet writes what it lacks (or a reset)
    LEAVING = "leaving"                  # its client left while catching up: that greenlet ends it
    GONE = "gone"                        # over: its socket closed (held) or its request ended, uncounted


IN_REQUEST, WAITING, ENDING = Phase.IN_REQUEST, Phase.WAITING, Phase.ENDING
PARKED, CATCHING_UP, LEAVING, GONE = Phase.PARKED, Phase.CATCHING_UP, Phase.LEAVING, Phase.GONE

MOVES: dict[Phase, frozenset[Phase]] = {
    IN_REQUEST: frozenset({WAITING, PARKED, ENDING, GONE}),
    WAITING: frozenset({IN_REQUEST, ENDING}),
    ENDING: frozenset({GONE}),
    PARKED: frozenset({CATCHING_UP, GONE}),
    CATCHING_UP: frozenset({PARKED, LEAVING, GONE}),
    LEAVING: frozenset({GONE}),
    GONE: frozenset(),
}
IN_ITS_REQUEST = frozenset({IN_REQUEST, WAITING, ENDING})


class Stream:
    """One subscriber: what it wants (``flt``), where it is (``pos``), its phase, and its connection."""

    __slots__ = ("flt", "pos", "phase", "chunked", "addr", "sock", "pending", "wake", "watch")

    def __init__(self, flt: Filter, pos: Cursor | None, sock: Any = None, chunked: bool = False, addr: str = ""):
        self.flt = flt
        self.pos = pos
        self.phase = IN_REQUEST
        self.chunked = chunked                 # gunicorn frames its body in chunks (HTTP/1.1)
        self.addr = addr                       # the client, for its stream count
        self.sock: Any = sock                  # the request's socket; once handed off, our own non-blocking one
        self.pending: bytes | None = None      # held: bytes a direct write left over (caught up next)
        self.wake: Any = threading.Event()     # in its request: set to wake it; None once handed off
        self.watch: Any = None                 # held: the watcher of its socket's readability

    def move(self, to: Phase) -> None:
        if to not in MOVES[self.phase]:
            raise RuntimeError(f"a stream cannot go from {self.phase.value} to {to.value}")
        self.phase = to

    def frame_bytes(self, data: bytes) -> bytes:
        """Body bytes as they go on the wire once held (gunicorn's framing for its connection)."""
        return worker_io.frame(data, self.chunked)


class Source(Protocol):
    """What the streams ask the hub: it decides every frame and counts the streams."""

    config: Config

    def hello(self, stream: Stream) -> bytes: ...

    def next_frames(self, stream: Stream) -> bytes | None: ...

    def heartbeat_frame(self, pos: Cursor | None) -> bytes: ...

    def close_stream(self, addr: str) -> None: ...


class Streams:
    """Every open stream of one worker: their bodies, hand-off, direct writes, catching up, heartbeats, end."""

    def __init__(self, source: Source):
        self.source = source
        self.open: set[Stream] = set()
        self.direct = 0        # deliveries written directly
        self.woken = 0         # streams woken (or given a greenlet) to catch up themselves
        self._beating = False

    # -- in its request ------------------------------------------------------------------------
    def body(self, s: Stream) -> Iterator[bytes]:
        """A stream's SSE body while it is in its request: retry, hello, what it must catch up on;
        then it is handed off (``HandedOff`` ends the request), or it waits in its request."""
        src = self.source
        self.open.add(s)
        yield sse.retry(src.config.retry_ms)
        yield src.hello(s)
        while s.phase is IN_REQUEST:
            chunk = src.next_frames(s)
            if chunk is None:
                if self.hand_off(s):
                    raise worker_io.HandedOff()
                chunk = self._wait(s)
            if chunk:
                yield chunk

    def request_closed(self, s: Stream) -> None:
        """Its request is over (gunicorn closed the response): a stream still in it ends with it; a
        handed-off one lives on, and ends when its socket does."""
        if s.phase in IN_ITS_REQUEST:
            self.open.discard(s)
            s.move(GONE)
            self.source.close_stream(s.addr)

    def _wait(self, s: Stream) -> bytes:
        """At the head with no socket to hold: sleep until a publish wakes it, or a heartbeat is due."""
        s.wake.clear()
        s.move(WAITING)
        try:
            woken = s.wake.wait(self.source.config.heartbeat)
        finally:
            if s.phase is WAITING:
                s.move(IN_REQUEST)
        if woken or s.phase is not IN_REQUEST:
            return b""
        return self.source.heartbeat_frame(s.pos)

    def hand_off(self, s: Stream) -> bool:
        """Take the connection of a stream at the head, everything written: publishes write to it from
        now on, and its request ends. False when there is no connection to take."""
        raw = worker_io.take(s.sock) if s.sock is not None else None
        if raw is None:
            return False
        s.sock, s.wake = raw, None
        s.move(PARKED)
        s.watch = worker_io.watch_readable(raw, self._readable, s)
        if not self._beating:
            self._beating = True
            worker_io.spawn(self._beat)
        return True

    # -- held ----------------------------------------------------------------------------------
    def publish(self, events: list[Event], before: Cursor, after: Cursor) -> None:
        """Write ``events`` (the head moved from ``before`` to ``after``) to every stream parked at the
        head; set the others catching up. Streams in their request read the buffer themselves."""
        wires = Wires(events)
        for s in list(self.open):
            phase = s.phase
            if phase is PARKED:
                if s.pos != before:
                    self._catch_up(s)
                    continue
                s.pos = after
                wire = wires.for_stream(s)
                if wire:                           # else nothing for its filter: the cursor moves silently
                    self._send(s, wire)
            elif phase is WAITING:
                self.woken += 1
                s.wake.set()

    def _send(self, s: Stream, wire: bytes) -> None:
        """One non-blocking send to a parked stream; what the socket did not take is caught up."""
        try:
            sent = s.sock.send(wire)
        except BlockingIOError:
            sent = 0
        except OSError:                            # the client has gone
            self.end(s)
            return
        self.direct += 1
        if sent < len(wire):
            s.pending = wire[sent:]
            self._catch_up(s)

    def _catch_up(self, s: Stream) -> None:
        self.woken += 1
        s.move(CATCHING_UP)
        worker_io.spawn(self._write_behind, s)

    def _write_behind(self, s: Stream) -> None:
        """In a short-lived greenlet: write a held stream what it lacks (a write left over, events from
        the buffer, or a reset), then park it again."""
        src = self.source
        try:
            while s.phase is CATCHING_UP:
                if s.pending is not None:
                    data, s.pending = s.pending, None
                    worker_io.send_all(s.sock, data)
                    continue
                chunk = src.next_frames(s)
                if s.phase is not CATCHING_UP:     # next_frames may yield (Redis): the client left meanwhile,
                    break                          # or the sidecar ended every stream
                if chunk is None:
                    s.move(PARKED)
                    return
                if chunk:
                    worker_io.send_all(s.sock, s.frame_bytes(chunk))
        except OSError:
            self.end(s)
        except Exception:   # a bug must not leave the stream counted but never written again
            log.exception("catching up a held stream failed")
            self.end(s)
        if s.phase is LEAVING:
            self.end(s)

    def _readable(self, s: Stream) -> None:
        """In gevent's hub, never blocking: the client closed (end the stream), or sent bytes (dropped)."""
        try:
            if s.sock.recv(4096):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        if s.phase is CATCHING_UP:   # a greenlet is writing to its socket: that greenlet ends it
            s.move(LEAVING)
            self._unwatch(s)
        else:
            self.end(s)

    @staticmethod
    def _unwatch(s: Stream) -> None:
        if s.watch is not None:
            worker_io.unwatch(s.watch)
            s.watch = None

    def _beat(self) -> None:
        """Every --heartbeat seconds, a named heartbeat to every held stream parked at the head."""
        while True:
            worker_io.sleep(self.source.config.heartbeat)
            try:
                self.heartbeat()
            except Exception:   # a bug must not end the heartbeats: dead clients are found by them
                log.exception("heartbeat to held streams failed")

    def heartbeat(self) -> None:
        frames: dict[Cursor | None, bytes] = {}
        for s in [s for s in self.open if s.phase is PARKED]:
            frame = frames.get(s.pos)
            if frame is None:
                frame = frames[s.pos] = self.source.heartbeat_frame(s.pos)
            self._send(s, s.frame_bytes(frame))

    # -- the end -------------------------------------------------------------------------------
    def end(self, s: Stream) -> None:
        """End a stream: a held one's socket is closed here (once) and its client's count dropped; one
        in its request is woken to end, and its request's close drops the count."""
        phase = s.phase
        if phase is GONE or phase is ENDING:
            return
        if phase in IN_ITS_REQUEST:
            s.move(ENDING)
            s.wake.set()
            return
        s.move(GONE)
        self.open.discard(s)
        self._unwatch(s)
        try:
            if s.chunked:
                s.sock.send(worker_io.END_CHUNK)
        except OSError:
            pass
        s.sock.close()
        self.source.close_stream(s.addr)

    def end_all(self) -> None:
        """End every stream (the backend is gone, or the worker exits): each client reconnects."""
        for s in list(self.open):
            self.end(s)

    def wake_all(self) -> None:
        """Make every stream at the head read the buffer again (the state was reloaded)."""
        for s in list(self.open):
            if s.phase is PARKED:
                self._catch_up(s)
            elif s.phase is WAITING:
                self.woken += 1
                s.wake.set()


class Wires:
    """The bytes one publish puts on the wire, made once for all unfiltered streams."""

    def __init__(self, events: list[Event]):
        self.events = events
        self._everything: bytes | None = None
        self._chunked: bytes | None = None

    def for_stream(self, s: Stream) -> bytes:
        """The frames ``s``'s filter passes, framed for its connection (b"" when none)."""
        if not s.flt.everything:
            data = b"".join(e.frame for e in self.events if s.flt(e))
            return s.frame_bytes(data) if data else b""
        if self._everything is None:
            self._everything = b"".join(e.frame for e in self.events)
        if not s.chunked:
            return self._everything
        if self._chunked is None:
            self._chunked = s.frame_bytes(self._everything)
        return self._chunked
