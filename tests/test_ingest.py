"""The worker's ingest fast path (ingest.py) against a real `loop serve`, over raw sockets.

An event POST that passes every guard is answered by the fast path (no ``Server: gunicorn``
header); everything else on the connection goes on to gunicorn and Flask, with the answers it
always had. Both paths must store the same events and give the same refusals.
"""
from __future__ import annotations

import json
import socket
import time

import pytest

from conftest import Subscriber, wait_for

EVENT = {"type": "note", "run": "fast", "data": {"message": "hi"}}


def post_bytes(body: bytes | dict, path: str = "/api/events", headers: dict | None = None, host: str = "127.0.0.1",
               content_type: str = "application/json") -> bytes:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(raw)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + raw


class Conn:
    """One keep-alive connection that reads whole responses (Content-Length or chunked)."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buf += chunk

    def response(self) -> tuple[int, dict, bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    self._fill()
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line, 16)
                while len(self.buf) < size + 2:
                    self._fill()
                body, self.buf = body + self.buf[:size], self.buf[size + 2:]
                if size == 0:
                    return status, headers, body
        length = int(headers.get("content-length", 0))
        while len(self.buf) < length:
            self._fill()
        body, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, body

    def request(self, data: bytes) -> tuple[int, dict, bytes]:
        self.send(data)
        return self.response()

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.sock.close()


def fast(headers: dict) -> bool:
    """The fast path answers without gunicorn's Server header."""
    return "server" not in headers


