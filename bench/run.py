"""Run every scenario against the sidecar and the peers, print markdown tables, write a plot.

    python -m bench [--smoke] [--out DIR] [--only NAME,...] [--skip-capacity] [--skip-soak] [--skip-faults]

`--only history-load` runs the history row alone (bench/history_load.py).

`--only firehose` runs the firehose row alone (bench/firehose.py).

`--only fsync` runs the `--fsync` modes' ingest table alone (bench/fsync.py).

`--only growth` runs the growth table alone (bench/growth.py; writes docs/bench-growth.png).

`--only hook-latency` runs the Claude Code hook's table alone (bench/hooks.py).

`--only otlp` runs the traces-out row alone: ingest with `--otlp-endpoint` on vs off (bench/otlp.py).

`--only =loop --skip-soak --skip-faults` runs the memory-backend rows of loop alone (latency, ingest,
capacity after them and on a fresh server).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from .client import KeepAlive
from .targets import ROOT, Loop, LoopRedis, Target, free_port, peers, wait_http


@dataclass
class Sizes:
    latency: list[tuple[int, int]]      # (subscribers, events per second)
    duration: float                     # seconds of publishing per latency run
    ingest_seconds: float
    capacity_levels: list[int]
    soak_events: int
    storm_clients: int
    prd_lines: int
    rounds: int = 1     # latency and ingest are measured this many times, the servers taking turns


# Three rounds, the servers taking turns, so that load from elsewhere on a shared machine falls on all
# of them alike: a latency cell pools every delivery of the three rounds, an ingest cell is the median.
FULL = Sizes([(100, 50), (1000, 20)], 6.0, 3.0, [1000, 5000, 10000], 1_000_000, 1000, 200, rounds=3)
SMOKE = Sizes([(5, 20)], 1.0, 0.5, [20], 3000, 30, 10)


# -- subscribers in their own process --------------------------------------------------------
class Subscribers:
    def __init__(self, target: Target, n: int):
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.subscribers", "--port", str(target.port),
                                      "--path", target.stream_path, "--n", str(n)], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = json.loads(self.proc.stdout.readline())
        self.connected, self.failed = ready["ready"], ready["failed"]

    def stop(self, lo: int, hi: int) -> dict:
        self.proc.stdin.write(f"stop {lo} {hi}\n")
        self.proc.stdin.flush()
        result = json.loads(self.proc.stdout.readline())
        self.proc.wait(30)
        return result


def median(values: list[float]) -> float:
    return percentile(values, 50)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = max(0, min(len(values) - 1, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


class Seq:
    n = 0

    @classmethod
    def take(cls, k: int = 1) -> range:
        r = range(cls.n, cls.n + k)
        cls.n += k
        return r


def publish_at_rate(target: Target, rate: float, duration: float) -> range:
    client = KeepAlive(target.port)
    count = int(rate * duration)
    seqs = Seq.take(count)
    start = time.perf_counter()
    for i, seq in enumerate(seqs):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        client.post(target.publish_path, target.body(seq, time.time()))
    client.close()
    return seqs


def latency_run(target: Target, n: int, rate: int, duration: float) -> dict:
    subs = Subscribers(target, n)
    publish_at_rate(target, rate, min(1.0, duration))           # warm-up, not counted
    seqs = publish_at_rate(target, rate, duration)
    time.sleep(1.5)                                              # let the last deliveries land
    res = subs.stop(seqs[0], seqs[-1])
    lat = res["latencies_ms"]
    covered = sum(min(len(seqs), got + (len(seqs) - got if resets else 0)) for got, resets in res["per_sub"])
    expected = len(seqs) * max(1, subs.connected)
    return {"subs": n, "rate": rate, "connected": subs.connected, "p50": percentile(lat, 50),
            "p99": percentile(lat, 99), "max": max(lat) if lat else float("nan"),
            "delivery": covered / expected if subs.connected == n else covered / (len(seqs) * n),
            "resets": res["resets"], "lat": lat, "covered": covered,
            "expected": expected if subs.connected == n else len(seqs) * n}


def pooled(runs: list[dict]) -> dict:
    """One latency cell from several rounds: percentiles over every delivery of all of them."""
    lat = [x for r in runs for x in r["lat"]]
    return {"subs": runs[0]["subs"], "rate": runs[0]["rate"], "connected": min(r["connected"] for r in runs),
            "p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat) if lat else float("nan"),
            "delivery": sum(r["covered"] for r in runs) / max(1, sum(r["expected"] for r in runs)),
            "resets": sum(r["resets"] for r in runs), "rounds_p99": [r["p99"] for r in runs]}


def ingest(target: Target, seconds: float, batch: int = 1) -> float:
    client = KeepAlive(target.port)
    sent, deadline = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        body = target.batch(Seq.take(batch), time.time()) if batch > 1 else target.body(Seq.take()[0], time.time())
        status = client.post(target.publish_path, body)
        if status != 201:
            raise RuntimeError(f"{target.name}: ingest got HTTP {status}")
        sent += batch
    client.close()
    return sent / (time.perf_counter() - start)


def capacity(target: Target, levels: list[int]) -> dict:
    """The most subscribers held with one broadcast reaching all of them within 1 s. A server with
    more to say (the Redis backend: redis-server's memory, the streams each worker holds) adds it
    under "extras" (before the streams) and "extras_held" (with the most held)."""
    base = target.rss_mb()
    best = {"held": 0, "rss": base, "rss_sum": target.rss_sum_mb(), "per_sub_kb": float("nan"),
            "broadcast_ms": float("nan"), "base": base, "extras": target.capacity_extras()}
    for n in levels:
        subs = Subscribers(target, n)
        time.sleep(0.5)
        rss, rss_sum = target.rss_mb(), target.rss_sum_mb()
        extras = target.capacity_extras()
        (seq,) = Seq.take()
        client = KeepAlive(target.port)
        client.post(target.publish_path, target.body(seq, time.time()))
        client.close()
        time.sleep(2.0)
        res = subs.stop(seq, seq)
        reached = sum(1 for got, _ in res["per_sub"] if got == 1)
        worst = max(res["latencies_ms"]) if res["latencies_ms"] else float("inf")
        if subs.failed or reached < n or worst > 1000:
            best["failed_at"] = f"{n} ({subs.failed} refused, {reached} reached, {worst:.0f} ms)"
            break
        best.update(held=n, rss=rss, rss_sum=rss_sum, per_sub_kb=(rss - base) * 1024 / n, broadcast_ms=worst,
                    extras_held=extras)
        time.sleep(1.0)
    return best


def fresh_capacity(target: Target, levels: list[int]) -> dict:
    """The capacity row on a server that has served nothing else (the other row comes after the
    latency and ingest runs in the same process): memory that stays after load shows as a difference."""
    target.start()
    try:
        return capacity(target, levels)
    finally:
        target.stop()


# -- soak and faults (the sidecar only) -------------------------------------------------------------
def worker_fds(target: Target) -> int:
    p = psutil.Process(target.procs[-1].pid)
    return sum(q.num_fds() for q in p.children(recursive=True)) or p.num_fds()


def subscribers_now(target: Target) -> int:
    return requests.get(f"http://127.0.0.1:{target.port}/healthz", timeout=5).json()["subscribers"]


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def churn(port: int, path: str, stop: threading.Event, size: int = 10) -> None:
    """Subscribers that come, read for half a second and leave, over and over."""
    while not stop.is_set():
        socks = []
        for _ in range(size):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            s.settimeout(0.05)
            socks.append(s)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            for s in socks:
                try:
                    s.recv(1 << 16)
                except OSError:
                    pass
        for s in socks:
            s.close()


def soak(sizes: Sizes) -> dict:
    target = Loop(history=True, name="loop soak")
    target.command = lambda base=target.command: [*base(), "--heartbeat", "1"]  # notice leavers quickly
    target.start()
    try:
        stop = threading.Event()
        t = threading.Thread(target=churn, args=(target.port, target.stream_path, stop), daemon=True)
        t.start()
        client = KeepAlive(target.port)
        total, warm_rss, warm_fds = 0, None, None
        start = time.perf_counter()
        while total < sizes.soak_events:
            client.post(target.publish_path, target.batch(Seq.take(100), time.time()))
            total += 100
            if warm_rss is None and total >= sizes.soak_events // 10:
                warm_rss, warm_fds = target.rss_mb(), worker_fds(target)
        elapsed = time.perf_counter() - start
        client.close()
        stop.set()
        t.join()
        back_to_zero = wait_until(lambda: subscribers_now(target) == 0, 10)
        time.sleep(0.5)
        return {"events": total, "seconds": elapsed, "rss_growth_mb": target.rss_mb() - warm_rss,
                "subscribers_after": subscribers_now(target), "back_to_zero": back_to_zero,
                "fd_growth": worker_fds(target) - warm_fds}
    finally:
        target.stop()


def storm(sizes: Sizes) -> dict:
    """Clients connecting and dropping all at once, some mid-request."""
    target = Loop(name="loop storm")
    target.command = lambda base=target.command: [*base(), "--heartbeat", "1"]
    target.start()
    try:
        fds0, rss0 = worker_fds(target), target.rss_mb()
        socks = []
        for i in range(sizes.storm_clients):
            s = socket.create_connection(("127.0.0.1", target.port))
            request = f"GET {target.stream_path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode()
            s.sendall(request if i % 3 else request[:10])            # a third never finish the request
            socks.append(s)
        time.sleep(1.0)
        for i, s in enumerate(socks):
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
            s.close()
        client = KeepAlive(target.port)
        client.post(target.publish_path, target.body(Seq.take()[0], time.time()))   # a write finds the dead ones
        client.close()
        back = wait_until(lambda: subscribers_now(target) == 0, 15)
        wait_until(lambda: worker_fds(target) <= fds0 + 2, 35)
        return {"clients": sizes.storm_clients, "back_to_zero": back, "fd_growth": worker_fds(target) - fds0,
                "rss_growth_mb": target.rss_mb() - rss0}
    finally:
        target.stop()


def slow_reader(sizes: Sizes) -> dict:
    """One subscriber that stops reading beside 100 that read: their p99 with and without it."""
    target = Loop(name="loop slow")
    target.start()
    try:
        def run_with(stalled: bool) -> dict:
            sock = None
            if stalled:
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect(("127.0.0.1", target.port))
                sock.sendall(f"GET {target.stream_path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            subs = Subscribers(target, 100 if sizes is FULL else 5)
            client = KeepAlive(target.port)
            blob = "z" * 30_000   # 1.5 MB/s: far past what the stalled socket's buffers hold
            seqs = Seq.take(int(50 * sizes.duration))
            start = time.perf_counter()
            for i, seq in enumerate(seqs):
                delay = start + i / 50 - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                client.post(target.publish_path, json.dumps(
                    {"type": "bench", "run": "bench", "data": {"seq": seq, "sent": time.time(), "pad": blob}}).encode())
            client.close()
            time.sleep(1.0)
            res = subs.stop(seqs[0], seqs[-1])
            out = {"p99": percentile(res["latencies_ms"], 99), "resets": res["resets"]}
            if sock:
                sock.settimeout(5)
                data = b""
                try:
                    while b"event: reset" not in data:
                        chunk = sock.recv(1 << 16)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                out["stalled_got_reset"] = b"event: reset" in data
                sock.close()
            return out

        alone, beside = run_with(False), run_with(True)
        return {"p99_alone": alone["p99"], "p99_beside_stalled": beside["p99"],
                "stalled_got_reset": beside.get("stalled_got_reset"), "readers_reset": beside["resets"]}
    finally:
        target.stop()


def restart_resume() -> dict:
    """Time from a restart of the sidecar to a resumed client's first event from the new one."""
    from loopstream.client.stream import stream

    port = free_port()
    tmp = tempfile.mkdtemp(prefix="bench-restart-")
    cmd = [sys.executable, "-m", "loopstream", "serve", "--port", str(port), "--rate", "0",
           "--db", str(Path(tmp) / "h.json")]
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(url + "/healthz")
    got = {}
    stop = threading.Event()

    def consume():
        for _, name, data in stream(url, stop=stop, read_timeout=20):
            if name == "reset":
                got.setdefault("reset", time.monotonic())
            if name == "bench" and data["data"].get("after"):
                got["event"] = time.monotonic()
                return

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    requests.post(url + "/api/events", json={"type": "bench", "run": "r", "data": {}}, timeout=5)
    time.sleep(0.5)
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(url + "/healthz")
    up = time.monotonic()
    # Publish until the resumed client sees one (a reset on reconnect covers what came before it).
    while t.is_alive() and time.monotonic() - up < 30:
        requests.post(url + "/api/events", json={"type": "bench", "run": "r", "data": {"after": True}}, timeout=5)
        t.join(0.05)
    stop.set()
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    return {"restart_s": up - stopped, "resumed_after_up_s": got.get("event", float("inf")) - up,
            "reset_seen": "reset" in got}


def kill9_during_run(sizes: Sizes) -> dict:
    """kill -9 the sidecar in the middle of a `loop run`, start it again: is the transcript whole?"""
    tmp = Path(tempfile.mkdtemp(prefix="bench-kill9-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "loopstream", "serve", "--port", str(port), "--rate", "0", "--db", str(tmp / "h.json")]
    n = sizes.prd_lines
    prd = tmp / "prd.json"
    prd.write_text(json.dumps({"project": "kill -9", "userStories": [
        {"id": f"K{j}", "title": f"k{j}", "priority": j,
         "command": f"for i in $(seq 1 {n}); do echo s{j}-line-$i; sleep {4 / n:.3f}; done"} for j in range(2)]}))
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(url + "/healthz")
    run = subprocess.Popen([sys.executable, "-m", "loopstream", "run", str(prd), "--server", url, "--run", "k9",
                            "--no-update"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2.0)
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()
    time.sleep(1.0)
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(url + "/healthz")
    code = run.wait(120)
    events = requests.get(url + "/api/runs/k9/transcript", timeout=10).json()["events"]
    server.send_signal(signal.SIGTERM)
    server.wait(10)
    text = "".join(e["data"].get("text", "") for e in events if e["type"] == "output")
    want = "".join(f"s{j}-line-{i}\n" for j in range(2) for i in range(1, n + 1))
    ids = [tuple(map(int, e["id"].split("-"))) for e in events]
    return {"exit": code, "events": len(events), "output_complete": text == want, "ordered": ids == sorted(ids),
            "finished": events[-1]["type"] == "task_completed"}


# -- the report ------------------------------------------------------------------------------
def fmt(v, digits=1) -> str:
    if isinstance(v, float):
        return "—" if v != v else f"{v:,.{digits}f}"
    return str(v)


def plot(latency: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, rows in latency.items():
        xs = [r["subs"] for r in rows]
        ax.plot(xs, [r["p99"] for r in rows], marker="o", label=f"{name} p99")
        ax.plot(xs, [r["p50"] for r in rows], marker=".", linestyle="--", alpha=.6, label=f"{name} p50")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("subscribers")
    ax.set_ylabel("emit → receive latency (ms)")
    ax.set_title("Latency by subscriber count (lower is better)")
    ax.grid(True, which="both", alpha=.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def measure_target(t: Target, args, sizes: Sizes, results: dict, last: bool = True) -> None:
    """One server's rows: latency, ingest, capacity after them (and, for loop on either backend, on a
    fresh server: per-stream memory measured after the other runs is blurred by what they left)."""
    print(f"· {t.name}", file=sys.stderr, flush=True)
    t.start()
    try:
        rounds = results["rounds"].setdefault(t.name, {"latency": [[] for _ in sizes.latency],
                                                       "single": [], "batch": []})
        for i, (n, rate) in enumerate(sizes.latency):
            rounds["latency"][i].append(latency_run(t, n, rate, sizes.duration))
        results["latency"][t.name] = [pooled(runs) for runs in rounds["latency"]]
        if "history" not in t.name:
            rounds["single"].append(ingest(t, sizes.ingest_seconds))
            rounds["batch"].append(ingest(t, sizes.ingest_seconds, batch=100) if t.batches else float("nan"))
            results["ingest"][t.name] = {"single": median(rounds["single"]), "batch": median(rounds["batch"]),
                                         "single_rounds": list(rounds["single"])}
            if last and not args.skip_capacity:
                results["capacity"][t.name] = capacity(t, sizes.capacity_levels)
    finally:
        t.stop()
    if not last:
        return
    if (t.name == "loop" or isinstance(t, LoopRedis)) and not args.skip_capacity:
        results["capacity"][f"{t.name[:-1]}, fresh server)" if t.name.endswith(")") else f"{t.name} (fresh server)"] = \
            fresh_capacity(t, sizes.capacity_levels)


def run_extra(name: str, smoke: bool) -> dict:
    """A row measured by its own module: the dashboard, the history load, the firehose, the growth table."""
    if name == "dashboard":
        from .dashboard import measure

        return measure(seconds=3 if smoke else 10)
    if name == "history-load":
        from .history_load import history_load

        return history_load(smoke)
    if name == "firehose":
        from .firehose import firehose

        return firehose(smoke)
    if name == "fsync":
        from .fsync import fsync_modes

        return fsync_modes(smoke)
    if name == "hook-latency":
        from .hooks import hook_latency

        return hook_latency(smoke)
    if name == "otlp":
        from .otlp import otlp_overhead

        return otlp_overhead(smoke)
    from .growth import growth

    return growth(smoke)


def report_extras(r: dict) -> list[str]:
    from .dashboard import report as dashboard_report
    from .firehose import report as firehose_report
    from .fsync import report as fsync_report
    from .growth import report as growth_report
    from .history_load import report as history_report
    from .hooks import report as hooks_report
    from .otlp import report as otlp_report

    lines: list[str] = []
    if "dashboard" in r:
        lines += ["", "| what | measured | value | target |", "|---|---|---|---|", dashboard_report(r["dashboard"])]
    for key, fn in (("history_load", history_report), ("firehose", firehose_report), ("fsync", fsync_report),
                    ("growth", growth_report), ("hook_latency", hooks_report),
                    ("otlp", otlp_report)):
        if key in r:
            lines += fn(r[key])
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: seconds, for CI")
    p.add_argument("--out", default="artifacts/bench", help="where the JSON results and the plot go")
    p.add_argument("--only", default="", help="comma-separated target names to run (default: all; a name "
                                               "matches every target containing it, '=loop' only that one); "
                                               "'firehose' for the noisy-run row")
    p.add_argument("--skip-capacity", action="store_true")
    p.add_argument("--skip-soak", action="store_true")
    p.add_argument("--skip-faults", action="store_true")
    p.add_argument("--readme", metavar="PATH", help="also write the tables into PATH (the README) between its "
                                                     "'<!-- bench:begin -->' and '<!-- bench:end -->' lines")
    args = p.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)

    targets: list[Target] = [Loop(), Loop(history=True), LoopRedis(), *peers()]
    if args.only:
        wanted = args.only.split(",")
        targets = [t for t in targets if any(t.name == w[1:] if w.startswith("=") else w in t.name for w in wanted)]
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                                f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}",
                     "latency": {}, "ingest": {}, "capacity": {}, "rounds": {}}
    for r in range(sizes.rounds):
        for t in targets:
            measure_target(t, args, sizes, results, last=r == sizes.rounds - 1)
    del results["rounds"]          # every delivery's latency: too much to keep; the cells above pool them
    if not args.skip_soak and any(t.name == "loop" for t in targets):
        print("· soak", file=sys.stderr, flush=True)
        results["soak"] = soak(sizes)
    if not args.skip_faults and any(t.name == "loop" for t in targets):
        print("· faults", file=sys.stderr, flush=True)
        results["faults"] = {"slow_reader": slow_reader(sizes), "storm": storm(sizes),
                             "restart": restart_resume(), "kill9": kill9_during_run(sizes)}
    for name in ("dashboard", "history-load", "firehose", "fsync", "growth", "hook-latency", "otlp"):
        if not args.only or name in args.only.split(","):
            print(f"· {name}", file=sys.stderr, flush=True)
            results[name.replace("-", "_")] = run_extra(name, args.smoke)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if results["latency"]:
        plot(results["latency"], out / "latency.png")
    text = report(results, sizes)
    print(text)
    if args.readme:
        write_between_markers(Path(args.readme), text)


def write_between_markers(path: Path, text: str) -> None:
    """Replace what lies between the bench markers in ``path`` with ``text`` (written whole, then renamed)."""
    begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
    doc = path.read_text()
    if doc.count(begin) != 1 or doc.count(end) != 1 or doc.index(begin) > doc.index(end):
        raise SystemExit(f"{path}: needs one '{begin}' line and one '{end}' line after it; nothing written")
    head, rest = doc.split(begin, 1)
    tail = rest.split(end, 1)[1]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{head}{begin}\n{text}\n{end}{tail}")
    tmp.replace(path)


def report_comparisons(r: dict, sizes: Sizes) -> list[str]:
    """loop's p99 beside the best peer, the floor, history off and Flask-SSE (Redis)."""
    lines: list[str] = []
    names = [n for n in r["latency"] if not n.startswith("loop") and "floor" not in n]
    if "loop" in r["latency"] and names:
        lines.append("")
        for i, (n, _rate) in enumerate(sizes.latency):
            best_name = min(names, key=lambda k: r["latency"][k][i]["p99"])
            ours = r["latency"]["loop"][i]["p99"]
            floor = r["latency"].get("asyncio relay (floor)", [None] * (i + 1))[i]
            best = r["latency"][best_name][i]["p99"]
            line = (f"- {n} subscribers: loop p99 {fmt(ours, 2)} ms = {ours / best:.2f} × "
                    f"the best peer ({best_name}, {fmt(best, 2)} ms)")
            if floor:
                line += f", {ours / floor['p99']:.2f} × the asyncio floor"
            rounds = r["latency"]["loop"][i].get("rounds_p99", [])
            if len(rounds) > 1:
                line += f" (loop's p99 in each of the {len(rounds)} rounds: " + " / ".join(fmt(x, 2) for x in rounds)
                if floor and len(floor.get("rounds_p99", [])) > 1:
                    line += "; the floor's: " + " / ".join(fmt(x, 2) for x in floor["rounds_p99"])
                line += ")"
            lines.append(line + ".")
        if "loop (history on)" in r["latency"]:
            on, off = r["latency"]["loop (history on)"][0]["p99"], r["latency"]["loop"][0]["p99"]
            lines.append(f"- History on vs off, p99 ratio: {on / off:.2f} ({fmt(on, 2)} vs {fmt(off, 2)} ms).")
    redis_row, flask_sse = "loop (Redis, 2 workers)", "Flask-SSE + Redis (gunicorn/gevent)"
    if redis_row in r["latency"] and flask_sse in r["latency"]:
        for i, (n, _rate) in enumerate(sizes.latency):
            ours, theirs = r["latency"][redis_row][i]["p99"], r["latency"][flask_sse][i]["p99"]
            lines.append(f"- {n} subscribers, both through Redis: {redis_row} p99 {fmt(ours, 2)} ms = "
                         f"{ours / theirs:.2f} × Flask-SSE's {fmt(theirs, 2)} ms.")
    return lines


def report_ingest(ingest: dict) -> list[str]:
    """loop's single-event POSTs beside the best framework peer's, and the Redis backend's beside the memory one's."""
    lines = []
    peers = {k: v["single"] for k, v in ingest.items() if not k.startswith("loop") and "floor" not in k}
    if "loop" in ingest and peers:
        best = max(peers, key=lambda k: peers[k])
        rounds = " / ".join(fmt(x, 0) for x in ingest["loop"].get("single_rounds", []))
        lines.append(f"- Single-event POSTs: loop {fmt(ingest['loop']['single'], 0)}/s = "
                     f"{ingest['loop']['single'] / peers[best]:.2f} × the best peer ({best}, {fmt(peers[best], 0)}/s)"
                     + (f"; loop's rounds: {rounds}" if rounds.count("/") else "") + ".")
    redis_row = next((k for k in ingest if k.startswith("loop (Redis")), None)
    if redis_row and "loop" in ingest:
        lines.append(f"- {redis_row}: {ingest[redis_row]['single'] / ingest['loop']['single']:.2f} × the memory "
                     f"backend's single-event POSTs/s.")
    return [""] + lines if lines else []


def report_redis_capacity(r: dict) -> list[str]:
    """The Redis backend's capacity row, told further: which worker held the streams (the one
    broadcast reached them all, so it crossed to every worker through Redis) and redis-server's
    own memory, which the row's PSS leaves out."""
    lines = []
    for name, v in r["capacity"].items():
        before, held = v.get("extras") or {}, v.get("extras_held") or {}
        if "redis_mb" not in before or not held:
            continue
        workers = " / ".join(str(n) for n in held["per_worker"])
        lines.append(f"- {name}: of the {v['held']} streams, its workers held {workers} (established connections "
                     f"counted per worker; a few can be missed); one POST reached every one of them in "
                     f"{fmt(v['broadcast_ms'], 0)} ms. Gunicorn's master and workers are the row's PSS; "
                     f"redis-server is not: {fmt(before['redis_mb'], 1)} MB PSS before the streams, "
                     f"{fmt(held['redis_mb'], 1)} MB with them.")
    return [""] + lines if lines else []


def report(r: dict, sizes: Sizes) -> str:
    lines = [f"Machine: {r['machine']}", ""]
    if sizes.rounds > 1:
        lines += [f"Latency and ingest in {sizes.rounds} rounds, the servers taking turns: a latency cell pools "
                  f"every delivery of the {sizes.rounds} rounds ({fmt(sizes.duration, 0)} s of publishing each), "
                  "an ingest cell is the median round.", ""]
    head = "| server | " + " | ".join(f"{n} subs @ {rate}/s p50 / p99 / max (ms) | delivery"
                                       for n, rate in sizes.latency) + " |"
    lines += [head, "|" + "---|" * (1 + 2 * len(sizes.latency))]
    for name, rows in r["latency"].items():
        cells = [f"{fmt(x['p50'], 2)} / {fmt(x['p99'], 2)} / {fmt(x['max'], 1)} | {x['delivery'] * 100:.1f}%"
                 for x in rows]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += report_comparisons(r, sizes)
    if r["ingest"]:
        lines += ["", "| server | single-event POSTs/s (one keep-alive connection) | events/s in batches of 100 |",
                  "|---|---|---|"]
        lines += [f"| {k} | {fmt(v['single'], 0)} | {fmt(v['batch'], 0)} |" for k, v in r["ingest"].items()]
        lines += report_ingest(r["ingest"])
    if r["capacity"]:
        lines += ["", f"| server | most subscribers held, one broadcast to all ≤ 1 s (tried {sizes.capacity_levels}) "
                      "| broadcast to all (ms) | resident memory then, PSS (RSS sum) MB | per subscriber (KB) "
                      "| first failure |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {v['held']} | {fmt(v['broadcast_ms'], 0)} | {fmt(v['rss'], 0)} ({fmt(v['rss_sum'], 0)}) "
                  f"| {fmt(v['per_sub_kb'], 1)} "
                  f"| {v.get('failed_at', '—')} |" for k, v in r["capacity"].items()]
    lines += report_redis_capacity(r)
    if "soak" in r:
        s = r["soak"]
        lines += ["", f"Soak: {s['events']:,} events in {s['seconds']:.0f} s with subscribers coming and going; "
                      f"resident memory (PSS) after warm-up grew {s['rss_growth_mb']:+.1f} MB; subscribers after: "
                      f"{s['subscribers_after']}; worker file descriptors {s['fd_growth']:+d}."]
    if "faults" in r:
        f = r["faults"]
        lines += ["", "Faults:",
                  f"- kill -9 of the sidecar mid-run, then restart: transcript of {f['kill9']['events']} events, "
                  f"output complete: {f['kill9']['output_complete']}, ordered: {f['kill9']['ordered']}, "
                  f"run finished: {f['kill9']['finished']} (exit {f['kill9']['exit']}).",
                  f"- A stalled subscriber beside readers: their p99 {fmt(f['slow_reader']['p99_alone'], 2)} ms alone, "
                  f"{fmt(f['slow_reader']['p99_beside_stalled'], 2)} ms beside it; the stalled one got a reset: "
                  f"{f['slow_reader']['stalled_got_reset']}.",
                  f"- Storm of {f['storm']['clients']} clients connecting and dropping: subscribers back to 0: "
                  f"{f['storm']['back_to_zero']}, worker fds {f['storm']['fd_growth']:+d}, "
                  f"resident memory {f['storm']['rss_growth_mb']:+.1f} MB.",
                  f"- Restart: a resumed client got the first new event {f['restart']['resumed_after_up_s']:.2f} s "
                  f"after the new sidecar answered (restart took {f['restart']['restart_s']:.2f} s; "
                  f"reset seen: {f['restart']['reset_seen']})."]
    return "\n".join(lines + report_extras(r))


if __name__ == "__main__":
    main()
