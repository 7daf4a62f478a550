"""The fsync row: what each `loop serve --fsync` mode costs single-event POSTs (memory backend, history on).

For each mode, one sidecar with its journals on this machine's disk (not a tmpfs): single-event POSTs
for a few seconds from one keep-alive client (each waits for its 201), then from eight at once (where
`always` groups the POSTs that arrive during one fsync into the next). The fsyncs per POST come from
the sidecar's own counter, `loop_journal_fsyncs_total`.

    python -m bench --only fsync
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from .client import KeepAlive
from .targets import ROOT, free_port, wait_http

MODES = ("never", "everysec", "always")
CLIENTS = 8


def _posts(port: int, seconds: float, clients: int) -> int:
    """Single-event POSTs answered 201 by ``clients`` keep-alive clients in ``seconds``."""
    counts = [0] * clients
    deadline = time.perf_counter() + seconds

    def client(k: int) -> None:
        c = KeepAlive(port)
        body = json.dumps({"type": "bench", "run": f"fsync-{k}", "data": {"k": k}}).encode()
        while time.perf_counter() < deadline:
            if c.post("/api/events", body) != 201:
                raise RuntimeError("a POST was not answered 201")
            counts[k] += 1
        c.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


def _fsyncs(port: int) -> int:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("loop_journal_fsyncs_total"))


def measure(mode: str, seconds: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-fsync-", dir=ROOT / "artifacts"))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "loopstream", "serve", "--port", str(port), "--rate", "0",
                             "--db", str(tmp / "history.json"), "--fsync", mode], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        _posts(port, 0.5, 1)                                   # warm-up, not counted
        single = _posts(port, seconds, 1)
        before = _fsyncs(port)
        many = _posts(port, seconds, CLIENTS)
        fsyncs = _fsyncs(port) - before
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"mode": mode, "single_per_s": single / seconds, "concurrent_per_s": many / seconds,
            "fsyncs_per_post": fsyncs / max(1, many)}


def fsync_modes(smoke: bool = False) -> dict:
    (ROOT / "artifacts").mkdir(exist_ok=True)
    seconds = 1.0 if smoke else 3.0
    return {"seconds": seconds, "rows": [measure(mode, seconds) for mode in MODES]}


def report(r: dict) -> list[str]:
    lines = ["", f"Ingest by `--fsync` mode (memory backend, history on, single-event POSTs for {r['seconds']:g} s; "
                 f"journals on this machine's disk):", "",
             f"| `--fsync` | 1 client, POSTs/s | {CLIENTS} clients, POSTs/s | fsyncs per POST ({CLIENTS} clients) |",
             "|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| `{row['mode']}` | {row['single_per_s']:,.0f} | {row['concurrent_per_s']:,.0f} | "
                     f"{row['fsyncs_per_post']:.3f} |")
    return lines


if __name__ == "__main__":   # python -m bench.fsync [--smoke]
    result = fsync_modes("--smoke" in sys.argv)
    print("\n".join(report(result)))
