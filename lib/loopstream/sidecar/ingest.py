"""POST /api/events without the framework: the sidecar's gunicorn worker and its ingest fast path.

A single-event POST spent about half its time in the framework — gunicorn's
request parsing, the WSGI environ, Flask's dispatch and response objects —
and a fifth doing the work. So the worker (``IngestWorker``, gunicorn's gevent
worker with its connection handler extended) looks at each request on a
connection first, with ``MSG_PEEK``: nothing leaves the socket unless it is
served here. A request is served here only when it is plainly an event POST
that passes every guard:

- ``POST /api/events`` or ``POST /emit`` over HTTP/1.1, its whole head (at most
  8 KiB) in one read, every header line well formed;
- a ``Content-Length`` of at most 64 KiB, given once; no ``Transfer-Encoding``,
  ``Expect``, ``Upgrade`` or ``Origin`` (a browser's request goes through the
  CORS code); ``Connection`` absent, ``keep-alive`` or ``close``;
- the Host, Content-Type and token checks of guard.py pass.

Anything else — another path, a refused Host, a chunked body, a head that
arrives in pieces — is left on the socket untouched, and gunicorn and Flask
serve the rest of the connection exactly as they always have (every refusal's
answer is theirs). What the fast path does is what the Flask view does,
through the same function (``routes.events_in.accept``): strict parsing and
validation, the rate limits and live-run cap, the journal before the 201, the
fan-out. Its error answers are built by the app's own handlers, so a 400, 429
or 503 reads the same whichever path gave it.

``loop serve --no-fast-path`` turns it off (and ``--access-log`` does, so that
gunicorn serves, and logs, every request).
"""
from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable
from email.utils import formatdate
from time import time
from typing import TYPE_CHECKING, Any

from loopstream.sidecar import worker_io
from loopstream.sidecar.connections import Gate, json_error, parser_error, too_many_connections
from loopstream.sidecar.forwarded import Trusted
from loopstream.sidecar.guard import HostPolicy, is_json_content_type, token_ok

if TYPE_CHECKING:
    from flask import Flask

    from loopstream.sidecar.hub import Hub

log = logging.getLogger("loopstream.server")

MAX_HEAD = 8192
MAX_BODY = 64 * 1024          # routes.common.MAX_BODY (not imported: the master loads this module)
PEEK = MAX_HEAD + MAX_BODY
TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
HEAD_RE = re.compile(rb"POST (?:/api/events|/emit) HTTP/1\.1\r\n((?:" + TOKEN + rb":[\t\x20-\x7e]*\r\n)*)\r\n")
FIELD_RE = re.compile(rb"(" + TOKEN + rb"):([\t\x20-\x7e]*)\r\n")   # greedy, stripped after: linear time
NOT_HERE = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"origin"})
ONCE = frozenset({b"host", b"content-length", b"content-type", b"authorization", b"connection",
                  b"x-forwarded-for", b"x-real-ip"})   # twice: gunicorn joins them, as for Flask
REASONS = {201: b"Created", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 413: b"Payload Too Large",
           429: b"Too Many Requests", 500: b"Internal Server Error", 503: b"Service Unavailable"}

CLOSE, GUNICORN = "close", "gunicorn"     # how a fast-path connection ends: closed, or handed on
YIELD_EVERY = 16       # requests answered back to back on one connection before other greenlets get a turn


class Request:
    """One event POST read off the socket: its body, whether the client asked to close, and the
    forwarded headers a trusted proxy may have set (X-Forwarded-For, X-Real-IP)."""

    __slots__ = ("body", "close", "forwarded_for", "real_ip")

    def __init__(self, body: bytes, close: bool, forwarded_for: bytes | None = None, real_ip: bytes | None = None):
        self.body, self.close = body, close
        self.forwarded_for, self.real_ip = forwarded_for, real_ip


