"""Hostile input and other origins against a real `loop serve` (gunicorn + gevent): Host and Origin checks,
JSON-only POSTs, atomic batches, limits a client cannot dodge, the reaper of silent runs, --idle-exit, and the
bad-request cases that used to give a 500 or a cut body. What is stored, limited or reaped is checked on both
backends; what the HTTP layer refuses, once."""
import json
import socket
import threading

import pytest
import requests

from conftest import on_both_backends, wait_for
from helpers import transcript

JSON = {"Content-Type": "application/json"}


def raw(server, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """One raw HTTP exchange (a request that requests would not send); the status and the body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def events(server) -> list[dict]:
    return server.get("/api/events").json()["events"]


def start_run(server, run, **data):
    r = server.post({"type": "task_started", "run": run, "data": {"task_name": run, **data}})
    assert r.status_code == 201, r.text


# -- Host, Origin and Content-Type -------------------------------------------------------------
def test_cross_origin_text_plain_stop_is_refused_and_no_stop_happens(shared_server):
    server = shared_server
    start_run(server, "victim")
    before = events(server)
    evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    r = requests.post(f"{server.url}/api/runs/victim/stop", data='{"reason": "pwned"}', headers=evil, timeout=5)
    assert r.status_code == 403 and r.json()["field"] == "origin"
    r = requests.post(f"{server.url}/api/runs/victim/stop", data='{"reason": "pwned"}',
                      headers={"Content-Type": "text/plain"}, timeout=5)   # no Origin (curl): still JSON only
    assert r.status_code == 415 and "Content-Type: application/json" in r.json()["message"]
    r = requests.post(f"{server.url}/api/events", data='{"type": "output", "run": "victim"}',
                      headers={"Origin": "http://evil.example", **JSON}, timeout=5)
    assert r.status_code == 403
    assert events(server) == before                                   # nothing published
    snap = server.get("/api/runs/victim").json()
    assert snap["status"] == "running" and snap["control"]["stop_requested"] is None


def test_the_same_origin_dashboard_and_a_cors_origin_can_stop(make_server):
    server = make_server("--rate", "0", "--cors", "https://dash.example")
    start_run(server, "a")
    start_run(server, "b")
    own = {"Origin": server.url, **JSON}
    r = requests.post(f"{server.url}/api/runs/a/stop", data="{}", headers=own, timeout=5)
    assert r.status_code == 202 and r.json()["requested"] is True
    pre = requests.options(f"{server.url}/api/runs/b/stop", timeout=5, headers={
        "Origin": "https://dash.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 204 and "Content-Type" in pre.headers["Access-Control-Allow-Headers"]
    r = requests.post(f"{server.url}/api/runs/b/stop", data="{}", timeout=5,
                      headers={"Origin": "https://dash.example", **JSON})
    assert r.status_code == 202 and r.headers["Access-Control-Allow-Origin"] == "https://dash.example"
    evil_pre = requests.options(f"{server.url}/api/runs/b/stop", timeout=5,
                                headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert evil_pre.status_code == 403
    assert requests.get(server.url + "/", headers={"Origin": "http://evil.example"}, timeout=5).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.nip.io", "localhost.evil.example"])
def test_a_dns_rebinding_host_is_refused(shared_server, host):
    server = shared_server
    start_run(server, "secret")
    for path in ("/api/runs", "/api/runs/secret/transcript", "/api/events", "/stream/progress", "/healthz"):
        status, body = raw(server, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        assert status == 403, path
        assert json.loads(body)["error"] == "forbidden_host" and b"secret" not in body
    for ok in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "127.0.0.5", f"[::1]:{server.port}",
               "10.1.2.3:8765", "[fe80::1]", "app.localhost"):   # an IP address cannot be rebound
        status, _ = raw(server, f"GET /api/runs HTTP/1.1\r\nHost: {ok}\r\nConnection: close\r\n\r\n".encode())
        assert status == 200, ok


def test_allowed_host_admits_a_name_from_the_flag_or_the_environment(make_server):
    server = make_server("--rate", "0", "--allowed-host", "loop.internal", env={"LOOP_ALLOWED_HOSTS": "x"})
    status, _ = raw(server, b"GET /api/runs HTTP/1.1\r\nHost: loop.internal:8765\r\nConnection: close\r\n\r\n")
    assert status == 200
    status, _ = raw(server, b"GET /api/runs HTTP/1.1\r\nHost: other.internal\r\nConnection: close\r\n\r\n")
    assert status == 403
    from_env = make_server("--rate", "0", env={"LOOP_ALLOWED_HOSTS": "a.lan,b.lan"})
    for name, want in (("a.lan", 200), ("b.lan", 200), ("c.lan", 403)):
        status, _ = raw(from_env, f"GET /api/runs HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        assert status == want, name


def test_token_still_guards_with_the_new_checks(make_server):
    server = make_server("--rate", "0", "--token", "t0k")
    assert server.post({"type": "x"}).status_code == 401
    assert server.post({"type": "x"}, headers={"Authorization": "Bearer t0k"}).status_code == 201
    r = requests.post(server.url + "/api/events", data='{"type": "x"}', timeout=5,
                      headers={"Authorization": "Bearer t0k", "Content-Type": "text/plain"})
    assert r.status_code == 415


# -- atomic batches ---------------------------------------------------------------------------------
@on_both_backends
def test_a_batch_is_all_or_nothing_whatever_its_second_event_holds(make_server, subscribe):
    server = make_server("--rate", "0", "--heartbeat", "0.2")
    start_run(server, "r")
    sub = subscribe(server, params={"run": "r"})
    sub.next()
    before = (events(server), transcript(server, "r"), server.get("/api/runs/r").json())
    batch = [{"type": "output", "run": "r", "data": {"text": "first\n"}},
             {"type": "task_started", "run": "r", "data": {"stories": 7, "story_count": "x"}}]
    r = server.post(batch)
    assert r.status_code in (201, 400), r.text     # never a 500
    after = (events(server), transcript(server, "r"), server.get("/api/runs/r").json())
    marker = server.post({"type": "progress", "run": "r", "data": {"marker": True}}).json()["ids"][0]
    streamed = sub.until(lambda item: item[0] == marker)
    if r.status_code == 201:
        assert [e["id"] for e in after[0][-2:]] == r.json()["ids"]
        assert [e[0] for e in streamed] == r.json()["ids"] + [marker]
    else:                                          # refused: no trace anywhere
        assert after == before
        assert [e[0] for e in streamed] == [marker]


# -- limits a client cannot dodge ---------------------------------------------------------------------
@on_both_backends
def test_the_client_budget_cannot_be_dodged_by_naming_new_runs(make_server):
    # 0.01 event/s: the budget does not refill while the test runs, however slow the machine
    server = make_server("--rate", "10", "--burst", "20", "--client-rate", "0.01", "--client-burst", "30")
    codes = [server.post({"type": "x", "run": f"run-{i}"}).status_code for i in range(31)]
    assert codes[:30] == [201] * 30
    r = server.post({"type": "x", "run": "run-new"})
    assert r.status_code == 429 and "client:" in r.json()["message"] and "--client-rate" in r.json()["message"]
    assert int(r.headers["Retry-After"]) >= 1
    assert len(events(server)) == 30


@on_both_backends
def test_one_big_batch_for_someone_elses_run_locks_it_out_for_seconds_not_minutes(make_server):
    server = make_server("--rate", "10", "--burst", "20", "--client-rate", "0")
    big = [{"type": "progress", "run": "victim", "data": {"i": i}} for i in range(1000)]
    assert server.post(big).status_code == 201
    r = server.post({"type": "progress", "run": "victim"})
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) <= 3          # a debt of one burst: (20 + 1) / 10 = 2.1 s, not 98 s
    wait_for(lambda: server.post({"type": "progress", "run": "victim"}).status_code == 201, timeout=10,
             interval=0.2, message="the victim's run to be accepted again")


@on_both_backends
def test_live_runs_are_bounded_and_a_finished_one_makes_room(make_server):
    server = make_server("--rate", "0", "--max-live-runs", "3")
    for run in ("a", "b", "c"):
        start_run(server, run)
    r = server.post({"type": "task_started", "run": "d"})
    assert r.status_code == 503 and r.json()["error"] == "too_many_live_runs" and "Retry-After" in r.headers
    assert server.post({"type": "progress", "run": "a"}).status_code == 201    # live runs carry on
    assert server.get("/api/runs/d").status_code == 404
    assert server.post({"type": "task_completed", "run": "a"}).status_code == 201
    wait_for(lambda: server.post({"type": "task_started", "run": "d"}).status_code == 201, timeout=5,
             message="room for a new run")


# -- bad requests: 400/413, never a 500 or a cut body ---------------------------------------------------
def test_bad_get_parameters_get_400_naming_them(shared_server):
    server = shared_server
    for query, field in (("limit=%C2%B2", "limit"), ("limit=%D9%A3", "limit"), ("since=%C2%B2-1", "since"),
                         ("run=%00", "run"), ("types=%ED%A0%80", "types"), ("limit=99999999999999999999", "limit")):
        r = server.get("/api/events?" + query)
        assert r.status_code == 400 and r.json()["field"] == field, query
    r = server.get("/stream/progress?last_event_id=%C2%B2")
    assert r.status_code == 400 and r.json()["field"] == "last_event_id"


def chunked(body: bytes, size_line: bytes | None = None) -> bytes:
    size = size_line if size_line is not None else b"%x" % len(body)
    return size + b"\r\n" + body + b"\r\n0\r\n\r\n"


def post_raw(server, body: bytes, headers: bytes = b"Transfer-Encoding: chunked\r\n") -> tuple[int, bytes]:
    return raw(server, b"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Connection: close\r\n" + headers + b"\r\n" + body)


def test_chunked_bodies_bad_size_400_over_64k_413_and_nothing_stored(shared_server):
    server = shared_server
    ok = json.dumps({"type": "progress", "run": "c"}).encode()
    assert post_raw(server, chunked(ok))[0] == 201
    before = events(server)
    status, body = post_raw(server, chunked(ok, b"ZZ"))
    assert status == 400 and json.loads(body)["field"] == "body"
    big = json.dumps([{"type": "output", "run": "c", "data": {"text": "x" * 3000}}] * 100).encode()   # 300 KB
    pieces = b"".join(b"%x\r\n%s\r\n" % (len(big[i:i + 8000]), big[i:i + 8000]) for i in range(0, len(big), 8000))
    status, body = post_raw(server, pieces + b"0\r\n\r\n")
    assert status == 413 and json.loads(body)["error"] == "too_large"
    status, _ = post_raw(server, big, b"Content-Length: %d\r\n" % len(big))
    assert status == 413
    assert events(server) == before


def test_deep_nesting_and_bad_utf8_are_400(shared_server):
    server = shared_server
    before = events(server)
    deep = b'{"type": "x", "data": {"a": ' + b"[" * 960 + b"]" * 960 + b"}}"
    for body in (deep, b'{"type": "x", "data": {"t": "\xed\xa0\x80"}}', b'{"type": "x", "data": {"t": "\\ud800"}}',
                 b'{"type": "x", "data": {"n": 1e999}}', b'{"type": "x", "data": {"n": ' + b"9" * 400 + b"}}"):
        r = requests.post(server.url + "/api/events", data=body, headers=JSON, timeout=5)
        assert r.status_code == 400, (body[:40], r.text)
    assert events(server) == before


# -- issue 10: the reaper of silent runs ------------------------------------------------------------
@on_both_backends
def test_a_silent_run_with_a_heartbeat_is_interrupted_once_others_are_left_alone(make_server, subscribe, backend):
    workers = ("--workers", "2") if backend else ()
    server = make_server("--rate", "0", "--stale-after", "1", *workers)
    start_run(server, "script")                       # announced no heartbeat: never reaped
    start_run(server, "beating", heartbeat_s=0.3)
    done = threading.Event()

    def keep_beating():                               # a runner that keeps its word: never reaped
        while not done.wait(0.2):
            server.post({"type": "task_alive", "run": "beating"})

    beater = threading.Thread(target=keep_beating)
    beater.start()
    try:
        sub = subscribe(server, params={"types": "task_interrupted"})
        sub.next()
        start_run(server, "lost", heartbeat_s=0.3)
        _, name, e = sub.take(1)[0]
        assert name == "task_interrupted" and e["run"] == "lost"
        assert e["data"]["silent_s"] >= 1
        assert e["data"]["reason"] == f"no event for {e['data']['silent_s']} s (runner gone?)"
        start_run(server, "lost2", heartbeat_s=0.3)     # a later reap: a duplicate for "lost" would come first
        _, name, e = sub.take(1)[0]
        assert e["run"] == "lost2"
        assert [x["type"] for x in transcript(server, "lost")].count("task_interrupted") == 1
        assert server.get("/api/runs/script").json()["status"] == "running"
        assert server.get("/api/runs/beating").json()["status"] == "running"
    finally:
        done.set()
        beater.join()
    snap = server.get("/api/runs/lost").json()
    assert snap["status"] == "interrupted" and snap["log"][-1]["text"].startswith("interrupted: no event for")
    if not backend:   # with Redis the counter is per worker
        assert "loop_runs_reaped_total 2" in server.get("/metrics").text
    assert server.post({"type": "task_alive", "run": "lost"}).status_code == 201   # only slow: it comes back
    wait_for(lambda: server.get("/api/runs/lost").json()["status"] == "running", timeout=5,
             message="the run to be live again")
