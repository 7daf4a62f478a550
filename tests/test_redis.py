"""The Redis backend across processes: several sidecars (and workers) on one real redis-server.

The behavioural suite (test_stream, test_api, and the restart, runner and CLI tests) runs
against both backends; this file checks what only a shared backend can do.
"""
import threading

import psutil
import pytest
import redis
import requests

from conftest import Subscriber, wait_for
from loopstream.client.stream import stream
from loopstream.core.events import Draft
from loopstream.sidecar.config import Config
from loopstream.sidecar.hub import Hub, Refused

pytestmark = pytest.mark.parametrize("backend", ["redis"], indirect=True)


def post_many(server, n, run="r", start=0):
    ids = []
    for i in range(start, start + n):
        r = server.post({"type": "progress", "run": run, "data": {"i": i}})
        assert r.status_code == 201, r.text
        ids += r.json()["ids"]
    return ids


def test_published_to_one_sidecar_received_from_another_in_order(make_server, subscribe):
    a = make_server("--rate", "0", "--workers", "2")
    b = make_server("--rate", "0", "--heartbeat", "1")
    sub_b = subscribe(b)
    assert sub_b.next()[1] == "hello"
    ids = []
    for i in range(40):   # alternate the sidecar: one total order all the same
        ids += post_many(a if i % 2 else b, 1, start=i)
    got = sub_b.take(40)
    assert [eid for eid, _, _ in got] == ids
    assert [d["data"]["i"] for _, _, d in got] == list(range(40))
    def key(i):
        return tuple(map(int, i.split("-")))
    assert [key(i) for i in ids] == sorted(map(key, ids)) and len(set(ids)) == 40


def test_a_cursor_from_one_sidecar_resumes_on_another(make_server, subscribe):
    a = make_server("--rate", "0")
    b = make_server("--rate", "0")
    first = post_many(a, 5)
    missed = post_many(a, 7, start=5)
    s = subscribe(b, headers={"Last-Event-ID": first[-1]})
    _, name, hello = s.next()
    assert name == "hello" and hello["resumed"] is True
    assert [eid for eid, _, _ in s.take(7)] == missed


def test_several_workers_are_gunicorn_processes_sharing_the_port(make_server):
    server = make_server("--rate", "0", "--workers", "3")
    master = psutil.Process(server.proc.pid)
    workers = wait_for(lambda: len(master.children()) == 3 and master.children(), message="3 workers")
    assert all("loop" in " ".join(w.cmdline()) for w in workers)
    ids = post_many(server, 30)   # whichever worker takes each POST, the ids are one sequence
    assert [int(i.split("-")[1]) for i in ids] == list(range(1, 31))


