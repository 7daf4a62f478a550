"""Connections against a real `loop serve`, over raw sockets from several loopback addresses
(127.0.0.2 is another client than 127.0.0.1): gunicorn's own refusals are JSON and never a 5xx
for a client's mistake; one client's half-open connections leave the server to the others; a
closed stream frees its client's slot at once; a reconnect storm on Redis is served.
"""
from __future__ import annotations

import http.client
import json
import socket
import time

import pytest
from gunicorn.http import errors as gunicorn_errors

from conftest import wait_for
from loopstream.sidecar.connections import PARSER_ERRORS

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def connect(port: int, source: str = "127.0.0.1", timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))


def answer(sock: socket.socket) -> tuple[int, dict, bytes]:
    """The status, headers and (Content-Length) body of the response on ``sock``."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed by the server after {buf!r}")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def get(port: int, path: str, source: str = "127.0.0.1", timeout: float = 10) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    conn.request("GET", path)
    return conn.getresponse()


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""
    except OSError:
        return True


def test_every_gunicorn_error_class_the_table_names_exists():
    """The contract with gunicorn's parser: each class connections.parser_error maps is still there."""
    for name, *_ in PARSER_ERRORS:
        assert issubclass(getattr(gunicorn_errors, name), Exception), name


REFUSED = [
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414, "uri_too_long"),
    (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
    (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", 431, "headers_too_large"),
    (b"POST /api/runs/r/stop HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: something\r\nContent-Length: 0\r\n\r\n",
     417, "expectation_failed"),
    (b"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: foo\r\n\r\n", 400, "bad_request"),         # gunicorn says 501
    (b"GET /healthz HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", 400, "bad_request"),
]


def test_what_gunicorn_refuses_is_answered_in_json_and_never_a_5xx(server):
    for request, status, code in REFUSED:
        with connect(server.port) as sock:
            sock.sendall(request)
            got, headers, body = answer(sock)
        assert (got, headers["content-type"]) == (status, "application/json"), request[:60]
        assert json.loads(body)["error"] == code and json.loads(body)["message"]
    assert server.get("/healthz").status_code == 200


def test_half_open_connections_of_one_client_leave_the_server_to_the_others(make_server):
    """2 x --max-streams connections from 127.0.0.1 that never finish a request (more than the
    worker's connection slots): past --max-connections-per-client they are refused at once, the
    rest are closed after --header-timeout, and /healthz answers 127.0.0.2 meanwhile."""
    srv = make_server("--max-streams", "1000", "--max-connections-per-client", "64", "--header-timeout", "2")
    flood = []
    try:
        for i in range(2000):
            sock = connect(srv.port)
            if i % 2:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.")   # a head that never ends
            flood.append(sock)
        started = time.monotonic()
        resp = get(srv.port, "/healthz", source="127.0.0.2")
        took = time.monotonic() - started
        assert resp.status == 200 and json.loads(resp.read())["ok"] is True
        print(f"/healthz for 127.0.0.2 under 2,000 half-open connections from 127.0.0.1: {took * 1000:.1f} ms")
        wait_for(lambda: sum(map(closed_by_server_now, flood)) >= 2000 - 64, 10, interval=0.2,
                 message="the connections past the cap to be refused")
        # The 64 it kept are closed once --header-timeout passes; then the client is served again.
        wait_for(lambda: all(closed_by_server_now(s) for s in flood), 15, interval=0.2,
                 message="every unfinished connection to be closed after --header-timeout")
        with connect(srv.port) as sock:
            sock.sendall(HEALTHZ)
            assert answer(sock)[0] == 200
    finally:
        for sock in flood:
            sock.close()


def closed_by_server_now(sock: socket.socket) -> bool:
    """Has the server closed ``sock`` (EOF, a reset, or its refusal then EOF)? Never waits."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
            if b"too_many_connections" in data:
                continue
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def test_a_refused_connection_is_told_why(make_server):
    srv = make_server("--max-connections-per-client", "2")
    held = [connect(srv.port), connect(srv.port)]
    try:
        def refused() -> bool:
            with connect(srv.port) as sock:
                sock.sendall(HEALTHZ)
                status, _, body = answer(sock)
                return status == 429 and json.loads(body)["error"] == "too_many_connections"
        wait_for(refused, 10, message="a third connection from 127.0.0.1 to be refused")
        metrics = get(srv.port, "/metrics", source="127.0.0.2").read().decode()
        assert 'loop_events_rejected_total{reason="too_many_connections"}' in metrics
    finally:
        for sock in held:
            sock.close()
    with connect(srv.port) as sock:      # closed ones count no more
        sock.sendall(HEALTHZ)
        assert answer(sock)[0] == 200


def subscribers(port: int) -> int:
    text = get(port, "/metrics", source="127.0.0.9").read().decode()
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("loop_subscribers ")))


def test_a_closed_stream_frees_its_clients_slot_at_once(make_server):
    """Streams that the client closed stop counting when the socket closes, not at the next heartbeat
    (60 s here): the client reconnects its two tabs at once and is not refused."""
    srv = make_server("--max-streams-per-client", "2", "--heartbeat", "60")
    for _ in range(3):
        tabs = [connect(srv.port) for _ in range(2)]
        for sock in tabs:
            sock.sendall(b"GET /stream/progress HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        wait_for(lambda: subscribers(srv.port) == 2, 10, message="both streams counted")
        for sock in tabs:
            sock.close()
        wait_for(lambda: subscribers(srv.port) == 0, 10, message="closed streams to stop counting")


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_a_reconnect_storm_of_500_streams_on_redis_is_served(make_server):
    """500 streams (20 from each of 25 addresses) connecting at once, as after a restart: all 200."""
    srv = make_server("--heartbeat", "60")
    socks = []
    try:
        for i in range(500):
            sock = connect(srv.port, source=f"127.0.1.{10 + i // 20}", timeout=30)
            socks.append(sock)
        begun = time.monotonic()
        for sock in socks:               # every request on the wire before any answer is read
            sock.sendall(b"GET /stream/progress HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        statuses = [sock.recv(65536)[:12] for sock in socks]
        print(f"500 stream connects at once on Redis: {statuses.count(b'HTTP/1.1 200')} answered 200 "
              f"in {(time.monotonic() - begun) * 1000:.0f} ms")
        assert statuses.count(b"HTTP/1.1 200") == 500, sorted(set(statuses))
        assert subscribers(srv.port) == 500
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("path, head", [
    ("/api/hooks/claude", b"Content-Type: application/json\r\nContent-Length: 200\r\n"),
    ("/api/events", b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"),   # not the fast path
    ("/v1/logs", b"Content-Type: application/json\r\nContent-Length: 200\r\n"),
])
def test_a_body_that_stalls_is_a_408_after_header_timeout_and_frees_the_worker(make_server, path, head):
    srv = make_server("--header-timeout", "1")
    begun = time.monotonic()
    with connect(srv.port) as sock:
        partial = b"5\r\n[{\"ty\r\n" if b"chunked" in head else b'{"session_id": "s'
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + head + b"\r\n" + partial)
        status, _, body = answer(sock)                 # and nothing more is sent
        assert (status, json.loads(body)["error"]) == (408, "request_timeout"), body
        assert closed_by_server(sock)                  # gunicorn closes it: what it waits for never came
    assert time.monotonic() - begun < 8
    assert get(srv.port, "/healthz").status == 200


def test_the_413_says_the_limit_of_the_route_it_refused(make_server):
    srv = make_server()
    for path, size, limit in (("/v1/logs", 5 << 20, "4 MB"), ("/api/hooks/claude", 70_000, "64 KB")):
        with connect(srv.port) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {size}\r\n\r\n".encode() + b" " * min(size, 70_000))
            status, _, body = answer(sock)
            assert status == 413 and f"larger than {limit}" in json.loads(body)["message"], body
