"""The contract with gunicorn's gevent worker and gevent's sockets: one test per reliance of
sidecar/worker_io.py, against the real classes, in this process (a real TCP connection, gunicorn's
own request handling, a tiny WSGI app).

A held stream and the ingest fast path work under the framework, so a gunicorn or gevent release
that changed one of these would break them in ways the server tests might show only under load.
setup.cfg pins gunicorn and gevent to the majors these tests pass on. That gunicorn's run loop
hands every connection to ``handle`` at all is shown by the server tests (tests/test_ingest.py,
tests/test_connections.py: the fast path and the per-client gate live there).
"""
from __future__ import annotations

import _socket
import logging
import os
import socket

import gevent
import pytest
from gevent import socket as gsocket
from gunicorn.config import Config as GunicornConfig
from gunicorn.glogging import Logger
from gunicorn.http import errors as gunicorn_errors

from loopstream.sidecar import worker_io
from loopstream.sidecar.connections import parser_error


class Worker(worker_io.Worker):
    """The sidecar's worker base (what ingest.IngestWorker extends), each entry point recorded."""

    def __init__(self, app, head_timeout: float = 10.0):
        cfg = GunicornConfig()
        super().__init__(1, os.getpid(), [], None, 30, cfg, Logger(cfg))
        self.wsgi = app
        self.head_timeout = head_timeout
        self.calls: list = []
        self.errors: list[logging.LogRecord] = []
        collect = logging.Handler(logging.ERROR)
        collect.emit = self.errors.append   # type: ignore[method-assign]
        self.log.error_log.addHandler(collect)

    def connection(self, client, addr, rest):
        self.calls.append("connection")
        rest()

    def handle_request(self, listener_name, req, sock, addr):
        self.calls.append(("handle_request", req.path, sock))
        return super().handle_request(listener_name, req, sock, addr)

    def timeout_ctx(self):
        self.calls.append("timeout_ctx")
        return super().timeout_ctx()

    def refuse(self, client, addr, exc):
        self.calls.append(("refuse", exc))
        super().refuse(client, addr, exc)


class Served:
    """One real TCP connection: the client's end (``peer``) and the worker's (``conn``)."""

    def __init__(self):
        self.listener = gsocket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.peer = gsocket.create_connection(self.listener.getsockname())
        self.conn, self.addr = self.listener.accept()
        self.peer.settimeout(10)

    def handle(self, worker: Worker, request: bytes, more: bool = False) -> None:
        """The client sends ``request`` (then, unless ``more``, nothing more); gunicorn serves the connection."""
        if request:
            self.peer.sendall(request)
        if not more:
            self.peer.shutdown(socket.SHUT_WR)
        worker.handle(self.listener, self.conn, self.addr)   # returns when gunicorn is done with it

    def received(self) -> bytes:
        """Everything the client receives until the connection closes."""
        data = b""
        while chunk := self.peer.recv(65536):
            data += chunk
        return data

    def close(self) -> None:
        self.peer.close()
        self.listener.close()


@pytest.fixture
def served():
    s = Served()
    yield s
    s.close()


def get(path: str, version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: x\r\n\r\n".encode()


def body_of(response: bytes) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), response
    return body


def app_saying(*chunks: bytes, seen: list | None = None):
    def app(environ, start_response):
        if seen is not None:
            seen.append(environ)
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return iter(chunks)
    return app


# -- handle, handle_request, timeout_ctx, handle_error ------------------------------------------------
def test_each_request_of_a_connection_goes_through_handle_request_its_head_read_under_timeout_ctx(served):
    worker = Worker(app_saying(b"x"))
    served.handle(worker, get("/a") + get("/b"))
    requests = [c for c in worker.calls if isinstance(c, tuple)]
    assert worker.calls[0] == "connection"
    assert [(name, path) for name, path, _ in requests] == [("handle_request", "/a"), ("handle_request", "/b")]
    assert all(sock is served.conn for *_, sock in requests)
    assert worker.calls.count("timeout_ctx") >= 2   # each head was read under it
    assert served.received().count(b"HTTP/1.1 200 OK") == 2


def test_a_connection_that_sends_no_head_is_closed_once_timeout_ctx_runs_out(served):
    worker = Worker(app_saying(b"x"), head_timeout=0.2)
    served.handle(worker, b"", more=True)            # the client says nothing and keeps its end open
    assert "timeout_ctx" in worker.calls and served.received() == b""   # closed by the worker, no answer


def test_what_gunicorns_parser_refuses_goes_to_handle_error(served):
    worker = Worker(app_saying(b"x"))
    served.handle(worker, b"GARBAGE\r\n\r\n")
    (refused,) = [c[1] for c in worker.calls if isinstance(c, tuple) and c[0] == "refuse"]
    assert isinstance(refused, gunicorn_errors.ParseException) and parser_error(refused)[0] == 400
    assert not any(isinstance(c, tuple) and c[0] == "handle_request" for c in worker.calls)


