"""The servers under test: how to start each, where to publish, where to subscribe."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=0.5).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


def gunicorn(app: str, port: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1", "--worker-connections", "30000",
            "-b", f"127.0.0.1:{port}", "--log-level", "warning", "--graceful-timeout", "1",
            "--no-control-socket", app]


def start_redis(procs: list[subprocess.Popen]) -> int:
    """A throw-away redis-server (Debian's package) on a free port, appended to ``procs``; its port."""
    port = free_port()
    procs.append(subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--maxclients", "60000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start (is Debian's redis-server installed?)")


@dataclass
class Target:
    name: str
    stream_path: str = "/stream"
    publish_path: str = "/publish"
    batches: bool = False               # accepts an array of events in one POST
    port: int = 0
    procs: list[subprocess.Popen] = field(default_factory=list)
    tmp: str | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict:
        return {}

    def start(self) -> Target:
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix=f"bench-{self.name.split()[0]}-")
        self.before_start()
        log = open(Path(self.tmp) / "server.log", "ab")
        self.procs.append(subprocess.Popen(self.command(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                           env={**os.environ, **self.env()}, start_new_session=True))
        wait_http(f"http://127.0.0.1:{self.port}/healthz")
        return self

    def before_start(self) -> None:
        pass

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        self.procs.clear()

    def rss_mb(self) -> float:
        """Resident memory of the server's processes (gunicorn's master and worker) as PSS:
        pages a forked worker shares with its master count once, not twice as a sum of RSS would."""
        total = 0
        proc = self.procs[-1]
        try:
            p = psutil.Process(proc.pid)
            for q in [p, *p.children(recursive=True)]:
                total += q.memory_full_info().pss
        except psutil.NoSuchProcess:
            pass
        return total / 2**20

    def rss_sum_mb(self) -> float:
        """The plain sum of RSS over the server's processes (counts shared pages once per process)."""
        try:
            p = psutil.Process(self.procs[-1].pid)
            return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20
        except psutil.NoSuchProcess:
            return 0.0

    def body(self, seq: int, sent: float) -> bytes:
        return json.dumps({"seq": seq, "sent": sent}).encode()

    def capacity_extras(self) -> dict:
        """What a capacity row adds for this server beside its own processes' memory (see LoopRedis)."""
        return {}

    def batch(self, seqs: range, sent: float) -> bytes:
        raise NotImplementedError


class Loop(Target):
    def __init__(self, history: bool = False, name: str | None = None):
        super().__init__(name or ("loop (history on)" if history else "loop"), stream_path="/stream/progress",
                         publish_path="/api/events", batches=True)
        self.history = history

    def command(self) -> list[str]:
        db = ["--db", str(Path(self.tmp) / "history.json")] if self.history else ["--no-history"]
        return [sys.executable, "-m", "loopstream", "serve", "--port", str(self.port), "--rate", "0",
                "--max-streams", "100000", "--max-streams-per-client", "100000",
                "--max-connections-per-client", "100000", *db]

    def body(self, seq: int, sent: float) -> bytes:
        return json.dumps({"type": "bench", "run": "bench", "data": {"seq": seq, "sent": sent}}).encode()

    def batch(self, seqs: range, sent: float) -> bytes:
        return json.dumps([{"type": "bench", "run": "bench", "data": {"seq": s, "sent": sent}} for s in seqs]).encode()


class LoopRedis(Loop):
    """The Redis backend with several gunicorn workers: subscribers and the emitter land on
    whichever worker accepts them, so most deliveries cross from one worker to another via Redis."""

    def __init__(self, workers: int = 2):
        super().__init__(name=f"loop (Redis, {workers} workers)")
        self.workers = workers
        self.redis_port = 0

    def before_start(self) -> None:
        self.redis_port = start_redis(self.procs)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "loopstream", "serve", "--port", str(self.port), "--rate", "0",
                "--max-streams", "100000", "--max-streams-per-client", "100000",
                "--max-connections-per-client", "100000",
                "--backend", f"redis://127.0.0.1:{self.redis_port}/0", "--workers", str(self.workers)]

    def capacity_extras(self) -> dict:
        """redis-server's own memory (PSS; rss_mb() counts gunicorn's master and workers only) and
        the established connections each worker holds on the HTTP port: the held streams, by the
        worker that accepted them. Read from the kernel's TCP table, which changes while it is read:
        a few in 10,000 can be missed (a count of open descriptors instead would include the sockets
        of subscribers gone since, which a worker closes only when it next writes to them)."""
        extras: dict = {"redis_mb": 0.0, "per_worker": []}
        try:
            extras["redis_mb"] = psutil.Process(self.procs[0].pid).memory_full_info().pss / 2**20
            workers = psutil.Process(self.procs[-1].pid).children(recursive=True)
            extras["per_worker"] = [sum(1 for c in w.net_connections("tcp")
                                        if c.laddr and c.laddr.port == self.port and c.status == "ESTABLISHED")
                                    for w in workers]
        except psutil.NoSuchProcess:
            pass
        return extras


class Starlette(Target):
    def __init__(self):
        super().__init__("sse-starlette + uvicorn")

    def command(self) -> list[str]:
        return [sys.executable, str(ROOT / "bench" / "peers" / "starlette_hub.py"), "--port", str(self.port)]


class FlaskSSE(Target):
    def __init__(self):
        super().__init__("Flask-SSE + Redis (gunicorn/gevent)")
        self.redis_port = 0

    def before_start(self) -> None:
        self.redis_port = start_redis(self.procs)

    def env(self) -> dict:
        return {"REDIS_URL": f"redis://127.0.0.1:{self.redis_port}"}

    def command(self) -> list[str]:
        return gunicorn("bench.peers.flask_sse_hub:app", self.port)


class NaiveQueue(Target):
    def __init__(self):
        super().__init__("queue per client (Flask/gevent)")

    def command(self) -> list[str]:
        return gunicorn("bench.peers.naive_queue:app", self.port)


class AsyncioRelay(Target):
    def __init__(self):
        super().__init__("asyncio relay (floor)")

    def command(self) -> list[str]:
        return [sys.executable, str(ROOT / "bench" / "peers" / "asyncio_relay.py"), "--port", str(self.port)]


def peers() -> list[Target]:
    return [Starlette(), FlaskSSE(), NaiveQueue(), AsyncioRelay()]
