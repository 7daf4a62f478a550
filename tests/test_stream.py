"""The SSE stream against a real `loop serve` (gunicorn + gevent) with real clients."""
import json
import socket
import subprocess
import threading

import pytest
import requests

from conftest import BACKENDS, Server, Subscriber, wait_for

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


def post_many(server, n, run="r", batch=1, start=0, **data):
    ids = []
    for i in range(start, start + n, batch):
        body = [{"type": "progress", "run": run, "data": {"i": j, **data}} for j in range(i, min(i + batch, start + n))]
        r = server.post(body if batch > 1 else body[0])
        assert r.status_code == 201, r.text
        ids += r.json()["ids"]
    return ids


def test_every_subscriber_gets_every_event_in_order(server, subscribe):
    subs = [subscribe(server) for _ in range(3)]
    for s in subs:
        assert s.next()[1] == "hello"
    ids = post_many(server, 60, batch=1) + post_many(server, 140, batch=20, start=60)
    for s in subs:
        got = s.take(200)
        assert [g[0] for g in got] == ids
        assert [g[2]["data"]["i"] for g in got] == list(range(200))
        assert all(g[1] == "progress" for g in got)
    assert "loop_fanout_direct_total 0" not in server.get("/metrics").text   # the direct path was taken


def test_frames_have_id_event_data_retry_and_the_headers(server):
    r = requests.get(server.url + "/stream/progress", stream=True, timeout=5)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.headers["X-Accel-Buffering"] == "no"
    lines = r.iter_lines(decode_unicode=True)
    assert next(lines) == "retry: 2000"
    assert next(lines) == ""
    hello = [next(lines) for _ in range(3)]
    assert hello[0].startswith("id: ") and hello[1] == "event: hello" and hello[2].startswith("data: {")
    (eid,) = server.post({"type": "output", "run": "x", "data": {"text": "two\nlines"}}).json()["ids"]
    frame = []
    while len(frame) < 3:
        line = next(lines)
        if line:
            frame.append(line)
    assert frame[0] == f"id: {eid}" and frame[1] == "event: output"
    assert json.loads(frame[2][len("data: "):])["data"]["text"] == "two\nlines"
    r.close()


def test_curl_receives_the_stream(server):
    curl = subprocess.Popen(["curl", "-sN", "--max-time", "20", server.url + "/stream/progress"],
                            stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: requests.get(server.url + "/healthz").json()["subscribers"] == 1, message="curl to connect")
        (eid,) = server.post({"type": "progress", "run": "curl", "data": {"percent": 42}}).json()["ids"]
        seen = []
        for line in curl.stdout:
            seen.append(line.rstrip("\n"))
            if line.startswith("data: ") and '"percent":42' in line:
                break
        assert f"id: {eid}" in seen and "event: progress" in seen
    finally:
        curl.kill()
        curl.wait()


def test_hello_carries_the_epoch_and_snapshots_of_runs(server, subscribe):
    server.post([{"type": "task_started", "run": "r1", "data": {"task_name": "T", "story_count": 2}},
                 {"type": "story_started", "run": "r1", "data": {"story_id": "S", "acceptance_criteria": ["a"]}}])
    s = subscribe(server)
    eid, name, hello = s.next()
    assert name == "hello" and hello["resumed"] is False
    assert hello["epoch"] == requests.get(server.url + "/healthz").json()["epoch"]
    assert eid == hello["cursor"] and eid.endswith("-2")
    (run,) = hello["runs"]
    assert run["run"] == "r1" and run["stories"][0]["status"] == "running"


def test_idle_stream_sends_named_heartbeats_carrying_the_cursor(server, subscribe):
    s = subscribe(server)
    hello_id = s.next()[0]
    eid, name, data = s.next()
    assert name == "heartbeat" and eid == hello_id and "ts" in data


def test_filters_by_run_and_types(server, subscribe):
    only_a = subscribe(server, params={"run": "a"})
    outputs = subscribe(server, params={"types": "output,task_started"})
    two_runs = subscribe(server, params=[("run", "a"), ("run", "c")])
    for s in (only_a, outputs, two_runs):
        s.next()
    server.post([{"type": "progress", "run": "a"}, {"type": "output", "run": "b", "data": {"text": "x"}},
                 {"type": "output", "run": "a", "data": {"text": "y"}}, {"type": "task_started", "run": "c"}])
    assert [(d["run"], d["type"]) for _, _, d in only_a.take(2)] == [("a", "progress"), ("a", "output")]
    assert [(d["run"], d["type"]) for _, _, d in outputs.take(3)] == [
        ("b", "output"), ("a", "output"), ("c", "task_started")]
    assert [d["run"] for _, _, d in two_runs.take(3)] == ["a", "a", "c"]


def test_resume_with_last_event_id_gets_exactly_the_missed_events(server, subscribe):
    s = subscribe(server)
    s.next()
    ids = post_many(server, 10)
    got = s.take(5)
    s.close()
    missed = post_many(server, 7, start=10)
    again = subscribe(server, headers={"Last-Event-ID": got[-1][0]})
    eid, name, hello = again.next()
    assert name == "hello" and hello["resumed"] is True and "runs" not in hello and eid == got[-1][0]
    assert [g[0] for g in again.take(12)] == ids[5:] + missed


