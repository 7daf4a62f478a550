"""Direct fan-out: on publish, write new frames straight to every caught-up subscriber's socket.

Waking one greenlet per subscriber and writing through gunicorn costs tens of
microseconds each; a non-blocking ``send()`` on the raw socket costs a few.
So a publish writes to every subscriber that is parked at the head; only one
whose socket does not take the whole write (or that is behind, or has no raw
socket) is woken to finish through the normal path, which is also where a
slow reader falls behind and later gets its ``reset``. Nothing here waits:
a publish never blocks on any subscriber.

A stream parked at the head is *held*: its request greenlet hands the socket
over (``hold``) and ends, so gunicorn's request, the WSGI environ and the
greenlet's saved stack are freed and the stream costs a ``Subscriber`` and a
socket. A held stream that must catch up (it is behind, or its socket did not
take a whole write) is served by a short-lived greenlet (``serve_behind``,
the hub's) that writes from the buffer, or a ``reset``, and parks it again.
A held stream's socket is watched for readability: an SSE client sends
nothing, so it is readable when the client has gone (EOF or a reset), and the
stream ends then — its client's stream count drops at once, not at the next
heartbeat that fails to write.
"""
from __future__ import annotations

import _socket
import threading
from collections.abc import Callable
from typing import Any

from loopstream.core.events import Event
from loopstream.sidecar.brokers.memory import Cursor, Filter

END_CHUNK = b"0\r\n\r\n"   # the end of a chunked body: the client sees the stream close cleanly


class Subscriber:
    __slots__ = ("flt", "pos", "raw", "gsock", "chunked", "parked", "pending", "wake", "gone",
                 "addr", "held", "busy", "watch")

    def __init__(self, flt: Filter, pos: Cursor | None, gsock, chunked: bool, addr: str = ""):
        self.flt = flt
        self.pos = pos
        self.gsock = gsock                              # the worker's (gevent) socket, for blocking writes
        self.raw: Any = getattr(gsock, "_sock", None)   # the non-blocking socket underneath (None: none)
        self.chunked = chunked
        self.parked = False                             # waiting at the head, nothing being written
        self.pending: bytes | None = None               # bytes a direct write could not finish
        self.wake: Any = threading.Event()              # a threading.Event; None once held
        self.gone = False                               # its socket failed: the stream must end
        self.addr = addr                                # the client, for its stream count
        self.held = False                               # the socket is the fan-out's: no request greenlet
        self.busy = False                               # held, and a greenlet is writing to it
        self.watch: Any = None                          # held: the watcher of its socket's readability

    def frame_bytes(self, data: bytes) -> bytes:
        """Body bytes as they go on the wire (gunicorn's chunked framing for HTTP/1.1)."""
        return b"%X\r\n%s\r\n" % (len(data), data) if self.chunked else data

    def flush_pending(self) -> None:
        """Finish a direct write that the socket did not take at once (may block this greenlet)."""
        data, self.pending = self.pending, None
        if data:
            self.sendall(data)

    def sendall(self, data: bytes) -> None:
        """A blocking write that parks only this greenlet (held: on the raw socket, through gevent)."""
        if not self.held:
            self.gsock.sendall(data)
            return
        from gevent.socket import wait_write

        view = memoryview(data)
        while view:
            try:
                view = view[self.raw.send(view):]
            except BlockingIOError:
                wait_write(self.raw.fileno())


def nothing(*_args) -> None:
    return None


class Fanout:
    def __init__(self, serve_behind: Callable[[Subscriber], None] = nothing,
                 ended: Callable[[str], None] = nothing):
        self.subscribers: set[Subscriber] = set()
        self.direct = 0        # deliveries written directly
        self.woken = 0         # subscribers woken to catch up themselves
        self.serve_behind = serve_behind   # run in a new greenlet for a held stream that must catch up
        self.ended = ended                 # told the client address of a held stream that ended

    def add(self, sub: Subscriber) -> None:
        self.subscribers.add(sub)

    def discard(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def hold(self, sub: Subscriber) -> bool:
        """Take over a stream parked at the head: its socket becomes the fan-out's (detached from the
        worker's, which gunicorn then drops without closing the connection). False when it cannot."""
        if sub.raw is None or sub.gsock is None or not hasattr(sub.gsock, "detach"):
            return False
        fd = sub.gsock.detach()
        sub.raw = _socket.socket(fileno=fd)
        sub.raw.setblocking(False)
        sub.gsock = sub.wake = None
        sub.held = True
        sub.parked = True
        self._watch(sub)
        return True

    def _watch(self, sub: Subscriber) -> None:
        """Be told when the client of a held stream goes (its socket turns readable: EOF or reset)."""
        from gevent import get_hub

        sub.watch = get_hub().loop.io(sub.raw.fileno(), 1)
        sub.watch.start(self._readable, sub)

    def _readable(self, sub: Subscriber) -> None:
        """In gevent's hub, never blocking: the client closed (end the stream), or sent bytes (dropped)."""
        try:
            if sub.raw.recv(4096):
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        if sub.busy:          # a greenlet is writing to it: that greenlet ends it, its socket is in use
            sub.gone = True
            self._unwatch(sub)
        else:
            self.end(sub)

    @staticmethod
    def _unwatch(sub: Subscriber) -> None:
        if sub.watch is not None:
            sub.watch.stop()
            sub.watch.close()
            sub.watch = None

    def end(self, sub: Subscriber) -> None:
        """A stream is over: a held one's socket is closed here (once) and its client told of."""
        sub.gone = True
        if not sub.held:
            self.subscribers.discard(sub)
            sub.wake.set()
            return
        if sub not in self.subscribers:
            return
        self.subscribers.discard(sub)
        sub.parked = False
        self._unwatch(sub)
        try:
            if sub.chunked:
                sub.raw.send(END_CHUNK)
        except OSError:
            pass
        sub.raw.close()
        self.ended(sub.addr)

    def end_all(self) -> None:
        """End every stream (the backend is gone, or the worker exits): each client reconnects."""
        for sub in list(self.subscribers):
            self.end(sub)
        self.subscribers.clear()

    def wake_all(self) -> None:
        """Make every parked subscriber read again (the state was reloaded)."""
        for sub in list(self.subscribers):
            if sub.held:
                if sub.parked:
                    self._wake(sub)
            else:
                sub.wake.set()

    def held_parked(self) -> list[Subscriber]:
        """The held streams parked at the head with nothing left to write (for heartbeats)."""
        return [s for s in self.subscribers if s.held and s.parked and s.pending is None]

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
        self.woken += 1
        if not sub.held:
            sub.wake.set()
        elif not sub.busy:
            import gevent

            sub.busy, sub.parked = True, False
            gevent.spawn(self.serve_behind, sub)

    def send(self, sub: Subscriber, wire: bytes) -> None:
        """Write ``wire`` to a parked subscriber now, without waiting (a heartbeat, say)."""
        self._send(sub, wire)

    def _send(self, sub: Subscriber, wire: bytes) -> None:
        """One non-blocking send; what the socket did not take is left for the subscriber to finish."""
        try:
            sent = sub.raw.send(wire)
        except BlockingIOError:
            sent = 0
        except OSError:                            # the client has gone: end its stream
            self.end(sub)
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
