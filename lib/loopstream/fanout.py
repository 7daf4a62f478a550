"""Direct fan-out: on publish, write new frames straight to every caught-up subscriber's socket.

Waking one greenlet per subscriber and writing through gunicorn costs tens of
microseconds each; a non-blocking ``send()`` on the raw socket costs a few.
So a publish writes to every subscriber that is parked at the head; only one
whose socket does not take the whole write (or that is behind, or has no raw
socket) is woken to finish through the normal path, which is also where a
slow reader falls behind and later gets its ``reset``. Nothing here waits:
a publish never blocks on any subscriber.
"""
from __future__ import annotations

import threading
from .broker import Cursor, Filter
from .events import Event


class Subscriber:
    __slots__ = ("flt", "pos", "raw", "gsock", "chunked", "parked", "pending", "wake", "gone")

    def __init__(self, flt: Filter, pos: Cursor | None, gsock, chunked: bool):
        self.flt = flt
        self.pos = pos
        self.gsock = gsock                              # the worker's (gevent) socket, for blocking writes
        self.raw = getattr(gsock, "_sock", None)        # the non-blocking socket underneath
        self.chunked = chunked
        self.parked = False                             # waiting at the head, nothing being written
        self.pending: bytes | None = None               # bytes a direct write could not finish
        self.wake = threading.Event()
        self.gone = False                               # its socket failed: the stream must end

    def frame_bytes(self, data: bytes) -> bytes:
        """Body bytes as they go on the wire (gunicorn's chunked framing for HTTP/1.1)."""
        return b"%X\r\n%s\r\n" % (len(data), data) if self.chunked else data

    def flush_pending(self) -> None:
        """Finish a direct write that the socket did not take at once (may block this greenlet)."""
        data, self.pending = self.pending, None
        if data:
            self.gsock.sendall(data)


class Fanout:
    def __init__(self):
        self.subscribers: set[Subscriber] = set()
        self.direct = 0        # deliveries written directly
        self.woken = 0         # subscribers woken to catch up themselves

    def add(self, sub: Subscriber) -> None:
        self.subscribers.add(sub)

    def discard(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def end_all(self) -> None:
        """End every stream (the backend is gone): each client reconnects and is told when it is back."""
        for sub in list(self.subscribers):
            sub.gone = True
            sub.wake.set()
        self.subscribers.clear()

    def wake_all(self) -> None:
        """Make every parked subscriber read again (the state was reloaded)."""
        for sub in list(self.subscribers):
            sub.wake.set()

    def publish(self, events: list[Event], before: Cursor, after: Cursor) -> None:
        """Write ``events`` (the head moved from ``before`` to ``after``) to every parked subscriber;
        wake the ones that must catch up by themselves."""
        wires = Wires(events)
        for sub in list(self.subscribers):
            if not sub.parked or sub.pending is not None:
                continue                           # busy: it reads the buffer itself when done
            if sub.pos != before or sub.raw is None:
                self._wake(sub)
                continue
            sub.pos = after
            wire = wires.for_subscriber(sub)
            if wire:                               # else nothing for its filter: the cursor moves silently
                self._send(sub, wire)

    def _wake(self, sub: Subscriber) -> None:
        sub.wake.set()
        self.woken += 1

    def _send(self, sub: Subscriber, wire: bytes) -> None:
        """One non-blocking send; what the socket did not take is left for the subscriber to finish."""
        try:
            sent = sub.raw.send(wire)
        except BlockingIOError:
            sent = 0
        except OSError:                            # the client has gone: end its stream
            sub.gone = True
            self.subscribers.discard(sub)
            sub.wake.set()
            return
        self.direct += 1
        if sent < len(wire):
            sub.pending = wire[sent:]
            self._wake(sub)


class Wires:
    """The bytes one publish puts on the wire, made once for all unfiltered subscribers."""

    def __init__(self, events: list[Event]):
        self.events = events
        self._everything: bytes | None = None
        self._chunked: bytes | None = None

    def for_subscriber(self, sub: Subscriber) -> bytes:
        """The frames ``sub``'s filter passes, framed for its connection (b"" when none)."""
        if not sub.flt.everything:
            data = b"".join(e.frame for e in self.events if sub.flt(e))
            return sub.frame_bytes(data) if data else b""
        if self._everything is None:
            self._everything = b"".join(e.frame for e in self.events)
        if not sub.chunked:
            return self._everything
        if self._chunked is None:
            self._chunked = sub.frame_bytes(self._everything)
        return self._chunked