class FastIngest:
    """Serves the event POSTs of one worker's connections until one is not its to serve."""

    def __init__(self, app: Flask, keepalive: float, header_timeout: float = 10.0):
        from loopstream.core import events
        from loopstream.sidecar.routes.events_in import accept  # here, in the worker: the master imports this module

        self.accept, self.dumps = accept, events.dumps
        self.app = app
        self.hub: Hub = app.extensions["loop"]
        cfg = self.hub.config
        self.policy = HostPolicy(cfg.host, cfg.allowed_hosts, cfg.cors)
        self.token = cfg.token
        self.keepalive = keepalive
        self.header_timeout = header_timeout      # for a connection's first request (then: keep-alive)
        self.hosts: dict[bytes | None, bool] = {}     # Host header -> allowed (policy.host_ok, cached)
        self._date, self._date_at = b"", -1
        # One buffer for every connection's peek: ``recv(PEEK)`` would allocate (and shrink) 72 KiB a request.
        self.peek_buf = bytearray(PEEK)
        self.peek_view = memoryview(self.peek_buf)

    def serve(self, sock: Any, addr: Any, alive: Callable[[], bool]) -> str:
        """Serve the connection's event POSTs: CLOSE when the connection is over (the caller closes
        it), GUNICORN when the next request is for gunicorn (nothing of it has been read)."""
        peer = client_of(addr)
        sock.settimeout(self.header_timeout)
        raw = worker_io.raw_socket(sock)       # the non-blocking socket under gevent's: tried first
        served = 0
        try:
            while True:
                req = self.read(sock, raw)
                if not isinstance(req, Request):
                    return req
                closing = req.close or not alive()
                # per request: a proxy's kept-alive connection carries many clients' requests
                client = self.hub.client(peer, latin(req.forwarded_for), latin(req.real_ip))
                send(sock, raw, self.answer(req.body, client, closing))
                if closing:
                    return CLOSE
                served += 1
                if served == 1:
                    sock.settimeout(self.keepalive)
                if served % YIELD_EVERY == 0:
                    worker_io.sleep(0)   # a client that pipelines without pause must not starve the worker
        except OSError:       # reset, broken pipe, or idle past keep-alive (socket.timeout)
            return CLOSE
        finally:
            sock.setblocking(True)

    def read(self, sock: Any, raw: Any) -> Request | str:
        """The next request if it is the fast path's (taken off the socket), else where it goes."""
        try:
            n = raw.recv_into(self.peek_buf, PEEK, socket.MSG_PEEK)   # usually there already: no wait, no timer
        except BlockingIOError:
            n = sock.recv_into(self.peek_buf, PEEK, socket.MSG_PEEK)  # wait (gevent), up to the keep-alive timeout
        peeked = self.peek_view[:n].tobytes()   # copied out at once: no other greenlet runs in between
        if not peeked:
            return CLOSE
        m = HEAD_RE.match(peeked, 0, MAX_HEAD)
        if m is None:
            return GUNICORN
        fields = self.fields(m.group(1))
        if fields is None:
            return GUNICORN
        length = int(fields[b"content-length"])
        head, total = m.end(), m.end() + length
        if len(peeked) >= total:
            data = recv_exactly(sock, total)
            body = data[head:]
        else:
            recv_exactly(sock, head)
            body = recv_exactly(sock, length)
        return Request(body, fields.get(b"connection", b"").lower() == b"close",
                       fields.get(b"x-forwarded-for"), fields.get(b"x-real-ip"))

    def fields(self, block: bytes) -> dict[bytes, bytes] | None:
        """The head's fields when every guard passes and nothing needs gunicorn; else None."""
        fields: dict[bytes, bytes] = {}
        for name, raw in FIELD_RE.findall(block):
            name, value = name.lower(), raw.strip(b" \t")
            if name in NOT_HERE or (name in ONCE and name in fields):
                return None
            fields[name] = value
        length = fields.get(b"content-length", b"")
        if not (length.isdigit() and len(length) <= 6 and int(length) <= MAX_BODY):
            return None
        if fields.get(b"connection", b"keep-alive").lower() not in (b"keep-alive", b"close"):
            return None
        ok = (self.host_ok(fields.get(b"host")) and is_json_content_type(latin(fields.get(b"content-type")))
              and token_ok(self.token, latin(fields.get(b"authorization")) or ""))
        return fields if ok else None

    def host_ok(self, host: bytes | None) -> bool:
        ok = self.hosts.get(host)
        if ok is None:
            ok = self.policy.host_ok(latin(host))
            if len(self.hosts) < 256:
                self.hosts[host] = ok
        return ok

    def answer(self, body: bytes, client: str, closing: bool) -> bytes:
        """The whole HTTP response to one event POST, as the Flask view would give it."""
        h = self.hub
        h.touch()
        try:
            ids = self.accept(h, body, client)
        except Exception as e:       # noqa: BLE001 — each kind is answered by the app's own handler
            return self.refusal(e, closing)
        return self.response(201, self.dumps({"ids": ids}).encode(), {}, closing)

    def refusal(self, e: Exception, closing: bool) -> bytes:
        """A refused or failed POST, answered by the handler Flask would use (routes/middleware.py)."""
        from loopstream.core import events as ev
        from loopstream.sidecar.brokers.memory import BackendDown
        from loopstream.sidecar.hub import Refused
        from loopstream.sidecar.routes import middleware as hooks
        from loopstream.sidecar.routes.events_in import invalid

        with self.app.app_context():
            if isinstance(e, ev.EventError):
                resp = invalid(self.hub, e)
            elif isinstance(e, Refused):
                resp = hooks.refused(e)
            elif isinstance(e, BackendDown):
                resp = hooks.backend_down(e)
            else:
                resp = hooks.unexpected(e)
        extra = {k: v for k, v in resp.headers.items() if k not in ("Content-Type", "Content-Length")}
        return self.response(resp.status_code, resp.get_data(), extra, closing or resp.status_code == 500)

    def response(self, status: int, payload: bytes, extra: dict[str, str], closing: bool) -> bytes:
        head = [b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"Error")), b"Date: " + self.date(),
                b"Content-Type: application/json", b"Content-Length: %d" % len(payload)]
        head += [f"{k}: {v}".encode("latin-1") for k, v in extra.items() if k != "Connection"]
        if closing:
            head.append(b"Connection: close")
        return b"\r\n".join(head) + b"\r\n\r\n" + payload

    def date(self) -> bytes:
        now = int(time())
        if now != self._date_at:
            self._date, self._date_at = formatdate(now, usegmt=True).encode(), now
        return self._date


