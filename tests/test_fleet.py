"""Fleet-wide /metrics and /healthz: a two-worker sidecar on a real Redis answers every scrape with
the whole fleet's numbers (counters summed, gauges summed over live workers), whichever worker is
asked, and each worker's own numbers stay visible under loop_worker_*{worker=...}."""
from __future__ import annotations

import http.client
import re

import pytest
import requests

from conftest import wait_for

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
