"""A stream's life (sidecar/streams.py) without a server: a hub, and real gevent sockets in this process
for the streams that are handed off. What the phases promise: a stream waiting in its request is woken
by a publish; one told to end leaves its request, which uncounts it; one handed off is written by a
publish directly, caught up from the buffer (or reset) when it is behind, and ends when its client goes."""
from __future__ import annotations

import socket
import threading

import gevent
import pytest
from gevent import socket as gsocket

from loopstream.core import events as ev
from loopstream.sidecar import worker_io
from loopstream.sidecar.brokers.memory import Filter
from loopstream.sidecar.config import Config
from loopstream.sidecar.hub import Hub
from loopstream.sidecar.streams import CATCHING_UP, ENDING, GONE, IN_REQUEST, PARKED, WAITING, Stream


def make_hub(**cfg) -> Hub:
    return Hub(Config(rate=0, **{"heartbeat": 60.0, **cfg}))


def note(i: int) -> ev.Draft:
    return ev.Draft("note", "r", {"i": i})


def poll_until(predicate, what: str, seconds: float = 10.0) -> None:
    with gevent.Timeout(seconds, AssertionError(f"timed out waiting for {what}")):
        while not predicate():
            gevent.sleep(0.005)


def test_a_stream_moves_only_along_its_phases():
    s = Stream(Filter(), None)
    assert s.phase is IN_REQUEST
    with pytest.raises(RuntimeError, match="from in its request to catching up"):
        s.move(CATCHING_UP)
    s.move(GONE)
    with pytest.raises(RuntimeError):
        s.move(PARKED)


# -- in its request: nothing to hand off (another server, a test client) --------------------------
class InRequest:
    """A stream with no connection to take, its body read by a thread as a WSGI server would."""

    def __init__(self, hub: Hub, addr: str = "a"):
        hub.open_stream(addr)
        self.hub, self.stream = hub, Stream(Filter(), None, addr=addr)
        self.body = hub.streams.body(self.stream)
        assert next(self.body).startswith(b"retry:") and b"event: hello" in next(self.body)
        self.got: list[bytes] = []
        self.reader = threading.Thread(target=self._read)
        self.reader.start()

    def _read(self) -> None:
        self.got.extend(self.body)    # until the body ends


def test_a_stream_waiting_in_its_request_is_woken_by_a_publish():
    hub = make_hub()
    r = InRequest(hub)
    poll_until(lambda: r.stream.phase is WAITING, "the stream to wait at the head")
    (e,) = hub.publish([note(1)])
    poll_until(lambda: any(e.id.encode() in chunk for chunk in r.got), "the event in the body")
    assert hub.streams.woken == 1 and hub.streams.direct == 0
    hub.streams.end(r.stream)
    r.reader.join(10)


def test_a_stream_ended_in_its_request_leaves_it_and_its_requests_close_uncounts_it():
    hub = make_hub()
    r = InRequest(hub)
    poll_until(lambda: r.stream.phase is WAITING, "the stream to wait at the head")
    hub.streams.end(r.stream)
    assert r.stream.phase is ENDING
    r.reader.join(10)
    assert not r.reader.is_alive() and hub.metrics.subscribers == 1   # the body is over, the request not yet
    hub.streams.request_closed(r.stream)
    assert r.stream.phase is GONE and hub.metrics.subscribers == 0 and r.stream not in hub.streams.open


# -- handed off ---------------------------------------------------------------------------------------
class Held:
    """A stream on a real loopback connection, handed off as under gunicorn (HTTP/1.1: chunked)."""

    def __init__(self, hub: Hub, cursor=None, small_buffers: bool = False):
        listener = gsocket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        self.peer = gsocket.socket()
        if small_buffers:            # set before connecting: the window it offers stays small
            self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.peer.connect(listener.getsockname())
        conn, _ = listener.accept()
        if small_buffers:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        listener.close()
        hub.open_stream("a")
        self.hub, self.stream = hub, Stream(Filter(), cursor, conn, True, "a")
        body = hub.streams.body(self.stream)
        self.before = list(self._until_handed_off(body))
        self.buf = b""

    @staticmethod
    def _until_handed_off(body):
        with pytest.raises(worker_io.HandedOff):
            yield from body

    def read_until(self, needle: bytes) -> bytes:
        with gevent.Timeout(10, AssertionError(f"{needle!r} never came; got {self.buf[-300:]!r}")):
            while needle not in self.buf:
                self.buf += self.peer.recv(1 << 20)
        return self.buf


