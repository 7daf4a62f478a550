"""Hostile requests against a real `loop serve` on both backends (hypothesis over a raw keep-alive socket).

Every endpoint gets bad JSON, huge numbers, deep nesting, wrong types, bad parameters, bad Hosts,
Origins and content types, chunked junk, surrogates and over-size bodies, mixed with valid events.
After every group of requests: no 500, no hang (socket timeouts), and exactly the events whose
requests got a 201/202 are in /api/events, in the run transcripts and on a live SSE stream —
nothing from a refused request. At the end the sidecar restarts on its data and serves it.
"""
import json
import os
import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BACKENDS, Subscriber, wait_for

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)

GROUPS, PER_GROUP = int(os.environ.get("LOOP_FUZZ_GROUPS", 200)), 50           # 10,000 requests per backend
RUNS = ["r1", "r2", "default"]         # the only run names a fuzzed request can get stored under


class RawClient:
    """HTTP/1.1 over one keep-alive socket; reconnects when the server closes. Every read has a
    timeout, so a hang fails the test instead of stalling it."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.port, self.timeout = port, timeout
        self.sock = None
        self.buf = b""

    def _connect(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.buf = b""

    def close(self):
        if self.sock:
            self.sock.close()
        self.sock = None

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _read_n(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def request(self, raw: bytes) -> tuple[int, dict, bytes]:
        for attempt in (0, 1):
            if self.sock is None:
                self._connect()
            try:
                self.sock.sendall(raw)
                return self._response()
            except (ConnectionError, BrokenPipeError) as e:   # the server closed a kept-alive socket
                self.close()
                if attempt:
                    raise AssertionError(f"no response to {raw[:120]!r}") from e
        raise AssertionError("unreachable")

    def _response(self) -> tuple[int, dict, bytes]:
        head = self._read_until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split(" ")[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        if headers.get("content-type", "").startswith("text/event-stream"):
            self.close()                       # a stream that was let through: do not read it forever
            return status, headers, b""
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                body += self._read_n(size + 2)[:-2]
                if size == 0:
                    break
        else:
            body = self._read_n(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, body


# -- what a hostile client sends ------------------------------------------------------------------------
def nest(depth: int) -> str:
    return "[" * depth + "]" * depth


texts = st.text(max_size=12) | st.sampled_from(["\ud800", "\udfff", "\u202e", "\x00", "\r\n", "é" * 5])
numbers = st.sampled_from(["1e999", "-1e999", "9" * 400, "1e308", "NaN", "Infinity", "-0", "1E+2", "0.5",
                           str(10**16), "1"])
raw_values = st.one_of(
    numbers,
    texts.map(json.dumps),
    st.sampled_from(['"\\ud800"', '"\\udc00x"', "null", "true", "[]", "{}", '{"a":' * 3 + "1" + "}" * 3]),
    st.integers(1, 2000).map(nest),
)
event_json = st.builds(
    lambda t, run, key, value, extra: "{" + ",".join(filter(None, [
        f'"type":{t}', f'"run":{run}' if run else "", f'"data":{{"{key}":{value}}}', extra])) + "}",
    st.sampled_from(['"progress"', '"output"', '"task_started"', '"task_alive"', '"hello"', '"BAD"', "7",
                     "null", '"x' + "y" * 70 + '"']),
    st.sampled_from(['"r1"', '"r2"', "", '"bad run"', "5", '"' + "z" * 70 + '"', "null"]),
    st.sampled_from(["percent", "text", "stories", "story_count", "estimated_duration", "heartbeat_s",
                     "ac_index", "summary"]),
    raw_values,
    st.sampled_from(["", '"id":"x"', '"extra":1', '"ts":1e999']),
)
bodies = st.one_of(
    event_json.map(str.encode),
    st.lists(event_json, min_size=0, max_size=5).map(lambda xs: ("[" + ",".join(xs) + "]").encode()),
    st.binary(max_size=60),
    st.sampled_from([b"", b"{", b'{"type":"x"', b"\xff\xfe", b"\xed\xa0\x80", b'"just a string"',
                     b'{"type":"output","run":"r1","data":{"text":"' + b"x" * 70_000 + b'"}}',
                     ("[" + ",".join(['{"type":"p","run":"r2"}'] * 1001) + "]").encode()]),
)
content_types = st.sampled_from(["application/json", "application/json", "application/json; charset=utf-8",
                                 "text/plain", None, "application/x-www-form-urlencoded", "multipart/form-data"])
hosts = st.sampled_from(["GOOD", "GOOD", "GOOD", "localhost", "evil.example", "127.0.0.1.evil.example", None,
                         "[::1]", "a" * 300])
origins = st.sampled_from([None, None, None, "OWN", "http://evil.example", "null", "http://127.0.0.1:1"])
params = st.dictionaries(
    st.sampled_from(["since", "limit", "run", "types", "last_event_id", "token"]),
    st.sampled_from(["%C2%B2", "0", "-1", "1001", "99999999999999999999", "x", "1-1", "9" * 30 + "-1", "%00",
                     "a%20b", "%ED%A0%80", "BAD", "r1,r2", "progress", "", "%FF", "1700000000000-5"]),
    max_size=3)
post_paths = st.sampled_from(["/api/events", "/emit", "/api/runs/r1/stop", "/api/runs/r2/pause",
                              "/api/runs/r1/resume", "/api/runs/%00/stop", "/api/runs/r1/explode",
                              "/api/runs/" + "a" * 80 + "/stop", "/healthz", "/api/runs"])
get_paths = st.sampled_from(["/api/events", "/api/runs", "/api/runs/r1", "/api/runs/%00", "/api/runs/../etc",
                             "/api/runs/r1/transcript", "/api/runs/nope/transcript", "/stream/progress",
                             "/healthz", "/metrics", "/", "/app.js", "/%00", "/../../etc/passwd",
                             "/" + "x" * 300, "/api/runs/%ED%A0%80"])
framings = st.sampled_from(["length", "length", "length", "chunked", "bad-chunk", "lying-length"])


benign_values = st.sampled_from(["1", "42.5", '"hello"', '"line\\n"', "[1,2]", '{"passed":1}', "null", "true"])
good_events = st.builds(
    lambda t, run, key, value: f'{{"type":"{t}"' + (f',"run":"{run}"' if run else "") + f',"data":{{"{key}":{value}}}}}',
    st.sampled_from(["progress", "output", "task_started", "task_alive", "story_started", "custom.note"]),
    st.sampled_from(["r1", "r2", None]),
    st.sampled_from(["percent", "text", "story_id", "story_count", "heartbeat_s", "message"]),
    benign_values | raw_values)


@st.composite
def well_formed_post(draw):
    """A request as the tools send it, with hostile values only inside the events."""
    events = draw(st.lists(good_events, min_size=1, max_size=4))
    body = events[0] if len(events) == 1 else "[" + ",".join(events) + "]"
    return {"method": "POST", "path": draw(st.sampled_from(["/api/events", "/emit"])), "host": "GOOD",
            "origin": draw(st.sampled_from([None, "OWN"])), "content_type": "application/json",
            "body": body.encode(), "framing": draw(st.sampled_from(["length", "chunked"])), "last_event_id": None}


@st.composite
def any_request(draw):
    return draw(well_formed_post() if draw(st.booleans()) else hostile_request())


@st.composite
def hostile_request(draw):
    method = draw(st.sampled_from(["POST", "POST", "GET", "OPTIONS", "PUT"]))
    path = draw(post_paths if method == "POST" else get_paths)
    query = draw(params)
    if query:
        path += "?" + "&".join(f"{k}={v}" for k, v in query.items())
    return {"method": method, "path": path, "host": draw(hosts), "origin": draw(origins),
            "content_type": draw(content_types), "body": draw(bodies) if method in ("POST", "PUT") else b"",
            "framing": draw(framings), "last_event_id": draw(st.sampled_from([None, "x", "%C2%B2", "1-1"]))}


def encode(req: dict, port: int) -> bytes:
    good = f"127.0.0.1:{port}"
    lines = [f"{req['method']} {req['path']} HTTP/1.1"]
    if req["host"] is not None:
        lines.append(f"Host: {good if req['host'] == 'GOOD' else req['host']}")
    if req["origin"]:
        lines.append(f"Origin: {'http://' + good if req['origin'] == 'OWN' else req['origin']}")
    if req["content_type"]:
        lines.append(f"Content-Type: {req['content_type']}")
    if req["last_event_id"]:
        lines.append(f"Last-Event-ID: {req['last_event_id']}")
    framing, body = frame(req["framing"], req["body"])
    return ("\r\n".join(lines + framing) + "\r\n\r\n").encode("latin-1", "replace") + body


def frame(framing: str, body: bytes) -> tuple[list[str], bytes]:
    """The body-framing headers and the body as sent: by length, chunked, or broken on purpose."""
    if not body or framing == "length":
        return [f"Content-Length: {len(body)}"], body
    if framing == "chunked":
        return ["Transfer-Encoding: chunked"], b"".join(
            b"%x\r\n%s\r\n" % (len(body[i:i + 4000]), body[i:i + 4000]) for i in range(0, len(body), 4000)
        ) + b"0\r\n\r\n"
    if framing == "bad-chunk":   # Connection: close, so the junk left over is not read as a next request
        return ["Transfer-Encoding: chunked", "Connection: close"], b"ZZ\r\n" + body + b"\r\n0\r\n\r\n"
    # lying-length: 5 bytes more than the body, which arrive as junk that ends it
    return [f"Content-Length: {len(body) + 5}", "Connection: close"], body + b"\r\n\r\n\r"


# -- the test ----------------------------------------------------------------------------------------------
class Ledger:
    """What the server said it accepted, and what a live subscriber saw."""

    def __init__(self):
        self.ids: list[str] = []
        self.streamed: list[str] = []


def accepted_ids(status: int, body: bytes) -> list[str]:
    if status == 201:
        return json.loads(body)["ids"]
    if status == 202:
        answer = json.loads(body)
        return [answer["id"]] if answer.get("requested") else []
    return []


def transcript_lengths(client: RawClient, port: int) -> dict[str, int]:
    out = {}
    for run in RUNS:
        status, _, body = client.request(f"GET /api/runs/{run}/transcript HTTP/1.1\r\nHost: 127.0.0.1:{port}"
                                         "\r\n\r\n".encode())
        out[run] = len(json.loads(body)["events"]) if status == 200 else 0
    return out


def events_since(client: RawClient, port: int, since: str | None) -> list[tuple[str, str]]:
    """(id, run) of every event after ``since`` (the whole buffer when None), page by page."""
    out: list[tuple[str, str]] = []
    while True:
        query = "limit=1000" + (f"&since={since}" if since else "")
        status, _, body = client.request(f"GET /api/events?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
                                         .encode())
        assert status == 200, body
        page = json.loads(body)
        assert page["reset"] is False
        out += [(e["id"], e["run"]) for e in page["events"]]
        if len(page["events"]) < 1000:
            return out
        since = out[-1][0]


def follow(sub: Subscriber, ledger: Ledger) -> None:
    """Record every event id a live subscriber receives."""
    try:
        for eid, name, _ in iter(sub.next, None):
            if name not in ("heartbeat", "hello", "reset"):
                ledger.streamed.append(eid)
    except Exception:   # closed at the end of the test
        return


def check_stored(client: RawClient, port: int, new_ids: list[str], cursor: list, transcripts: dict) -> None:
    """Exactly the accepted events are in the log after the cursor, in order, and each in its
    run's transcript: nothing from a refused request."""
    stored = events_since(client, port, cursor[0])
    assert [eid for eid, _ in stored] == new_ids
    for _, run in stored:
        transcripts[run] += 1
    if stored:
        cursor[0] = stored[-1][0]
    assert transcript_lengths(client, port) == transcripts