def test_first_connect_with_last_event_id_query_replays_from_there(server, subscribe):
    ids = post_many(server, 8)
    s = subscribe(server, params={"last_event_id": ids[2]})
    assert s.next()[1] == "hello"
    assert [g[0] for g in s.take(5)] == ids[3:]


def test_reconnects_while_events_keep_flowing_lose_nothing_and_repeat_nothing(server):
    sent, stop = [], threading.Event()

    def emitter():
        i = 0
        while not stop.is_set() and i < 400:
            sent.extend(server.post({"type": "progress", "run": "flow", "data": {"i": i}}).json()["ids"])
            i += 1

    received, last = [], None
    t = threading.Thread(target=emitter)
    t.start()
    try:
        for _round in range(8):
            headers = {"Last-Event-ID": last} if last else {}
            sub = Subscriber(server.url, params=None if last else {"last_event_id": ""}, headers=headers)
            sub.next()  # hello
            for eid, _name, _ in sub.take(25):
                received.append(eid)
                last = eid
            sub.close()
    finally:
        stop.set()
        t.join()
    final = Subscriber(server.url, headers={"Last-Event-ID": last})
    final.next()
    rest = [e for e, _, _ in final.until(lambda item: item[0] == sent[-1])] if last != sent[-1] else []
    final.close()
    # The first subscriber joined live after some events: compare from its first event on.
    start = sent.index(received[0])
    assert received + rest == sent[start:]


def test_resume_after_buffer_eviction_sends_reset_then_live(make_server, subscribe):
    server = make_server("--rate", "0", "--buffer", "10")
    first = post_many(server, 3, run="r")
    server.post({"type": "task_started", "run": "r", "data": {"task_name": "evicted"}})
    post_many(server, 30, run="r", start=3)
    s = subscribe(server, headers={"Last-Event-ID": first[0]})
    assert s.next()[1] == "hello"
    eid, name, data = s.next()
    assert name == "reset" and data["reason"] == "evicted"
    assert data["runs"][0]["run"] == "r" and data["runs"][0]["progress"]["percent"] is None
    assert data["runs"][0]["task_name"] == "evicted" and data["runs"][0]["event_count"] == 34
    assert eid == data["cursor"]
    (live,) = post_many(server, 1, run="r", start=99)
    assert s.take(1)[0][0] == live


def test_restart_keeps_ids_unique_and_ordered_and_old_cursors_resume_or_reset(make_server, backend, tmp_path):
    server = make_server("--rate", "0")
    before = post_many(server, 5)
    server.stop()
    again = Server(tmp_path, port=server.port, args=["--rate", "0"], backend=backend).start()
    try:
        after = post_many(again, 5)
        def key(i):
            return tuple(map(int, i.split("-")))
        assert set(before).isdisjoint(after)
        assert max(map(key, before)) < min(map(key, after))
        s = Subscriber(again.url, headers={"Last-Event-ID": before[-1]})
        assert s.next()[1] == "hello"
        if backend:   # the stream lives in Redis: a restarted sidecar resumes it, nothing missed
            assert [eid for eid, _, _ in s.take(5)] == after
        else:         # the memory backend starts a new epoch: the old cursor gets a reset
            eid, name, data = s.next()
            assert name == "reset" and data["reason"] == "restart"
        s.close()
    finally:
        again.stop()


def test_slow_reader_never_delays_others_and_gets_a_reset_when_it_reads(make_server, subscribe):
    server = make_server("--rate", "0", "--buffer", "50")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", server.port))
    slow.sendall(b"GET /stream/progress HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")  # 1.0: no chunked framing
    fast = subscribe(server)
    fast.next()
    wait_for(lambda: server.get("/healthz").json()["subscribers"] == 2, message="both subscribers")
    blob = "z" * 3000
    total = 3000   # ~9 MB: far more than the slow socket's buffers hold
    got = []
    reader = threading.Thread(target=lambda: got.extend(g[0] for g in fast.take(total)))
    reader.start()
    ids = []
    for i in range(0, total, 20):
        body = [{"type": "output", "run": "big", "data": {"i": j, "text": blob}} for j in range(i, i + 20)]
        ids += server.post(body).json()["ids"]
    reader.join(60)
    assert got == ids                                  # the fast one got everything while the slow one stalled
    # Now the slow one reads: an in-order prefix, then a reset, then nothing lost after it.
    slow.settimeout(10)
    data = b""
    while b"event: reset" not in data:
        chunk = slow.recv(65536)
        assert chunk, "stream ended before a reset"
        data += chunk
    slow.close()
    frames = [f for f in data.split(b"\n\n") if f.startswith(b"id: ")]
    seqs = [int(f.split(b"\n")[0].split(b"-")[1]) for f in frames if b"event: output" in f]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))   # no gap before the reset
    assert seqs[-1] < int(ids[-1].split("-")[1])


def test_too_many_streams_from_one_client_get_429(make_server):
    server = make_server("--max-streams-per-client", "2", "--heartbeat", "0.5")  # a gone client is noticed on the next write
    a, b = Subscriber(server.url), Subscriber(server.url)
    r = requests.get(server.url + "/stream/progress", stream=True, timeout=5)
    assert r.status_code == 429 and r.json()["error"] == "too_many_streams" and "Retry-After" in r.headers
    a.close()
    b.close()
    wait_for(lambda: server.get("/healthz").json()["subscribers"] == 0, timeout=10, message="streams to close")
    c = Subscriber(server.url)
    assert c.next()[1] == "hello"
    c.close()