def client_of(addr: Any) -> str:
    """The client address of a connection (what its limits are counted by)."""
    return addr[0] if isinstance(addr, tuple) and addr else "?"


def latin(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def send(sock: Any, raw: Any, data: bytes) -> None:
    """A response is small: the raw socket almost always takes it whole at once; else gevent finishes."""
    try:
        sent = raw.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.sendall(data[sent:])


def recv_exactly(sock: Any, n: int) -> bytes:
    """``n`` bytes off the socket (a client that closes part-way is an OSError, ending the connection)."""
    parts, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise ConnectionResetError("the client closed the connection mid-request")
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class IngestWorker(worker_io.Worker):
    """The sidecar's gunicorn worker (gevent): event POSTs served by FastIngest before gunicorn parses
    them (unless --no-fast-path), the connections of one client capped and their request heads
    timed (connections.py), and gunicorn's own refusals answered in JSON. What it relies on in
    gunicorn is worker_io's."""

    fast: FastIngest | None = None
    gate: Gate | None = None
    proxies: Trusted = Trusted()

    def connection(self, client: Any, addr: Any, rest: Callable[[], None]) -> None:
        gate, who = self.limits(), client_of(addr)
        if self.proxies.trusts(who):   # a proxy's connections carry many clients: nginx's limit_conn bounds them
            self.serve(client, addr, rest)
            return
        if not gate.enter(who):
            self.wsgi_app.extensions["loop"].metrics.reject("too_many_connections")
            refuse(client, too_many_connections(gate.cap))
            return
        try:
            self.serve(client, addr, rest)
        finally:
            gate.leave(who)

    def serve(self, client: Any, addr: Any, rest: Callable[[], None]) -> None:
        fast = self.fast_path()
        if fast is not None:
            ended = True
            try:
                ended = fast.serve(client, addr, lambda: self.alive) == CLOSE
            except Exception:     # a bug, never the client's doing: log it, drop this connection only
                log.exception("loop: the ingest fast path failed; the connection is closed")
            finally:              # also when gunicorn kills the greenlet at shutdown (GreenletExit)
                if ended:
                    close_quietly(client)
            if ended:
                return
        rest()

    def limits(self) -> Gate:
        """The per-client gate and the head timeout, from the sidecar's config (the app is loaded)."""
        if self.gate is None:
            hub = self.wsgi_app.extensions["loop"]
            self.gate, self.head_timeout = Gate(hub.config.max_connections_per_client), hub.config.header_timeout
            self.proxies = hub.trusted
        return self.gate

    def refuse(self, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's refusals and failures, answered in JSON (connections.parser_error)."""
        status, reason, code, message = parser_error(exc)
        if status >= 500:
            log.error("loop: error handling a request from %s", client_of(addr), exc_info=exc)
        else:
            log.info("loop: invalid request from %s: %s", client_of(addr), exc)
        refuse(client, json_error(status, reason, code, message))

    def fast_path(self) -> FastIngest | None:
        """Built on the first connection (the app is loaded by then); None with --no-fast-path."""
        if self.fast is None and self.wsgi_app.extensions["loop"].config.fast_path:
            self.fast = FastIngest(self.wsgi_app, self.keepalive, self.head_timeout)
        return self.fast


def refuse(sock: Any, answer: bytes) -> None:
    """Write a refusal if the socket takes it now (never wait on a client being refused), then close."""
    try:
        raw = worker_io.raw_socket(sock)
        raw.setblocking(False)
        raw.send(answer)
    except OSError:
        pass
    close_quietly(sock)


def close_quietly(sock: Any) -> None:
    try:
        sock.close()
    except OSError:
        pass
