"""Client addresses through trusted proxies (--forwarded-allow-ips) against a real `loop serve`:
each client behind the proxy keeps its own budget and stream cap, on the ingest fast path and
through Flask; a forged header from an untrusted peer changes nothing; a malformed one from a
trusted proxy falls back to the peer and is counted; a bad option value is one line, exit 2."""
from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys

import pytest

from conftest import wait_for
from loopstream.sidecar.forwarded import Trusted, TrustError

BUDGET = ("--rate", "1000", "--burst", "1000", "--client-rate", "0.001", "--client-burst", "3")


def post(port: int, run: str, headers: dict[str, str] | None = None, source: str = "127.0.0.1"):
    """One event POST from ``source`` with ``headers``: (status, JSON body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        conn.request("POST", "/api/events", json.dumps({"type": "progress", "run": run, "data": {}}),
                     {"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def spend(port: int, headers: dict[str, str], source: str = "127.0.0.1", n: int = 3) -> None:
    for i in range(n):
        status, body = post(port, f"r{i}-{source}", headers, source)
        assert status == 201, body


def metric(server, name: str) -> float:
    for line in server.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


# -- the rules, pure ---------------------------------------------------------------------------
def test_the_right_most_untrusted_address_is_the_client():
    t = Trusted.parse("127.0.0.1,10.0.0.0/8")
    assert t.client("127.0.0.1", "6.6.6.6, 203.0.113.7, 10.1.2.3", None) == ("203.0.113.7", False)
    assert t.client("127.0.0.1", "10.0.0.1, 10.0.0.2", None) == ("10.0.0.1", False)   # all trusted: left-most
    assert t.client("127.0.0.1", None, "203.0.113.9") == ("203.0.113.9", False)
    assert t.client("127.0.0.1", "[2001:db8::1]", None) == ("2001:db8::1", False)
    assert t.client("127.0.0.1", None, None) == ("127.0.0.1", False)


def test_an_untrusted_peer_is_its_own_client_whatever_it_sends():
    t = Trusted.parse(["127.0.0.1"])
    assert t.client("192.0.2.5", "203.0.113.7", "203.0.113.8") == ("192.0.2.5", False)
    assert Trusted.parse(None).client("127.0.0.1", "203.0.113.7", None) == ("127.0.0.1", False)


@pytest.mark.parametrize("header", ["not-an-ip", "203.0.113.7, ", "1.2.3.4;rm", "1.2.3.4:80", ",".join(["1.1.1.1"] * 40)])
def test_a_malformed_header_from_a_trusted_proxy_falls_back_to_the_peer(header):
    t = Trusted.parse("127.0.0.1")
    assert t.client("127.0.0.1", header, None) == ("127.0.0.1", True)
    assert t.client("127.0.0.1", None, header) == ("127.0.0.1", True)


def test_a_bad_allow_list_entry_is_named():
    with pytest.raises(TrustError, match="'10.0.0.0/33'"):
        Trusted.parse("127.0.0.1,10.0.0.0/33")
    assert Trusted.parse("*").trusts("198.51.100.1")


# -- a real sidecar ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["fast", "flask"])
def test_clients_behind_a_trusted_proxy_keep_their_own_budgets(make_server, path):
    """The fast path serves plain event POSTs; --access-log sends every request through Flask."""
    extra = ("--access-log",) if path == "flask" else ()
    server = make_server(*BUDGET, "--forwarded-allow-ips", "127.0.0.1", *extra)
    spend(server.port, {"X-Forwarded-For": "203.0.113.2"})
    status, body = post(server.port, "more", {"X-Forwarded-For": "203.0.113.2"})
    assert status == 429 and "client:203.0.113.2" in body["message"], body
    spend(server.port, {"X-Forwarded-For": "198.51.100.9, 203.0.113.3"})     # another client, its own budget
    spend(server.port, {"X-Real-IP": "203.0.113.4"})
    if path == "flask":
        log = wait_for(lambda: "203.0.113.4" in server.log.read_text() and server.log.read_text(),
                       message="the access log line")
        assert '203.0.113.2 [' in log and '"POST /api/events HTTP/1.1" 429' in log


def test_a_forged_header_from_an_untrusted_peer_changes_nothing(make_server):
    server = make_server(*BUDGET, "--forwarded-allow-ips", "127.0.0.1")
    for i in range(3):
        status, body = post(server.port, f"f{i}", {"X-Forwarded-For": f"203.0.113.{i}", "X-Real-IP": f"198.51.100.{i}"},
                            source="127.0.0.2")
        assert status == 201, body
    status, body = post(server.port, "f9", {"X-Forwarded-For": "203.0.113.99"}, source="127.0.0.2")
    assert status == 429 and "client:127.0.0.2" in body["message"], body
    assert metric(server, "loop_forwarded_malformed_total") == 0


def test_without_the_option_the_headers_are_ignored(make_server):
    server = make_server(*BUDGET)
    spend(server.port, {"X-Forwarded-For": "203.0.113.50"})
    status, body = post(server.port, "x", {"X-Forwarded-For": "203.0.113.51"})
    assert status == 429 and "client:127.0.0.1" in body["message"], body


def test_a_malformed_header_from_the_proxy_is_charged_to_the_proxy_and_counted(make_server):
    server = make_server(*BUDGET, "--forwarded-allow-ips", "127.0.0.1")
    status, _ = post(server.port, "m1", {"X-Forwarded-For": "not an address"})
    assert status == 201
    spend(server.port, {"X-Real-IP": "999.1.1.1"}, n=2)
    status, body = post(server.port, "m2", {"X-Forwarded-For": "203.0.113.7, junk"})
    assert status == 429 and "client:127.0.0.1" in body["message"], body
    assert metric(server, "loop_forwarded_malformed_total") == 4


def test_the_stream_cap_counts_each_client_behind_the_proxy(make_server):
    server = make_server("--max-streams-per-client", "1", "--heartbeat", "1", "--forwarded-allow-ips", "127.0.0.0/8")
    held = []
    try:
        for client in ("203.0.113.20", "203.0.113.21"):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", "/stream/progress", headers={"X-Forwarded-For": client})
            r = conn.getresponse()
            assert r.status == 200
            held.append(conn)
        wait_for(lambda: metric(server, "loop_stream_clients") == 2, message="two clients streaming")
        r2 = server.get("/stream/progress", headers={"X-Forwarded-For": "203.0.113.20"})
        assert r2.status_code == 429
        message = r2.json()["message"]
        assert "203.0.113.20" in message and "--max-streams-per-client" in message and r2.json()["cap"] == 1
    finally:
        for conn in held:
            conn.close()


@pytest.mark.parametrize("value", ["10.0.0.0/33", "localhost", "127.0.0.1,,bogus"])
def test_a_bad_forwarded_allow_ips_is_one_line_and_exit_2(value, tmp_path):
    r = subprocess.run([sys.executable, "-m", "loopstream", "serve", "--no-history", "--port", "0",
                        "--forwarded-allow-ips", value], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--forwarded-allow-ips" in lines[0], r.stderr


def test_any_peer_is_trusted_only_with_a_warning(make_server):
    server = make_server(*BUDGET, "--forwarded-allow-ips", "*")
    spend(server.port, {"X-Forwarded-For": "203.0.113.60"}, source="127.0.0.3")
    assert "--forwarded-allow-ips '*'" in server.log.read_text()


def test_a_trusted_proxys_connections_are_not_capped_per_address_but_others_are(make_server):
    """A proxy's connections carry every user's requests: the per-address gate skips them."""
    server = make_server("--max-connections-per-client", "2", "--forwarded-allow-ips", "127.0.0.1")
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    opened: list[socket.socket] = []
    try:
        for source in ("127.0.0.1",) * 5 + ("127.0.0.2",) * 2:     # idle, unfinished: each one counts
            opened.append(socket.create_connection(("127.0.0.1", server.port), 10, (source, 0)))
        for sock in opened[:5]:        # the proxy's five are all served
            sock.sendall(head)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")

        def third_refused() -> bool:
            with socket.create_connection(("127.0.0.1", server.port), 10, ("127.0.0.2", 0)) as sock:
                sock.sendall(head)
                return b"too_many_connections" in sock.recv(65536)
        wait_for(third_refused, message="the untrusted address's third connection to be refused")
    finally:
        for sock in opened:
            sock.close()


def test_the_hub_resolves_and_counts_without_a_server():
    from loopstream.sidecar.config import Config
    from loopstream.sidecar.hub import Hub

    hub = Hub(Config(forwarded_allow_ips=["127.0.0.1"]))
    try:
        assert hub.client("127.0.0.1", "203.0.113.5", None) == "203.0.113.5"
        assert hub.client("127.0.0.9", "203.0.113.5", None) == "127.0.0.9"
        assert hub.client("127.0.0.1", "junk", None) == "127.0.0.1"
        assert hub.metrics.forwarded_malformed == 1
        assert "loop_forwarded_malformed_total 1" in hub.metrics_text()
    finally:
        hub.close()
