"""The firehose row: what a noisy run costs, end to end, under the sidecar's default rate limit.

- events/s and bytes/s a single `loop run` pushes to a stream subscriber while its story prints as
  fast as it can (the outbox sends lifecycle events whole and output as a tail, eliding the rest);
- the wall time of `loop run` on a story printing 1.3 MB (`seq 1 200000`) with a sidecar, against the
  same run with `--no-embed` and no sidecar (target ≤ 1.2 ×);
- 200 `loop_output` calls from a script with the sidecar up, hung (SIGSTOP) and absent, against none
  at all (target ≤ 1 s more).

    python -m bench --only firehose
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .targets import ROOT, free_port, wait_http

LIB = ROOT / "bin" / "loop-progress.sh"
HOOKS_200 = f"source {LIB}; for i in $(seq 1 200); do loop_output \"line $i\"$'\\n'; done"


class Sidecar:
    """`loop serve` with its defaults (10 events/s, burst 20) on a free port, history in a temp dir."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "loopstream", "serve", "--port", str(self.port),
                                      "--db", str(tmp / "history.json")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_http(self.url + "/healthz")

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        self.signal(signal.SIGCONT)
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(15)


def _env(tmp: Path, **extra) -> dict:
    return {**os.environ, "XDG_STATE_HOME": str(tmp / "state"), "XDG_DATA_HOME": str(tmp / "data"),
            "LOOP_SPOOL_DIR": str(tmp / "spool"), "LOOP_SHIP_IDLE": "1", "LOOP_SHIP_PATIENCE": "20", **extra}


def _prd(tmp: Path, command: str) -> Path:
    path = tmp / f"prd-{abs(hash(command)) % 10**6}.json"
    path.write_text(json.dumps({"project": "firehose", "userStories": [
        {"id": "NOISY", "title": "noisy", "priority": 1, "passes": False, "command": command}]}))
    return path


def _timed_run(prd: Path, server: str, env: dict, *args: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "loopstream", "run", str(prd), "--server", server, "--no-update",
                        *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, timeout=300)
    return time.perf_counter() - t0, r.returncode


def _subscribe(url: str, run: str, seen: list, stop: threading.Event) -> None:
    """Count what reaches a stream subscriber for ``run``: (receive time, type, text bytes, elided bytes)."""
    from loopstream.client.stream import stream

    for _, name, data in stream(url, runs=[run], stop=stop, read_timeout=30):
        if name in ("hello", "reset", "heartbeat"):
            continue
        d = data.get("data") or {}
        seen.append((time.perf_counter(), name, len((d.get("text") or "").encode()), d.get("elided") or 0))
        if name in ("task_completed", "task_stopped"):
            return


def throughput(tmp: Path, seconds: float) -> dict:
    """A story printing as fast as it can for ``seconds``: what one subscriber receives, per second."""
    sidecar = Sidecar(tmp)
    command = f"timeout {seconds:g} sh -c 'while :; do seq 1 20000; sleep 0.1; done'; true"   # ~1 MB/s
    seen: list = []
    stop = threading.Event()
    listener = threading.Thread(target=_subscribe, args=(sidecar.url, "hose", seen, stop), daemon=True)
    listener.start()
    time.sleep(0.5)
    try:
        wall, code = _timed_run(_prd(tmp, command), sidecar.url, _env(tmp), "--run", "hose")
        listener.join(15)
    finally:
        stop.set()
        sidecar.stop()
    span = max(1e-9, seen[-1][0] - seen[0][0]) if len(seen) > 1 else float("nan")
    log = tmp / "state" / "loop" / "logs" / "hose" / "NOISY.log"
    return {"exit": code, "events": len(seen), "seconds": span, "events_per_s": len(seen) / span,
            "bytes_per_s": sum(s[2] for s in seen) / span, "printed_bytes": log.stat().st_size if log.exists() else 0,
            "elided_bytes": sum(s[3] for s in seen), "finished": bool(seen) and seen[-1][1] == "task_completed"}


PACED = "for i in 0 1 2 3 4 5 6 7 8 9; do seq $((i*{n}+1)) $((i*{n}+{n})); sleep 0.1; done"