# -- the request's socket, and gunicorn's framing of a streamed body ------------------------------------
@pytest.mark.parametrize("version, chunked", [("1.1", True), ("1.0", False)])
def test_the_app_gets_the_connection_as_gunicorn_socket_and_a_body_framed_as_frame_says(served, version, chunked):
    seen: list[dict] = []
    served.handle(Worker(app_saying(b"data: one\n\n", b"data: two\n\n", seen=seen)), get("/s", version))
    (environ,) = seen
    assert worker_io.request_socket(environ) is served.conn and worker_io.chunked(environ) is chunked
    framed = worker_io.frame(b"data: one\n\n", chunked) + worker_io.frame(b"data: two\n\n", chunked)
    assert body_of(served.received()) == (framed + worker_io.END_CHUNK if chunked else framed)


def test_only_an_http1_request_offers_its_socket():
    assert worker_io.request_socket({"SERVER_PROTOCOL": "HTTP/2", "gunicorn.socket": object()}) is None
    assert worker_io.request_socket({}) is None


# -- EPIPE means the client left; detach ------------------------------------------------------------------
def handing_off(taken: list):
    """A stream's body: one frame through gunicorn, then its connection taken and HandedOff raised."""
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/event-stream")])

        def body():
            yield b"data: first\n\n"
            if taken is not None:
                taken.append(worker_io.take(environ["gunicorn.socket"]))
            raise worker_io.HandedOff()
        return body()
    return app


def test_epipe_out_of_a_body_ends_the_request_quietly(served):
    """Nothing more written (no closing chunk), nothing logged as an error, nothing answered."""
    worker = Worker(handing_off(taken=None))
    served.handle(worker, get("/stream/progress"))
    assert body_of(served.received()) == worker_io.frame(b"data: first\n\n", True)   # then closed: no end chunk
    assert worker.errors == [] and not any(isinstance(c, tuple) and c[0] == "refuse" for c in worker.calls)


def test_a_taken_connection_outlives_gunicorns_end_of_the_request(served):
    taken: list = []
    worker = Worker(handing_off(taken))
    served.handle(worker, get("/stream/progress"))   # gunicorn is done: it closed its socket object
    (raw,) = taken
    assert isinstance(raw, _socket.socket) and served.conn.fileno() == -1
    worker_io.send_all(raw, worker_io.frame(b"data: later\n\n", True) + worker_io.END_CHUNK)
    raw.close()
    assert body_of(served.received()) == (worker_io.frame(b"data: first\n\n", True)
                                          + worker_io.frame(b"data: later\n\n", True) + worker_io.END_CHUNK)
    assert worker.errors == []


def test_take_leaves_what_is_not_a_gevent_socket_alone():
    plain = socket.socket()
    try:
        assert worker_io.take(plain) is None and plain.fileno() != -1
    finally:
        plain.close()


# -- _sock --------------------------------------------------------------------------------------------------
def test_a_gevent_socket_wraps_a_non_blocking_socket_on_the_same_descriptor(served):
    served.conn.setblocking(True)                     # as gunicorn's worker sets it
    raw = worker_io.raw_socket(served.conn)
    assert isinstance(raw, _socket.socket) and raw.fileno() == served.conn.fileno()
    assert raw.gettimeout() == 0.0
    served.peer.sendall(b"POST /api/events")
    gsocket.wait_read(raw.fileno(), timeout=10)
    assert raw.recv(64, socket.MSG_PEEK) == b"POST /api/events"        # a peek takes nothing off
    assert served.conn.recv(64) == b"POST /api/events"
    with pytest.raises(BlockingIOError):              # a full socket refuses at once, never waits
        while True:
            raw.send(b"x" * 65536)


# -- gevent's io watcher and wait_write ---------------------------------------------------------------------
def test_the_io_watcher_calls_back_in_the_hub_when_the_client_closes(served):
    raw = worker_io.take(served.conn)
    told: list[str] = []
    watcher = worker_io.watch_readable(raw, told.append, "readable")
    gevent.sleep(0.05)
    assert told == []                                 # an SSE client sends nothing
    served.peer.close()
    with gevent.Timeout(10):
        while not told:
            gevent.sleep(0.01)
    worker_io.unwatch(watcher)
    assert raw.recv(1) == b""                         # what it meant: the client has gone
    raw.close()


def test_send_all_parks_only_its_greenlet_until_the_client_reads(served):
    raw = worker_io.take(served.conn)
    data = os.urandom(4 << 20)                         # far more than the socket buffers hold
    writer = gevent.spawn(worker_io.send_all, raw, data)
    got = bytearray()
    while len(got) < len(data):                        # this greenlet runs while the writer waits
        got += served.peer.recv(1 << 20)
    writer.join(10)
    assert writer.successful() and bytes(got) == data
    raw.close()
