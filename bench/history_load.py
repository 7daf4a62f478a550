"""The history row: /healthz latency while 1,000 runs finish, each with 50 KB of output.

Every finished run goes to history (its own TinyDB file, the index once per flush) while a prober
asks /healthz every 10 ms on its own connection: its p99 says whether the history writer gets in
the way of serving (target < 50 ms). Each run is read back (GET /api/runs/<run>) the moment its
task_completed was answered: a 404 there would be a run that history lost or has not caught up.

    python -m bench --only history
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from .client import KeepAlive
from .targets import free_port, wait_http

OUTPUT_BYTES = 50_000
CHUNK = 4_000


def _run_batches(run: str) -> list[bytes]:
    """One run as POST bodies under 64 KB: start, 50 KB of output in 4 KB chunks, the end."""
    text = f"{run} " + "x" * (CHUNK - 20) + "\n"
    chunks = [{"type": "output", "run": run, "data": {"stream": "stdout", "text": text}}
              for _ in range(OUTPUT_BYTES // CHUNK + 1)]
    first = [{"type": "task_started", "run": run, "data": {"task_name": run, "story_count": 1}}] + chunks[:7]
    last = chunks[7:] + [{"type": "task_completed", "run": run, "data": {"summary": {"passed": 1}}}]
    return [json.dumps(first).encode(), json.dumps(last).encode()]


def _probe(port: int, stop: threading.Event, out: list[float]) -> None:
    session = requests.Session()
    url = f"http://127.0.0.1:{port}/healthz"
    while not stop.is_set():
        t0 = time.perf_counter()
        session.get(url, timeout=10)
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.01)


def _emit(port: int, runs: list[str], missing: list[str]) -> None:
    client = KeepAlive(port)
    session = requests.Session()
    for run in runs:
        for body in _run_batches(run):
            status = client.post("/api/events", body)
            if status != 201:
                raise RuntimeError(f"POST for {run} answered {status}")
        if session.get(f"http://127.0.0.1:{port}/api/runs/{run}", timeout=10).status_code != 200:
            missing.append(run)
    client.close()


def history_load(smoke: bool = False, runs: int = 1000, emitters: int = 1, history: bool = True) -> dict:
    """``emitters`` keep-alive connections post runs back to back; ``history=False`` is the same load
    with ``--no-history``, to tell what history costs from what the load itself costs."""
    n = 30 if smoke else runs
    tmp = Path(tempfile.mkdtemp(prefix="bench-history-"))
    port = free_port()
    store = ["--db", str(tmp / "history.json")] if history else ["--no-history"]
    proc = subprocess.Popen([sys.executable, "-m", "loopstream", "serve", "--port", str(port), "--rate", "0",
                             "--client-rate", "0", *store],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        names = [f"h{i:05d}" for i in range(n)]
        latencies: list[float] = []
        missing: list[str] = []
        stop = threading.Event()
        prober = threading.Thread(target=_probe, args=(port, stop, latencies), daemon=True)
        prober.start()
        start = time.perf_counter()
        threads = [threading.Thread(target=_emit, args=(port, names[i::emitters], missing)) for i in range(emitters)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        stop.set()
        prober.join()
        latencies.sort()
        kept = len(list((tmp / "finished").glob("*.json")))
        return {"runs": n, "output_kb": OUTPUT_BYTES // 1000, "seconds": seconds, "probes": len(latencies),
                "p50": latencies[len(latencies) // 2], "p99": latencies[int(len(latencies) * 0.99)],
                "max": latencies[-1], "not_found_after_finish": len(missing), "run_files": kept}
    finally:
        proc.terminate()
        proc.wait(10)


def report(r: dict) -> list[str]:
    return ["", "| history: runs finishing (50 KB output each) | seconds | /healthz p50 / p99 / max (ms) "
                "| 404 right after finishing | target |", "|---|---|---|---|---|",
            f"| {r['runs']:,} | {r['seconds']:.1f} | {r['p50']:.1f} / {r['p99']:.1f} / {r['max']:.1f} "
            f"| {r['not_found_after_finish']} | p99 < 50 ms, 0 |"]


if __name__ == "__main__":
    result = history_load(smoke="--smoke" in sys.argv)
    print(json.dumps(result))
    print("\n".join(report(result)))