def test_a_held_stream_is_written_directly_and_ends_when_its_client_goes():
    hub = make_hub()
    h = Held(hub)
    assert h.stream.phase is PARKED and h.stream.wake is None
    (e,) = hub.publish([note(1)])
    assert hub.streams.direct == 1 and hub.streams.woken == 0 and h.stream.pos == ev.parse_id(e.id)
    (frame,) = [e.frame]
    assert h.read_until(frame).endswith(worker_io.frame(frame, True))   # framed as gunicorn would
    h.peer.close()
    poll_until(lambda: h.stream.phase is GONE, "the stream to end")
    assert hub.metrics.subscribers == 0 and h.stream not in hub.streams.open


def test_a_held_stream_that_is_behind_is_caught_up_from_the_buffer_then_parked_again():
    hub = make_hub()
    (first,) = hub.publish([note(0)])
    h = Held(hub, cursor=(hub.broker.epoch, 0))            # resumes before the buffer's first event
    assert first.frame in b"".join(h.before)                # caught up in its request, then handed off
    h.stream.pos = (hub.broker.epoch, 0)                    # as if a publish had not reached it
    (e,) = hub.publish([note(1)])
    assert hub.streams.woken == 1 and h.stream.phase is CATCHING_UP
    h.read_until(e.frame)
    poll_until(lambda: h.stream.phase is PARKED, "the stream to park again")
    assert h.buf.count(first.frame) == 1                    # from the buffer: what it lacked, once
    h.peer.close()
    poll_until(lambda: h.stream.phase is GONE, "the stream to end")


def test_a_held_stream_whose_cursor_left_the_buffer_gets_a_reset_then_goes_on():
    hub = make_hub(buffer=3)
    h = Held(hub)
    gone_by = h.stream.pos
    for i in range(5):
        hub.publish([note(i)])
    h.read_until(b'"i":4')
    h.stream.pos = gone_by                                  # behind by more than the buffer holds
    (e,) = hub.publish([note(5)])
    h.read_until(b"event: reset")
    poll_until(lambda: h.stream.phase is PARKED, "the stream to park again")
    assert hub.metrics.resets == 1 and h.stream.pos == ev.parse_id(e.id)
    h.peer.close()
    poll_until(lambda: h.stream.phase is GONE, "the stream to end")


def test_a_client_that_leaves_while_its_stream_catches_up_is_ended_by_the_writer():
    hub = make_hub()
    h = Held(hub, small_buffers=True)
    big = {"text": "x" * 3000}
    for _ in range(1000):                                    # until the socket does not take a write whole
        hub.publish([ev.Draft("output", "r", big)])
        if h.stream.phase is not PARKED:
            break
    assert h.stream.phase is CATCHING_UP and hub.metrics.subscribers == 1
    h.peer.close()
    poll_until(lambda: h.stream.phase is GONE, "the writer to end the stream")
    assert hub.metrics.subscribers == 0


def test_ending_every_stream_closes_the_held_ones_cleanly():
    hub = make_hub()
    h = Held(hub)
    hub.streams.end_all()
    assert h.stream.phase is GONE and hub.metrics.subscribers == 0
    assert h.read_until(worker_io.END_CHUNK).endswith(worker_io.END_CHUNK)


def test_a_stream_ended_while_its_catch_up_read_yields_ends_quietly(caplog):
    """On Redis the catch-up's read can yield (a GET); the sidecar may end every stream meanwhile."""
    hub = make_hub()
    hub.publish([note(0)])
    h = Held(hub, cursor=(hub.broker.epoch, 0))
    h.stream.pos = (hub.broker.epoch, 0)                    # behind: the next publish wakes its writer
    read = hub.next_frames

    def read_then_everything_ends(s):
        chunk = read(s)
        if chunk is None:                                   # caught up: about to park again, but
            hub.streams.end_all()                           # the read yielded and every stream ended
        return chunk

    hub.next_frames = read_then_everything_ends
    hub.publish([note(1)])
    assert hub.streams.woken == 1
    poll_until(lambda: h.stream.phase is GONE, "the stream to end")
    gevent.sleep(0.05)
    assert "catching up a held stream failed" not in caplog.text and hub.metrics.subscribers == 0
