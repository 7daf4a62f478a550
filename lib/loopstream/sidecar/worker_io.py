"""Everything the sidecar relies on in gunicorn's gevent worker and in gevent, behind one small interface.

A held stream (streams.py) and the ingest fast path (ingest.py) go under the
framework, so they lean on behaviour that neither gunicorn nor gevent
documents as an API. Each reliance is used only here, and each has a contract
test in tests/test_worker_contract.py, run against the real classes; setup.cfg
pins gunicorn and gevent to the majors those tests pass on:

- **the request's socket**: gunicorn puts a request's connection in the WSGI
  environ as ``gunicorn.socket``, and frames an HTTP/1.1 body of unknown
  length in chunks (``frame``), an HTTP/1.0 one not at all;
- **``_sock``**: a gevent socket wraps a non-blocking ``_socket.socket`` on
  the same descriptor; a ``send()`` or ``MSG_PEEK`` on it never waits (the
  fan-out's direct writes, the fast path's peeks);
- **``detach``**: a gevent socket's ``detach()`` hands its descriptor over,
  and gunicorn's later close of the socket object leaves the connection open
  (a stream handed off to the fan-out, ``take``);
- **EPIPE means the client left**: an ``OSError`` with ``EPIPE`` out of a
  response body ends gunicorn's request quietly: nothing more is written (no
  closing chunk), no error is logged or answered (``HandedOff``);
- **``handle``, ``handle_request``, ``timeout_ctx``, ``handle_error``**:
  gunicorn's gevent worker calls ``handle(listener, client, addr)`` once per
  connection in a greenlet of its own and, from it, ``handle_request`` once
  per request, each head read under ``timeout_ctx()``; what its parser
  refuses goes to ``handle_error(req, client, addr, exc)`` (``Worker``);
- **gevent's io watcher** (``get_hub().loop.io(fd, READ)``) calls back in the
  hub, never blocking, when a descriptor turns readable (``watch_readable``),
  and ``wait_write`` parks only the calling greenlet (``send_all``).
"""
from __future__ import annotations

import _socket
import errno
from collections.abc import Callable
from functools import partial
from typing import Any

import gevent
from gevent.socket import wait_write
from gunicorn.workers.ggevent import GeventWorker

READ = 1   # libev's EV_READ, what gevent's loop.io() takes for "readable"


# -- a request's connection ------------------------------------------------------------------------
def request_socket(environ: dict) -> Any | None:
    """The connection a stream may be handed off on: gunicorn's socket of an HTTP/1.x request (an
    HTTP/2 connection carries other requests too), else None (another server, a test client)."""
    if environ.get("SERVER_PROTOCOL") not in ("HTTP/1.0", "HTTP/1.1"):
        return None
    return environ.get("gunicorn.socket")


def chunked(environ: dict) -> bool:
    """Does gunicorn frame this request's streamed body in chunks (HTTP/1.1), or send it bare (HTTP/1.0)?"""
    return environ.get("SERVER_PROTOCOL") == "HTTP/1.1"


def frame(data: bytes, chunked: bool) -> bytes:
    """Body bytes as gunicorn puts them on the wire: one chunk for HTTP/1.1, bare for HTTP/1.0."""
    return b"%X\r\n%s\r\n" % (len(data), data) if chunked else data


END_CHUNK = b"0\r\n\r\n"   # the end of a chunked body: the client sees the stream close cleanly


def raw_socket(sock: Any) -> Any:
    """The non-blocking socket under a gevent socket (``_sock``): a send or peek on it never waits."""
    return getattr(sock, "_sock", sock)


def take(sock: Any) -> Any | None:
    """Take a request's connection over: its descriptor as a non-blocking socket of our own, the gevent
    socket left empty, so gunicorn's close of it does not close the connection. None when ``sock``
    is not a gevent socket (nothing is taken)."""
    if getattr(sock, "_sock", None) is None or not hasattr(sock, "detach"):
        return None
    raw = _socket.socket(fileno=sock.detach())   # the C socket: lighter than socket.socket, all we need
    raw.setblocking(False)
    return raw


