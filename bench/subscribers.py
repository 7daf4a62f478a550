"""N raw-socket SSE subscribers in one process (run by the benchmark as a child).

    python -m bench.subscribers --port P --path /stream --n 1000

One epoll loop, no framework: the receive time of every frame is the moment
epoll reported its socket readable (taken once per wake-up), so the cost of
parsing 1,000 sockets one after another is not counted as server latency.
Prints {"ready": connected, "failed": n} once connected, then on "stop LO HI"
(stdin) prints the results for seqs LO..HI.
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import select
import socket
import sys
import time

SEQ = re.compile(rb'"seq":\s*(\d+)')
SENT = re.compile(rb'"sent":\s*([0-9.]+)')
HEADER_WAIT = 3.0   # Flask-SSE sends its headers only with the first message


class Sub:
    __slots__ = ("sock", "buf", "head_done", "status_ok", "seqs", "latencies", "resets", "open")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.head_done = False
        self.status_ok = True
        self.seqs: list[int] = []
        self.latencies: list[float] = []
        self.resets = 0
        self.open = True

    def feed(self, data: bytes, now: float) -> None:
        buf = self.buf + data
        if not self.head_done:
            if b"\r\n\r\n" not in buf:
                self.buf = buf
                return
            head, buf = buf.split(b"\r\n\r\n", 1)
            self.head_done = True
            self.status_ok = b" 200" in head.split(b"\r\n", 1)[0]
        buf = buf.replace(b"\r\n", b"\n")        # sse-starlette ends lines with CRLF
        *frames, self.buf = buf.split(b"\n\n")
        for frame in frames:
            if b"event: reset" in frame:
                self.resets += 1
                continue
            m = SEQ.search(frame)
            s = SENT.search(frame)
            if m and s:
                self.seqs.append(int(m.group(1)))
                self.latencies.append((now - float(s.group(1))) * 1000)


class Pool:
    """The subscribers' sockets under one epoll."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.subs: dict[int, Sub] = {}
        self.failed = 0

    def connect(self, host: str, port: int, request: bytes, n: int) -> None:
        for _ in range(n):
            try:
                s = socket.create_connection((host, port), timeout=10)
                s.sendall(request)
                s.setblocking(False)
            except OSError:
                self.failed += 1
                continue
            self.subs[s.fileno()] = Sub(s)
            self.ep.register(s.fileno(), select.EPOLLIN)

    def pump(self, timeout: float) -> None:
        ready = self.ep.poll(timeout)
        now = time.time()             # once per wake-up: reading the sockets before is not server latency
        for fd, _ in ready:
            sub = self.subs.get(fd)
            if sub is None:    # stdin: read by the caller
                continue
            try:
                data = sub.sock.recv(1 << 18)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self.ep.unregister(fd)
                sub.open = False
                continue
            sub.feed(data, now)

    def wait_ready(self) -> int:
        """Wait until every subscriber has its headers (or had HEADER_WAIT seconds); drop the bad ones."""
        deadline = time.monotonic() + HEADER_WAIT
        while time.monotonic() < deadline and not all(s.head_done for s in self.subs.values()):
            self.pump(0.05)
        bad = [fd for fd, s in self.subs.items() if (s.head_done and not s.status_ok) or not s.open]
        for fd in bad:
            if self.subs[fd].open:
                self.ep.unregister(fd)
            self.subs.pop(fd).sock.close()
        return len(bad)

    def read_command(self) -> bytes:
        """Keep reading the streams until a line comes on stdin."""
        stdin = sys.stdin.fileno()
        self.ep.register(stdin, select.EPOLLIN)
        command = b""
        while b"\n" not in command:
            if any(fd == stdin for fd, _ in self.ep.poll(0)):
                command += sys.stdin.buffer.raw.read(4096)
            self.pump(1.0)
        return command

    def result(self, lo: int, hi: int) -> dict:
        """Latencies and per-subscriber counts of the events numbered lo..hi."""
        result: dict = {"latencies_ms": [], "per_sub": [], "resets": 0, "connected": len(self.subs)}
        for sub in self.subs.values():
            got = {q for q in sub.seqs if lo <= q <= hi}
            result["latencies_ms"] += [lat for q, lat in zip(sub.seqs, sub.latencies, strict=False) if lo <= q <= hi]
            result["per_sub"].append([len(got), sub.resets])
            result["resets"] += sub.resets
            sub.sock.close()
        return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/stream")
    p.add_argument("--n", type=int, required=True)
    args = p.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    request = f"GET {args.path} HTTP/1.0\r\nHost: {args.host}\r\nAccept: text/event-stream\r\n\r\n".encode()
    pool = Pool()
    pool.connect(args.host, args.port, request, args.n)
    bad = pool.wait_ready()
    print(json.dumps({"ready": len(pool.subs), "failed": pool.failed + bad}), flush=True)
    _, lo, hi = pool.read_command().decode().split()
    print(json.dumps(pool.result(int(lo), int(hi))), flush=True)


if __name__ == "__main__":
    main()
