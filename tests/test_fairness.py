"""One client cannot take what others need, on a real `loop serve`, both backends.

Two (three) clients on loopback: 127.0.0.1 floods, 127.0.0.2 works. Control requests, batches
that name someone else's run, and batches that name hundreds of new runs are all charged and
bounded; the working client's runs start and go on. The default limits: 10 events/s and a burst
of 20 per run, 100 live runs per client.
"""
from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from conftest import BACKENDS, wait_for
from loopstream.core import events as ev
from loopstream.sidecar.config import Config
from loopstream.sidecar.hub import Hub, Refused

pytestmark = pytest.mark.parametrize("backend", BACKENDS, indirect=True)


class Client:
    """One client address with one kept connection."""

    def __init__(self, port: int, source: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))

    def request(self, method: str, path: str, body=None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = self.conn.getresponse()
        return resp.status, json.loads(resp.read())

    def post(self, body) -> tuple[int, dict]:
        return self.request("POST", "/api/events", body)

    def post_chunked(self, body) -> tuple[int, dict]:
        """The same POST with a chunked body: gunicorn and Flask serve it, not the worker's fast path."""
        self.conn.request("POST", "/api/events", body=iter([json.dumps(body).encode()]), encode_chunked=True,
                          headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        resp = self.conn.getresponse()
        return resp.status, json.loads(resp.read())

    def events_of(self, run: str) -> int:
        status, snap = self.request("GET", f"/api/runs/{run}")
        assert status == 200, snap
        return snap["event_count"]


def started(run: str) -> dict:
    return {"type": "task_started", "run": run, "data": {"task_name": run}}


def test_control_requests_are_charged_to_the_run_and_the_client(make_server):
    srv = make_server()
    owner, flooder = Client(srv.port, "127.0.0.2"), Client(srv.port, "127.0.0.1")
    assert owner.post(started("work"))[0] == 201
    begun = time.monotonic()
    answers = [flooder.request("POST", f"/api/runs/work/{'pause' if i % 2 == 0 else 'resume'}", {})
               for i in range(150)]
    elapsed = time.monotonic() - begun
    statuses = [status for status, _ in answers]
    accepted = sum(status == 202 and body["requested"] for status, body in answers)   # else a no-op, charged nothing
    assert set(statuses) == {202, 429}
    assert next(body for status, body in answers if status == 429)["error"] == "rate_limited"
    assert accepted <= 19 + 10 * elapsed + 1             # the run's burst (20, one spent on task_started) + its rate
    assert owner.events_of("work") == 1 + accepted        # nothing past the limit was published
    assert owner.post(started("elsewhere"))[0] == 201     # the other client's budget is its own


def test_a_batch_is_charged_to_every_run_it_names(make_server):
    srv = make_server()
    owner, flooder = Client(srv.port, "127.0.0.2"), Client(srv.port, "127.0.0.1")
    assert owner.post(started("victim"))[0] == 201
    begun = time.monotonic()
    answers = [(flooder.post_chunked if i % 2 else flooder.post)(     # both paths, charged alike
        [started(f"decoy-{i}")] + [{"type": "progress", "run": "victim", "data": {}}] * 9) for i in range(60)]
    elapsed = time.monotonic() - begun
    refused = [body for status, body in answers if status == 429]
    assert refused and all("run:victim" in body["message"] for body in refused)
    into_victim = owner.events_of("victim") - 1
    assert into_victim == 9 * sum(status == 201 for status, _ in answers)   # all or nothing per batch
    assert into_victim <= 19 + 10 * elapsed + 9               # the victim's budget, not the decoys'
    refused_decoy = next(i for i, (status, _) in enumerate(answers) if status == 429)
    assert owner.post(started(f"decoy-{refused_decoy}"))[0] == 201   # a refused batch charged its decoy nothing


def test_one_client_naming_new_runs_cannot_stop_another_starting_one(make_server):
    srv = make_server()
    flooder, other = Client(srv.port, "127.0.0.1"), Client(srv.port, "127.0.0.2")
    status, body = flooder.post([{"type": "note", "run": f"ghost-{i}"} for i in range(1000)])   # 30 KB of new runs
    assert (status, body["error"]) == (429, "too_many_live_runs") and "--max-live-runs-per-client" in body["message"]
    for k in range(2):                                     # 100 new runs: its share
        assert flooder.post([started(f"ghost-{k}-{i}") for i in range(50)])[0] == 201
    status, body = flooder.post([started("one-more")])
    assert (status, body["error"]) == (429, "too_many_live_runs")
    assert flooder.post({"type": "progress", "run": "ghost-0-7", "data": {}})[0] == 201   # its live runs go on
    assert other.post(started("mine"))[0] == 201           # and another client starts its run


def test_runs_only_named_once_give_their_slots_back(make_server):
    """The probe's batch naming new runs that fill --max-live-runs: its runs are finished after
    --ghost-after, and then another client's new run is accepted."""
    srv = make_server("--max-live-runs", "100", "--max-live-runs-per-client", "0", "--ghost-after", "1")
    flooder, other = Client(srv.port, "127.0.0.1"), Client(srv.port, "127.0.0.2")
    assert flooder.post([{"type": "note", "run": f"ghost-{i}"} for i in range(100)])[0] == 201
    status, body = other.post(started("mine"))
    assert (status, body["error"]) == (503, "too_many_live_runs")
    wait_for(lambda: other.post(started("mine"))[0] == 201, 20, 0.2, "the ghost runs to give their slots back")
    # the reaper finishes the ghosts in turn: the first slot freed let "mine" in, ghost-7 may come a moment later
    wait_for(lambda: other.request("GET", "/api/runs/ghost-7")[1]["status"] == "interrupted", 20, 0.2,
             "ghost-7 to be finished as interrupted")


def at_once(n: int, call) -> list:
    """``call(i)`` for i < n from n threads released together: concurrent requests, as many clients make."""
    gate, results = threading.Barrier(n), [None] * n

    def run(i: int) -> None:
        gate.wait()
        results[i] = call(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_stream_opens_from_one_client_stay_within_its_cap(make_server):
    srv = make_server("--max-streams-per-client", "2", "--heartbeat", "1")
    conns = [http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10) for _ in range(10)]
    try:
        def open_stream(i: int) -> int:
            conns[i].request("GET", "/stream/progress")
            return conns[i].getresponse().status

        statuses = at_once(10, open_stream)
        assert sorted(statuses) == [200] * 2 + [429] * 8, statuses
    finally:
        for c in conns:
            c.close()


def test_a_batch_admitted_while_another_was_charged_is_counted_against_the_client(backend):
    """Were charge() to yield (a limiter in another process), a batch admitted and published meanwhile
    counts when the first batch's live runs are checked again."""
    hub = Hub(Config(backend=backend, rate=0, max_live_runs_per_client=1))
    try:
        wait_for(lambda: hub.broker.healthy, message="the broker to load")
        charge = hub.charge
        meanwhile = [lambda: (hub.admit([ev.Draft("task_started", "b", {})], True, "c"),
                              hub.publish([ev.Draft("task_started", "b", {})]))]

        def yielding(*args):
            if meanwhile:
                meanwhile.pop()()
            return charge(*args)

        hub.charge = yielding
        with pytest.raises(Refused) as refused:
            hub.admit([ev.Draft("task_started", "a", {})], True, "c")
        assert (refused.value.status, refused.value.code) == (429, "too_many_live_runs")
    finally:
        hub.close()


def test_a_stop_asked_while_another_is_being_charged_publishes_nothing_more(backend):
    hub = Hub(Config(backend=backend, rate=0))
    try:
        wait_for(lambda: hub.broker.healthy, message="the broker to load")
        hub.publish([ev.Draft("task_started", "work", {})])
        charge, answers = hub.charge, []
        meanwhile = [lambda: answers.append(hub.control("work", "stop", addr="c2"))]

        def yielding(*args):
            if meanwhile:
                meanwhile.pop()()
            return charge(*args)

        hub.charge = yielding
        answers.append(hub.control("work", "stop", addr="c1"))
        assert [a["requested"] for a in answers] == [False, True], answers
        hub.broker.catch_up()
        assert [e["type"] for e in hub.transcript("work")["events"]].count("stop_requested") == 1
    finally:
        hub.close()