class HandedOff(BrokenPipeError):
    """Raised out of a response body whose connection was taken (``take``): gunicorn then ends the
    request as if the client had gone (no closing chunk written, no error logged) and closes its
    emptied socket object, not the connection."""

    def __init__(self) -> None:
        super().__init__(errno.EPIPE, "stream handed to the fan-out")


# -- a held connection -----------------------------------------------------------------------------
def watch_readable(raw: Any, callback: Callable[[Any], None], arg: Any) -> Any:
    """Call ``callback(arg)`` in gevent's hub whenever ``raw`` turns readable (for an SSE client,
    which sends nothing: it closed or reset). Stop it with ``unwatch``."""
    watcher = gevent.get_hub().loop.io(raw.fileno(), READ)
    watcher.start(callback, arg)
    return watcher


def unwatch(watcher: Any) -> None:
    watcher.stop()
    watcher.close()


def send_all(raw: Any, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking socket, parking only this greenlet while it is full."""
    view = memoryview(data)
    while view:
        try:
            view = view[raw.send(view):]
        except BlockingIOError:
            wait_write(raw.fileno())


def spawn(fn: Callable[..., Any], *args: Any) -> None:
    gevent.spawn(fn, *args)


def sleep(seconds: float) -> None:
    gevent.sleep(seconds)


# -- the worker ------------------------------------------------------------------------------------
class Worker(GeventWorker):
    """gunicorn's gevent worker, entered only where the module's docstring says. A subclass serves a
    connection (``connection``: it calls ``rest()`` to let gunicorn serve the rest of it), bounds
    the wait for a request's head (``head_timeout``) and answers gunicorn's refusals (``refuse``)."""

    head_timeout = 10.0
    quitting = False

    @property
    def wsgi_app(self) -> Any:
        """The WSGI app this worker loaded (gunicorn's ``wsgi``)."""
        return self.wsgi

    @property
    def keepalive(self) -> float:
        """gunicorn's --keep-alive: how long an idle connection is kept between requests."""
        return float(self.cfg.keepalive)

    def connection(self, client: Any, addr: Any, rest: Callable[[], None]) -> None:
        rest()

    def refuse(self, client: Any, addr: Any, exc: BaseException) -> None:
        GeventWorker.handle_error(self, None, client, addr, exc)

    # gunicorn's entry points
    def handle(self, listener, client, addr) -> None:
        """gunicorn: one greenlet per accepted connection."""
        self.connection(client, addr, partial(GeventWorker.handle, self, listener, client, addr))

    def handle_request(self, listener_name, req, sock, addr):
        """gunicorn's, then a turn for the other greenlets: a client pipelining requests without
        pause would otherwise keep the worker to itself until gunicorn's timeout kills it. Only after
        a request that ended normally: a stream handed off ends by an exception (``HandedOff``), and
        a switch on that path too was measured to cost every held stream ~5 KB more (7 KB a stream at
        5,000) and a broadcast to 10,000 some 3 s instead of 0.26 s."""
        result = super().handle_request(listener_name, req, sock, addr)
        gevent.sleep(0)
        return result

    def timeout_ctx(self):
        """gunicorn reads each request's head under this (its keep-alive loop), and waits for the
        next one under it too."""
        return gevent.Timeout(self.head_timeout, False)

    def handle_error(self, req, client, addr, exc) -> None:
        self.refuse(client, addr, exc)

    def handle_quit(self, sig, frame) -> None:
        """Quit once. A Ctrl-C in `loop serve`'s terminal reaches the worker, then the master's SIGQUIT
        does too: a second quit would run during the interpreter's shutdown and print a traceback."""
        if not self.quitting:
            self.quitting = True
            super().handle_quit(sig, frame)