def overhead(tmp: Path, repeats: int, lines: int, paced: bool = False) -> dict:
    """`loop run` on `seq 1 LINES` (at once, or in ten bursts over a second) with a sidecar against
    `--no-embed` and no sidecar: medians."""
    prd = _prd(tmp, PACED.format(n=lines // 10) if paced else f"seq 1 {lines}")
    sidecar = Sidecar(tmp)
    dead = f"http://127.0.0.1:{free_port()}"
    with_sidecar, without = [], []
    try:
        for i in range(repeats):
            t, code = _timed_run(prd, sidecar.url, _env(tmp), "--run", f"over-{i}")
            with_sidecar.append(t)
            t, _ = _timed_run(prd, dead, _env(tmp), "--no-embed")
            without.append(t)
    finally:
        sidecar.stop()
    a, b = statistics.median(with_sidecar), statistics.median(without)
    return {"lines": lines, "paced": paced, "with_sidecar_s": a, "without_s": b, "ratio": a / b, "exit": code}


def _hooks_seconds(tmp: Path, server: str, run: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(["bash", "-c", HOOKS_200], env=_env(tmp, LOOP_SERVER=server, LOOP_RUN=run), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    return time.perf_counter() - t0


def _stop_shippers(spool: Path) -> None:
    for pidfile in spool.glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


def hooks(tmp: Path, repeats: int) -> dict:
    """200 loop_output calls: seconds with the sidecar up, hung and down, against no sidecar (medians),
    and whether the up and hung runs' events all arrived in order afterwards."""
    sidecar = Sidecar(tmp)
    times: dict[str, list[float]] = {"none": [], "up": [], "hung": []}
    try:
        for i in range(repeats):
            times["none"].append(_hooks_seconds(tmp, f"http://127.0.0.1:{free_port()}", f"none-{i}"))
            times["up"].append(_hooks_seconds(tmp, sidecar.url, f"up-{i}"))
            sidecar.signal(signal.SIGSTOP)
            try:
                times["hung"].append(_hooks_seconds(tmp, sidecar.url, f"hung-{i}"))
            finally:
                sidecar.signal(signal.SIGCONT)
        delivered = all(_in_order(sidecar.url, f"{kind}-{i}") for kind in ("up", "hung") for i in range(repeats))
    finally:
        sidecar.stop()
        _stop_shippers(tmp / "spool")
    med = {k: statistics.median(v) for k, v in times.items()}
    return {**{f"{k}_s": v for k, v in med.items()}, "up_overhead_s": med["up"] - med["none"],
            "hung_overhead_s": med["hung"] - med["none"], "delivered_in_order": delivered}


def _in_order(url: str, run: str, timeout: float = 90.0) -> bool:
    import requests

    deadline = time.monotonic() + timeout
    want = [f"line {i}\n" for i in range(1, 201)]
    while time.monotonic() < deadline:
        r = requests.get(f"{url}/api/runs/{run}/transcript", timeout=10)
        texts = [e["data"].get("text") for e in r.json().get("events", [])] if r.ok else []
        if len(texts) >= 200:
            return texts == want
        time.sleep(0.5)
    return False


def firehose(smoke: bool) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-firehose-"))
    return {"throughput": throughput(tmp, 2 if smoke else 5),
            "overhead": overhead(tmp, 1 if smoke else 5, 20_000 if smoke else 200_000),
            "overhead_paced": overhead(tmp, 1 if smoke else 5, 20_000 if smoke else 200_000, paced=True),
            "hooks": hooks(tmp, 1 if smoke else 3)}


def report(f: dict) -> list[str]:
    t, o, op, h = f["throughput"], f["overhead"], f["overhead_paced"], f["hooks"]
    return ["", "Firehose (one `loop run`, the sidecar's default rate limit of 10 events/s, burst 20):",
            f"- A story printing {t['printed_bytes']:,} bytes in {t['seconds']:.1f} s: the stream subscriber got "
            f"{t['events_per_s']:.1f} events/s and {t['bytes_per_s']:,.0f} bytes/s of output; "
            f"{t['elided_bytes']:,} bytes elided with a marker (all of it in the story's log); run finished: "
            f"{t['finished']} (exit {t['exit']}).",
            f"- `loop run` on `seq 1 {o['lines']}`: {o['with_sidecar_s']:.2f} s with the sidecar, "
            f"{o['without_s']:.2f} s with --no-embed and none: {o['ratio']:.2f} × (target ≤ 1.2 ×); the same "
            f"lines in ten bursts over a second: {op['with_sidecar_s']:.2f} s against {op['without_s']:.2f} s, "
            f"{op['ratio']:.2f} ×.",
            f"- 200 `loop_output` calls: {h['none_s']:.2f} s with no sidecar, {h['up_s']:.2f} s up "
            f"({h['up_overhead_s']:+.2f} s), {h['hung_s']:.2f} s hung by SIGSTOP ({h['hung_overhead_s']:+.2f} s) "
            f"(target ≤ +1 s); all delivered in order afterwards: {h['delivered_in_order']}."]