def test_posts_on_one_connection_are_served_fast_then_a_get_goes_to_gunicorn_and_posts_carry_on(server):
    c = Conn(server.port)
    ids = []
    for i in range(20):
        status, headers, body = c.request(post_bytes({**EVENT, "data": {"i": i}}))
        assert status == 201 and fast(headers) and headers["content-type"] == "application/json"
        assert headers["date"].endswith("GMT")
        ids += json.loads(body)["ids"]
    seqs = [int(i.split("-")[1]) for i in ids]
    assert seqs == list(range(seqs[0], seqs[0] + 20))          # gapless, in order
    status, headers, body = c.request(b"GET /api/events?run=fast HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert status == 200 and not fast(headers)
    assert [e["data"]["i"] for e in json.loads(body)["events"]] == list(range(20))
    status, headers, body = c.request(post_bytes({**EVENT, "data": {"i": 20}}))   # gunicorn's now
    assert status == 201 and not fast(headers)
    assert int(json.loads(body)["ids"][0].split("-")[1]) == seqs[-1] + 1
    c.close()
    snap = server.get("/api/runs/fast").json()
    assert snap["event_count"] == 21


def test_a_subscriber_gets_fast_path_events_live(server):
    sub = Subscriber(server.url, params={"run": "fast"})
    assert sub.next()[1] == "hello"
    c = Conn(server.port)
    status, headers, _ = c.request(post_bytes({**EVENT, "data": {"message": "live"}}))
    assert status == 201 and fast(headers)
    _, name, data = sub.until(lambda item: item[1] == "note")[-1]
    assert data["data"]["message"] == "live"
    sub.close()
    c.close()


@pytest.mark.parametrize("body", [
    b"{not json", b'{"type": "note", "data": {"x": 1e999}}', b'{"type": "Bad Type"}',
    b'{"type": "note", "data": {"x": "\\ud800"}}', b"[]", b'{"type": "hello"}'])
def test_a_refusal_reads_the_same_on_either_path_and_stores_nothing(server, body):
    """The same invalid body, once plain (fast path) and once with the page's own Origin (which
    the fast path leaves to Flask): the same 400, byte for byte, and nothing stored."""
    c = Conn(server.port)
    status, headers, fast_body = c.request(post_bytes(body))
    assert status == 400 and fast(headers)
    origin = {"Origin": f"http://127.0.0.1:{server.port}"}
    status, headers, flask_body = c.request(post_bytes(body, host=f"127.0.0.1:{server.port}", headers=origin))
    assert status == 400 and not fast(headers)
    assert json.loads(fast_body) == json.loads(flask_body) and json.loads(fast_body)["error"] == "bad_request"
    status, headers, _ = c.request(post_bytes(EVENT))            # the connection is still good
    assert status == 201
    c.close()
    assert [e["data"] for e in server.get("/api/events?run=fast").json()["events"]] == [EVENT["data"]]


def test_the_guards_still_hold_on_a_fast_connection(make_server):
    server = make_server("--token", "s3cret")
    c = Conn(server.port)
    auth = {"Authorization": "Bearer s3cret"}
    status, headers, _ = c.request(post_bytes(EVENT, headers=auth))
    assert status == 201 and fast(headers)
    status, _, body = c.request(post_bytes(EVENT))                           # no token
    assert status == 401 and json.loads(body)["error"] == "unauthorized"
    c.close()
    for request, code, error in [
        (post_bytes(EVENT, headers=auth, host="evil.example"), 403, "forbidden_host"),
        (post_bytes(EVENT, headers={**auth, "Origin": "http://evil.example"}), 403, "forbidden_origin"),
        (post_bytes(EVENT, headers=auth, content_type="text/plain"), 415, "unsupported_media_type"),
        (post_bytes(EVENT, headers={"Authorization": "Bearer wrong"}), 401, "unauthorized"),
    ]:
        c = Conn(server.port)
        status, headers, body = c.request(request)
        assert (status, json.loads(body)["error"]) == (code, error) and not fast(headers)
        c.close()
    events = server.get("/api/events?run=fast", headers=auth).json()["events"]
    assert len(events) == 1


def test_the_rate_limit_answers_429_with_retry_after_on_the_fast_path(make_server):
    server = make_server("--rate", "1", "--burst", "2")
    c = Conn(server.port)
    answers = [c.request(post_bytes(EVENT)) for _ in range(4)]
    assert [a[0] for a in answers] == [201, 201, 429, 429]
    status, headers, body = answers[2]
    assert fast(headers) and int(headers["retry-after"]) >= 1
    assert json.loads(body)["error"] == "rate_limited" and json.loads(body)["burst"] == 2
    c.close()
    assert len(server.get("/api/events?run=fast").json()["events"]) == 2


def test_pipelined_requests_are_answered_in_order(server):
    c = Conn(server.port)
    get = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    c.send(post_bytes({**EVENT, "data": {"i": 1}}) + post_bytes({**EVENT, "data": {"i": 2}}) + get
           + post_bytes({**EVENT, "data": {"i": 3}}))
    answers = [c.response() for _ in range(4)]
    assert [a[0] for a in answers] == [201, 201, 200, 201]
    assert json.loads(answers[2][2])["ok"] is True
    c.close()
    assert [e["data"]["i"] for e in server.get("/api/events?run=fast").json()["events"]] == [1, 2, 3]


def test_a_head_or_body_that_arrives_in_pieces_is_still_one_event(server):
    data = post_bytes({**EVENT, "data": {"i": 1}})
    head_end = data.index(b"\r\n\r\n") + 4
    c = Conn(server.port)
    c.send(data[:head_end])                    # the head alone: the body follows later
    time.sleep(0.2)
    c.send(data[head_end:])
    status, headers, _ = c.response()
    assert status == 201 and fast(headers)
    data = post_bytes({**EVENT, "data": {"i": 2}})
    c.send(data[:10])                          # a head cut short goes to gunicorn, which waits for it
    time.sleep(0.2)
    c.send(data[10:])
    status, headers, _ = c.response()
    assert status == 201 and not fast(headers)
    c.close()
    assert [e["data"]["i"] for e in server.get("/api/events?run=fast").json()["events"]] == [1, 2]


def test_chunked_oversized_and_close_requests(server):
    c = Conn(server.port)
    raw = json.dumps(EVENT).encode()
    chunked = (b"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(raw), raw))
    status, headers, _ = c.request(chunked)
    assert status == 201 and not fast(headers)
    c.close()
    c = Conn(server.port)
    status, headers, body = c.request(post_bytes(b"[" + b" " * (70 * 1024) + b"]"))
    assert status == 413 and json.loads(body)["error"] == "too_large"
    c.close()
    c = Conn(server.port)
    status, headers, _ = c.request(post_bytes(EVENT, headers={"Connection": "close"}))
    assert status == 201 and fast(headers) and headers["connection"] == "close"
    assert c.closed_by_server()
    c.close()
    assert len(server.get("/api/events?run=fast").json()["events"]) == 2


def test_a_client_that_leaves_mid_body_stores_nothing_and_harms_nothing(server):
    data = post_bytes({**EVENT, "data": {"i": 1}})
    c = Conn(server.port)
    c.send(data[:-5])
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")   # RST
    c.close()
    c = Conn(server.port)
    status, _, _ = c.request(post_bytes({**EVENT, "data": {"i": 2}}))
    assert status == 201
    c.close()
    assert [e["data"]["i"] for e in server.get("/api/events?run=fast").json()["events"]] == [2]


def test_with_access_log_every_post_is_logged_by_gunicorn(make_server):
    server = make_server("--access-log")
    c = Conn(server.port)
    status, headers, _ = c.request(post_bytes(EVENT))
    assert status == 201 and not fast(headers)
    c.close()
    wait_for(lambda: "POST /api/events" in server.log.read_text(), 10, message="the access log line")


def test_with_no_fast_path_every_post_is_answered_by_flask_and_streamed(make_server):
    """--no-fast-path: the same POSTs on one kept-alive connection, each answered by gunicorn and Flask
    (gunicorn's Server header), stored and streamed as ever."""
    server = make_server("--rate", "0", "--no-fast-path")
    sub = Subscriber(server.url, params={"run": "fast"})
    assert sub.next()[1] == "hello"
    c = Conn(server.port)
    for i in range(3):
        status, headers, body = c.request(post_bytes({**EVENT, "data": {"i": i}}))
        assert status == 201 and not fast(headers) and len(json.loads(body)["ids"]) == 1
    notes = sub.until(lambda item: item[1] == "note" and item[2]["data"]["i"] == 2)
    assert [data["data"]["i"] for _, name, data in notes if name == "note"] == [0, 1, 2]
    status, headers, _ = c.request(post_bytes(b"{not json"))
    assert status == 400 and not fast(headers)
    sub.close()
    c.close()


def test_header_values_are_read_as_gunicorn_reads_them(server):
    """Spaces inside and around a value (a long run of them too: read in linear time)."""
    c = Conn(server.port)
    padded = post_bytes(EVENT, headers={"X-Note": "a" + " " * 8000 + "b"}).replace(
        b"Content-Type: application/json", b"Content-Type:   application/json   ")
    status, headers, _ = c.request(padded)
    assert status == 201 and fast(headers)
    c.close()

