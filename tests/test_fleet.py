"""Fleet-wide /metrics and /healthz: a two-worker sidecar on a real Redis answers every scrape with
the whole fleet's numbers (counters summed, gauges summed over live workers), whichever worker is
asked, and each worker's own numbers stay visible under loop_worker_*{worker=...}."""
from __future__ import annotations

import http.client
import re
import time

import pytest
import redis
import requests

from conftest import wait_for
from helpers import redis_hub
from loopstream.sidecar.fleet import Fleet

SCRAPES = 20


def scrape(server) -> dict[str, float]:
    """One scrape over a new connection (so any worker may answer): sample name+labels -> value."""
    r = requests.get(server.url + "/metrics", headers={"Connection": "close"}, timeout=5)
    assert r.status_code == 200
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in r.text.splitlines() if line and not line.startswith("#")}


def per_worker(sample: dict[str, float], name: str) -> dict[str, float]:
    return {re.search(r'worker="([^"]+)"', k).group(1): v for k, v in sample.items()
            if k.startswith(name + "{") and "reason" not in k}


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_twenty_scrapes_of_two_workers_agree_on_the_fleet_totals(make_server):
    server = make_server("--workers", "2", "--rate", "0", "--heartbeat", "1", "--max-streams-per-client", "100")
    for i in range(15):
        r = requests.post(server.url + "/api/events", json={"type": "progress", "run": f"f{i % 3}", "data": {}},
                          headers={"Connection": "close"}, timeout=5)
        assert r.status_code == 201
    bad = requests.post(server.url + "/api/events", json={"type": "Bad Type"}, timeout=5)
    assert bad.status_code == 400
    streams = []
    try:
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/stream/progress")
            assert conn.getresponse().status == 200
            streams.append(conn)
        expected = {"loop_events_accepted_total": 15, "loop_subscribers": 3, "loop_workers": 2,
                    'loop_events_rejected_total{reason="invalid"}': 1}
        wait_for(lambda: all(scrape(server).get(k) == v for k, v in expected.items()), 15,
                 message=f"the fleet's numbers to reach {expected}")
        seen = [scrape(server) for _ in range(SCRAPES)]
        totals = [{k: s[k] for k in expected} for s in seen]
        assert all(t == expected for t in totals), totals
        for s in seen:    # the per-worker view adds up to the totals
            accepted = per_worker(s, "loop_worker_events_accepted_total")
            assert len(accepted) == 2 and sum(accepted.values()) == 15, accepted
            assert sum(per_worker(s, "loop_worker_subscribers").values()) == 3
        health = [requests.get(server.url + "/healthz", headers={"Connection": "close"}, timeout=5).json()
                  for _ in range(6)]
        assert all(h["workers"] == 2 and h["subscribers"] == 3 for h in health), health
        assert len({h["worker"] for h in health}) >= 1
    finally:
        for conn in streams:
            conn.close()


# -- in-process: the real Hub and Fleet on a real Redis ------------------------------------------
class YieldsInExecute:
    """A Redis client whose next MULTI first runs ``meanwhile``: what the gevent switch inside
    execute() lets another greenlet (housekeeping, a scrape) do."""

    def __init__(self, client):
        self.client, self.meanwhile = client, None

    def pipeline(self, **kw):
        p = self.client.pipeline(**kw)
        execute = p.execute

        def run(*args, **kwargs):
            if self.meanwhile:
                meanwhile, self.meanwhile = self.meanwhile, None
                meanwhile()
            return execute(*args, **kwargs)

        p.execute = run
        return p

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_a_report_made_while_another_waits_on_redis_adds_the_growth_once(redis_server):
    redis_server.command("FLUSHALL")
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yielding = YieldsInExecute(client)
    fleet = Fleet(yielding, "loop:")
    yielding.meanwhile = lambda: fleet.report({"accepted": 5}, {})
    fleet.report({"accepted": 5}, {})
    assert client.hget("loop:metrics:total", "accepted") == "5"

    def redis_goes_away():
        raise redis.ConnectionError("gone")

    yielding.meanwhile = redis_goes_away
    with pytest.raises(redis.ConnectionError):
        fleet.report({"accepted": 9}, {})
    fleet.report({"accepted": 9}, {})       # the failed report's growth is added by the next one
    assert client.hget("loop:metrics:total", "accepted") == "9"


SAMPLE = re.compile(r'[a-z_]+(\{[a-z_]+="([^"\\\n]|\\.)*"(,[a-z_]+="([^"\\\n]|\\.)*")*\})? [0-9]+')


def test_what_another_program_left_under_the_fleet_keys_never_reaches_metrics_as_more_than_numbers(redis_server):
    redis_server.command("FLUSHALL")
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    hub = redis_hub(redis_server.url)
    try:
        r.hset("loop:metrics:total", mapping={"resets": "4", 'rejected:x"} 1\nevil_total 9': "3"})
        hostile = {"w1": '{"counters": {"accepted": "1\\nevil_total 2", "resets": true, "reaped": -1,'
                         ' "rejected:a\\"} 1\\nevil": 4, "fanout_direct": 7}, "gauges": {"subscribers": 2}}',
                   "w2\nevil_total 3": '{"counters": {"accepted": 1}}',
                   "w3": '{"counters": {"accepted": NaN}}', "w4": "[[[[", "w5": '"text"'}
        for name, raw in hostile.items():
            r.set("loop:metrics:w:" + name, raw)
            r.zadd("loop:metrics:workers", {name: time.time()})
        text = hub.metrics_text()
        samples = [line for line in text.splitlines() if not line.startswith("# TYPE ")]
        assert all(SAMPLE.fullmatch(line) for line in samples), [s for s in samples if not SAMPLE.fullmatch(s)]
        assert "loop_resets_total 4" in samples
        assert 'loop_worker_fanout_direct_total{worker="w1"} 7' in samples
        assert 'loop_worker_subscribers{worker="w1"} 2' in samples
        r.hset("loop:metrics:total", "accepted", "12abc")      # int() would refuse it: the scrape still sums
        assert "loop_resets_total 4" in hub.metrics_text().splitlines()
    finally:
        hub.close()


def test_healthz_reads_the_fleet_without_writing_to_redis(redis_server):
    redis_server.command("FLUSHALL")
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    hub = redis_hub(redis_server.url)
    try:
        health = hub.health()
        assert health["ok"] and health["workers"] == 1 and health["worker"] == hub.fleet.name
        assert r.keys("loop:metrics:*") == []
        hub.report_fleet()                          # housekeeping's report, about once a second
        assert r.exists("loop:metrics:w:" + hub.fleet.name)
    finally:
        hub.close()
