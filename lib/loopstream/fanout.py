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
        everything = chunked = None
        for sub in list(self.subscribers):
            if not sub.parked or sub.pending is not None:
                continue                           # busy: it reads the buffer itself when done
            if sub.pos != before or sub.raw is None:
                sub.wake.set()
                self.woken += 1
                continue
            sub.pos = after
            if sub.flt.everything:
                if everything is None:
                    everything = b"".join(e.frame for e in events)
                if sub.chunked:
                    chunked = chunked or sub.frame_bytes(everything)
                    wire = chunked
                else:
                    wire = everything
            else:
                data = b"".join(e.frame for e in events if sub.flt(e))
                if not data:
                    continue                       # nothing for this filter: the cursor moves silently
                wire = sub.frame_bytes(data)
            try:
                sent = sub.raw.send(wire)
            except BlockingIOError:
                sent = 0
            except OSError:                        # the client has gone: end its stream
                sub.gone = True
                self.subscribers.discard(sub)
                sub.wake.set()
                continue
            self.direct += 1
            if sent < len(wire):
                sub.pending = wire[sent:]
                sub.wake.set()
                self.woken += 1