def test_hostile_requests_never_500_hang_or_leave_a_trace_and_the_sidecar_restarts(make_server, backend, tmp_path):
    args = ("--rate", "0", "--buffer", "100000", "--heartbeat", "0.5")
    server = make_server(*args)
    client = RawClient(server.port)
    ledger = Ledger()
    sub = Subscriber(server.url, read_timeout=30)
    assert sub.next()[1] == "hello"

    reader = threading.Thread(target=follow, args=(sub, ledger), daemon=True)
    reader.start()
    transcripts = {run: 0 for run in RUNS}
    cursor: list[str | None] = [None]

    @settings(max_examples=GROUPS, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(any_request(), min_size=PER_GROUP, max_size=PER_GROUP))
    def group(requests_):
        new_ids = []
        for req in requests_:
            status, headers, body = client.request(encode(req, server.port))
            assert status < 500, (req, status, body[:300])
            new_ids += accepted_ids(status, body)
        ledger.ids += new_ids
        check_stored(client, server.port, new_ids, cursor, transcripts)

    group()
    assert len(ledger.ids) > 100, "the fuzz should also have sent events that were accepted"
    wait_for(lambda: len(ledger.streamed) >= len(ledger.ids), timeout=30, message="the stream to catch up")
    assert ledger.streamed == ledger.ids          # nothing streamed from a refused request
    sub.close()
    client.close()

    # The sidecar restarts cleanly on what it stored.
    snapshots = {run: server.get(f"/api/runs/{run}").status_code for run in RUNS}
    assert server.stop() == 0
    again = make_server(*args, db=server.db) if not backend else make_server(*args)
    assert again.get("/healthz").json()["ok"] is True
    for run in RUNS:
        if transcripts[run]:
            assert again.get(f"/api/runs/{run}").status_code == 200 == snapshots[run]
            assert len(again.get(f"/api/runs/{run}/transcript").json()["events"]) == transcripts[run]
    assert again.get("/api/runs").status_code == 200