def test_the_rate_limit_holds_across_sidecars(make_server):
    a = make_server("--rate", "1", "--burst", "5")
    b = make_server("--rate", "1", "--burst", "5")
    codes = [(a if i % 2 else b).post({"type": "x", "run": "limited"}).status_code for i in range(8)]
    assert codes[:5] == [201] * 5 and 429 in codes[5:]
    r = a.post({"type": "x", "run": "limited"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert a.post({"type": "x", "run": "another"}).status_code == 201


def test_snapshots_and_history_are_the_same_from_every_sidecar(make_server):
    a = make_server("--rate", "0", "--buffer", "10")
    a.post({"type": "task_started", "run": "long", "data": {"task_name": "Long", "story_count": 1}})
    for i in range(0, 260, 20):   # past a checkpoint (every 200 events), and far past the buffer
        a.post([{"type": "output", "run": "long", "data": {"text": f"{j}\n"}} for j in range(i, i + 20)])
    b = make_server("--rate", "0", "--buffer", "10")   # joins late: checkpoint + transcript tail
    snap_a, snap_b = a.get("/api/runs/long").json(), b.get("/api/runs/long").json()
    assert snap_b == snap_a and snap_b["event_count"] == 261
    assert snap_b["output"] == "".join(f"{j}\n" for j in range(260))
    s = Subscriber(b.url)
    _, name, hello = s.next()
    s.close()
    assert [r["run"] for r in hello["runs"]] == ["long"] and hello["runs"][0] == snap_a
    t = b.get("/api/runs/long/transcript").json()
    assert t["complete"] is True and len(t["events"]) == 261
    assert [r["run"] for r in a.get("/api/runs").json()["runs"]] == ["long"]
    assert b.get("/healthz").json()["buffered"] == 10


def test_the_buffer_length_is_the_stream_length(make_server, redis_server):
    server = make_server("--rate", "0", "--buffer", "7")
    post_many(server, 20)
    assert redis_server.command("XLEN", "loop:stream") == b":7\r\n"


def test_losing_redis_gives_503s_and_ends_streams_then_recovers_losing_nothing(make_server, redis_server):
    a = make_server("--rate", "0", "--heartbeat", "1")
    b = make_server("--rate", "0", "--heartbeat", "1")
    accepted = post_many(a, 5)
    seen, ended = [], threading.Event()

    def follow():   # one stream, read raw: it must end when Redis goes
        with requests.get(b.url + "/stream/progress", stream=True, timeout=(3, 30)) as r:
            for line in r.iter_lines():
                if line.startswith(b"id: "):
                    seen.append(line[4:].decode())
        ended.set()

    threading.Thread(target=follow, daemon=True).start()
    wait_for(lambda: seen, message="the hello")
    accepted += post_many(b, 3, start=5)
    wait_for(lambda: accepted[-1] in seen, message="the events before the outage")

    redis_server.kill9()
    assert ended.wait(10), "the stream did not end when Redis went away"
    for server in (a, b):
        r = server.post({"type": "progress", "run": "r", "data": {"i": -1}})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert r.json()["error"] == "backend_unavailable"
        assert server.get("/stream/progress").status_code == 503
        assert server.get("/healthz").status_code == 503

    redis_server.start()   # the same port and data directory (append-only file, fsync always)
    for server in (a, b):
        wait_for(lambda server=server: server.get("/healthz").ok, 15, 0.1, "the sidecar to see Redis again")
    got = []

    def resumed():
        for eid, name, _ in stream(b.url, last_event_id=accepted[-1], read_timeout=10):
            if name == "progress":
                got.append(eid)
                return
    t = threading.Thread(target=resumed, daemon=True)
    t.start()
    wait_for(lambda: a.get("/metrics").ok and "loop_subscribers 1" in b.get("/metrics").text,
             message="the resumed stream")
    accepted += post_many(a, 1, start=8)
    t.join(10)
    assert got == [accepted[-1]]
    transcript = [e["id"] for e in a.get("/api/runs/r/transcript").json()["events"]]
    assert transcript == accepted   # every 201 survived, in order, nothing else



def test_a_worker_loads_live_and_recent_runs_and_reads_older_ones_from_redis(backend):
    from loopstream.sidecar.brokers.redis import RedisBroker

    first = RedisBroker(backend, keep_finished=2)
    first.start()
    try:
        for name in ["old1", "old2", "new1", "new2", "live"]:
            first.publish([Draft("task_started", name, {"task_name": name})])
            if name != "live":
                first.publish([Draft("task_completed", name, {})])
        wait_for(lambda: first.seq == 9, message="the first worker's follower")
    finally:
        first.close()
    joiner = RedisBroker(backend, keep_finished=2)   # a worker started later
    joiner.start()
    try:
        assert joiner.healthy and joiner.seq == 9
        assert sorted(joiner.runs) == ["live", "new1", "new2"]
        old = joiner.snapshot("old1")                  # not held, read from Redis
        assert old["status"] == "passed" and old["task_name"] == "old1" and old["event_count"] == 2
        summaries = joiner.summaries()
        assert sorted(summaries) == ["live", "new1", "new2", "old1", "old2"]
        assert "output" not in summaries["old2"] and summaries["old2"]["status"] == "passed"
        assert [e["type"] for e in joiner.transcript("old2")[0]] == ["task_started", "task_completed"]
    finally:
        joiner.close()


def test_concurrent_emitters_on_two_sidecars_give_every_subscriber_one_gapless_order(make_server, subscribe):
    """A sidecar puts the batches it publishes into its own replica at once when Redis numbered
    them right after its head, and its follower skips them when XREAD brings them back; batches
    racing on two sidecars must still reach each sidecar's subscribers once, in id order, and fold
    into the same snapshot everywhere."""
    a = make_server("--rate", "0")
    b = make_server("--rate", "0")
    subs = [subscribe(a), subscribe(b)]
    for s in subs:
        assert s.next()[1] == "hello"
    a.post({"type": "task_started", "run": "race", "data": {"task_name": "Race", "story_count": 1}})
    ids: list[list[str]] = [[], []]

    def emit(k, server):
        for i in range(60):
            batch = [{"type": "output", "run": "race", "data": {"text": f"{k}.{i}.{j}\n"}} for j in range(1 + i % 3)]
            r = server.post(batch)
            assert r.status_code == 201, r.text
            ids[k] += r.json()["ids"]

    threads = [threading.Thread(target=emit, args=(k, srv)) for k, srv in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    n = 1 + len(ids[0]) + len(ids[1])
    for s in subs:
        got = [eid for eid, _, _ in s.take(n)]
        seqs = [int(eid.split("-")[1]) for eid in got]
        assert seqs == list(range(seqs[0], seqs[0] + n))          # each once, in order, no gap
        assert set(ids[0]) | set(ids[1]) <= set(got)
    snap_a, snap_b = a.get("/api/runs/race").json(), b.get("/api/runs/race").json()
    assert snap_a == snap_b and snap_a["event_count"] == n
    texts = [line for line in snap_a["output"].splitlines()]
    assert sorted(texts) == sorted(f"{k}.{i}.{j}" for k in (0, 1) for i in range(60) for j in range(1 + i % 3))


def test_a_publish_is_one_round_trip_that_charges_and_appends_or_refuses_whole(backend):
    """The rate limit and the append are one script: one EVALSHA per accepted batch, and a batch a
    budget refuses is charged to no bucket and stored nowhere."""
    r = redis.Redis.from_url(backend, decode_responses=True)
    hub = Hub(Config(backend=backend, rate=1, burst=3, client_rate=0.001, client_burst=1000))
    try:
        wait_for(lambda: hub.broker.healthy, message="the broker to load")
        warm = [Draft("progress", "warm", {})]
        hub.publish(warm, hub.admit(warm, True, "c"))        # (loads the script into Redis, once)
        r.config_resetstat()
        for i in range(3):
            drafts = [Draft("progress", "r", {"i": i})]
            hub.publish(drafts, hub.admit(drafts, True, "c"))
        assert r.info("commandstats")["cmdstat_evalsha"]["calls"] == 3
        assert float(r.hget("loop:bucket:run:r", "tokens")) < 0.5                  # the run's burst, spent
        drafts = [Draft("progress", "r", {"i": 3})]
        with pytest.raises(Refused) as refused:
            hub.publish(drafts, hub.admit(drafts, True, "c"))
        assert refused.value.status == 429 and "run:r" in refused.value.message
        assert refused.value.headers["Retry-After"] == "1" and hub.metrics.rate_limited == 1
        assert r.xlen("loop:stream") == 1 + 3 and r.llen("loop:transcript:r") == 3
        assert 996 <= float(r.hget("loop:bucket:client:c", "tokens")) < 996.5   # the refusal charged it nothing
    finally:
        hub.close()


def test_a_bucket_of_another_type_is_moved_aside_and_reads_as_full(backend):
    r = redis.Redis.from_url(backend, decode_responses=True)
    r.set("loop:bucket:run:r", "not a bucket")
    hub = Hub(Config(backend=backend, rate=1, burst=3))
    try:
        wait_for(lambda: hub.broker.healthy, message="the broker to load")
        drafts = [Draft("progress", "r", {})]
        hub.publish(drafts, hub.admit(drafts, True, "c"))
        assert 2 <= float(r.hget("loop:bucket:run:r", "tokens")) < 2.5
        assert [k for k in r.keys("loop:bucket:run:r.damaged-*")] and r.llen("loop:transcript:r") == 1
    finally:
        hub.close()
