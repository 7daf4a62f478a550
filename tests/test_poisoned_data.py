"""No event can stop the sidecar from serving or booting: poisoned events put straight into a
journal or into Redis (past every input check) are logged and skipped, on both backends."""
from __future__ import annotations

import pytest
import requests

from conftest import BACKENDS, Server, Subscriber, wait_for
from loopstream.core import events as ev

INFINITE = '{"type":"task_started","run":"p","ts":1,"data":{"story_count":1e999,"estimated_duration":Infinity}}'
WRONG_TYPES = '{"type":"task_started","run":"q","ts":2,"data":{"stories":7,"story_count":"x","task_name":{"a":1}}}'
HUGE = '{"type":"progress","run":"q","ts":3,"data":{"current":' + "9" * 400 + "}}"


def strict(response: requests.Response):
    """The body as JSON, refusing NaN and Infinity (a browser's JSON.parse would)."""
    return ev.loads(response.content)


def poison_redis(redis_server) -> None:
    r = redis_server.command
    r("SET", "loop:epoch", "1000")
    r("SET", "loop:seq", "4")
    for seq, payload in enumerate([INFINITE, b"\xff\xfe not json", WRONG_TYPES, HUGE], 1):
        r("XADD", "loop:stream", f"1000-{seq}", "e", payload)
        if isinstance(payload, str):
            r("RPUSH", f"loop:transcript:{'p' if seq == 1 else 'q'}", f'{{"id":"1000-{seq}",{payload[1:]}')
    r("SADD", "loop:runs", "p", "q", "ghost")
    r("RPUSH", "loop:transcript:ghost", b"\x00\xff\xfe")
    r("HSET", "loop:summary", "p", "nonsense", "q", "[1]")
    r("HSET", "loop:checkpoint", "q", '{"event_count": "x"}')


def poison_journal(tmp_path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    lines = [INFINITE, WRONG_TYPES, HUGE]
    (runs / "p.jsonl").write_text('{"id":"1000-1",' + lines[0][1:] + "\n")
    (runs / "q.jsonl").write_text("".join(f'{{"id":"1000-{i}",{line[1:]}\n' for i, line in enumerate(lines, 2)))


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_a_sidecar_boots_serves_and_follows_past_poisoned_events(tmp_path, backend, request):
    if backend:
        poison_redis(request.getfixturevalue("redis_server"))
    else:
        poison_journal(tmp_path)
    server = Server(tmp_path, backend=backend, args=["--rate", "0"]).start()
    try:
        assert server.get("/healthz").status_code == 200
        runs = {r["run"]: r for r in strict(server.get("/api/runs"))["runs"]}
        assert "q" in runs
        q = strict(server.get("/api/runs/q"))
        assert q["task_name"] == '{"a":1}' and q["story_count"] is None
        polled = strict(server.get("/api/events"))["events"]
        assert [e["id"] for e in polled] == (["1000-3"] if backend else [])   # stand-ins are never read
        assert strict(server.get("/api/runs/q/transcript"))["complete"] is False    # the 400-digit line
        sub = Subscriber(server.url)
        assert sub.next()[1] == "hello"
        if backend:   # a poisoned entry arriving while the follower runs
            redis = request.getfixturevalue("redis_server")
            redis.command("INCR", "loop:seq")
            redis.command("XADD", "loop:stream", "1000-5", "e", INFINITE.replace('"p"', '"q"'))
        ids = server.post({"type": "progress", "run": "q", "data": {"percent": 40}}).json()["ids"]
        wait_for(lambda: strict(server.get("/api/runs/q"))["last_event_id"] == ids[0],
                 message="the event after the poison to be folded")
        assert strict(server.get("/api/runs/q"))["progress"]["percent"] == 40
        eid, name, data = sub.take(1)[0]              # the stream skips the stand-in and goes on
        assert (eid, name, data["data"]) == (ids[0], "progress", {"percent": 40})
        sub.close()
        assert server.get("/healthz").status_code == 200
        log = server.log.read_text()
        assert "Traceback" not in log and ("skipped" in log)
        assert "unreadable" not in {r["run"] for r in strict(server.get("/api/runs"))["runs"]}
    finally:
        server.stop()
    again = Server(tmp_path, port=server.port, backend=backend, args=["--rate", "0"]).start()   # boots again
    try:
        assert strict(again.get("/api/runs/q"))["progress"]["percent"] == 40
    finally:
        again.stop()


BAD_BODIES = [
    (b'{"type":"task_started","run":"p","data":{"story_count":1e999}}', "data.story_count"),
    (b'{"type":"task_started","run":"p","data":{"estimated_duration":' + b"9" * 400 + b"}}",
     "data.estimated_duration"),
    (b'[{"type":"output","run":"p","data":{"text":"a"}},{"type":"progress","run":"p","data":{"x":[NaN]}}]', "body"),
    (b'{"type":"progress","run":"p","data":{"n":-Infinity}}', "body"),
    (b'{"type":"note","run":"p","data":{"t":"\\ud800"}}', "data.t"),
    (b'{"type":"note","run":"p","data":{"t":"\xed\xa0\x80"}}', "body"),
    (b'{"type":"note","run":"p","data":{"d":' + b"[" * 40 + b"]" * 40 + b"}}", "data.d"),
    (b'[{"type":"output","run":"p","data":{"text":"a"}},{"type":"progress","run":"p","data":{"big":1e16}}]',
     "[1].data.big"),
]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_unbounded_numbers_bad_text_and_deep_nesting_are_400_naming_the_field_and_store_nothing(make_server):
    server = make_server("--rate", "0")
    for body, field in BAD_BODIES:
        r = requests.post(server.url + "/api/events", data=body, timeout=5,
                          headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (body[:60], r.text)
        assert r.json()["field"].startswith(field), (body[:60], r.json())
    assert strict(server.get("/api/events"))["events"] == []
    assert server.get("/api/runs/p").status_code == 404
    assert server.post({"type": "progress", "run": "p", "data": {"n": 1e15, "m": [[1.5]]}}).status_code == 201
