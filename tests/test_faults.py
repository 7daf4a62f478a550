"""Faults, short versions (the benchmark runs them at full size): storms, restarts.
The kill -9 during a run is in test_runner.py, the stalled reader in test_stream.py."""
import socket
import struct
import threading

import psutil
import pytest

from conftest import BACKENDS, Server, wait_for
from loopstream.client.stream import stream


def worker_fds(server) -> int:
    master = psutil.Process(server.proc.pid)
    return sum(p.num_fds() for p in master.children(recursive=True))


def test_a_storm_of_clients_connecting_and_dropping_leaves_no_leak(make_server):
    server = make_server("--rate", "0", "--heartbeat", "0.5", "--max-streams-per-client", "1000",
                         "--max-connections-per-client", "1000")
    baseline = worker_fds(server)
    socks = []
    for i in range(300):
        s = socket.create_connection(("127.0.0.1", server.port))
        request = b"GET /stream/progress HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
        s.sendall(request if i % 3 else request[:12])          # a third never finish their request
        socks.append(s)
    wait_for(lambda: server.get("/healthz").json()["subscribers"] >= 200, message="the storm to connect")
    for i, s in enumerate(socks):
        if i % 2:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # reset, not close
        s.close()
    server.post({"type": "progress", "run": "storm"})
    wait_for(lambda: server.get("/healthz").json()["subscribers"] == 0, timeout=20,
             message="the subscriber count to return to zero")
    wait_for(lambda: worker_fds(server) <= baseline + 2, timeout=40,
             message=f"the worker's file descriptors to return to {baseline}")
    assert "loop_subscribers 0" in server.get("/metrics").text


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_a_client_resumes_after_a_restart(make_server, backend, tmp_path):
    server = make_server("--rate", "0")
    seen, stop = [], threading.Event()

    def consume():
        for _, name, data in stream(server.url, stop=stop, read_timeout=10):
            seen.append((name, data))
            if name == "progress" and data["data"].get("after"):
                return

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    wait_for(lambda: any(n == "hello" for n, _ in seen), message="the first hello")
    server.stop()
    again = Server(tmp_path, port=server.port, args=["--rate", "0"], backend=backend).start()
    try:
        def delivered():
            again.post({"type": "progress", "run": "r", "data": {"after": True}})
            t.join(0.2)
            return not t.is_alive()

        wait_for(delivered, timeout=30, message="the resumed client to get a new event")
        names = [n for n, _ in seen]
        assert names.count("hello") == 2
        # Memory: a new epoch is a reset, never a gap. Redis: the same stream, resumed without one.
        assert ("reset" in names) == (backend is None)
        assert names[-1] == "progress"
    finally:
        stop.set()
        again.stop()


def test_departed_subscribers_leave_the_fan_out_and_never_slow_publishing(make_server):
    server = make_server("--rate", "0", "--max-streams-per-client", "1000",
                         "--max-connections-per-client", "1000")
    socks = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"GET /stream/progress HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        socks.append(s)
    wait_for(lambda: server.get("/healthz").json()["subscribers"] == 200, message="200 subscribers")
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    # Publishing finds them gone (no heartbeat needed) and their streams end.
    wait_for(lambda: server.post({"type": "progress", "run": "p"}).ok and
             server.get("/healthz").json()["subscribers"] == 0, timeout=20,
             message="publishes to clear the departed subscribers")
