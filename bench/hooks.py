"""The hook-latency row: what `loop hooks install`'s hook adds to each Claude Code step.

Claude Code runs the hook command (``sh -c COMMAND``, the step's JSON on stdin, a socket) and waits
for it before going on: before every tool call. Each call here is timed from spawn to exit, for a
recorded PreToolUse payload, with the sidecar up, hung (SIGSTOP) and down, beside a no-op hook
(``cat >/dev/null``: what any command hook costs). What was spooled is delivered before the row ends.

    python -m bench --only hook-latency
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .targets import ROOT, free_port, wait_http

PAYLOAD = (ROOT / "tests" / "agents" / "claude-real" / "hooks-subagent.jsonl").read_text().splitlines()[2].encode()


def call(cmd: str, env: dict) -> float:
    """One hook call as Claude Code makes it; its wall time in milliseconds."""
    ours, theirs = socket.socketpair()
    start = time.perf_counter()
    with ours:
        p = subprocess.Popen(["sh", "-c", cmd], stdin=theirs, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=env)
        theirs.close()
        ours.sendall(PAYLOAD)
        ours.shutdown(socket.SHUT_WR)
        p.wait(30)
    return (time.perf_counter() - start) * 1000


def timings(cmd: str, env: dict, n: int) -> dict:
    for _ in range(3):                      # warm-up: page cache, the shipper started
        call(cmd, env)
    ms = sorted(call(cmd, env) for _ in range(n))
    return {"p50": ms[n // 2], "p99": ms[min(n - 1, int(n * 0.99))], "max": ms[-1], "calls": n}


def hook_latency(smoke: bool = False) -> dict:
    n = 30 if smoke else 300
    tmp = Path(tempfile.mkdtemp(prefix="bench-hooks-"))
    env = {**os.environ, "LOOP_SPOOL_DIR": str(tmp / "spool"), "LOOP_SHIP_IDLE": "1"}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "loopstream", "serve", "--port", str(port), "--rate", "0",
                             "--no-history"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    emit = shlex.quote(str(ROOT / "bin" / "loop-emit"))
    rows = {}
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        rows["no-op hook (cat >/dev/null)"] = timings("cat >/dev/null", env, n)
        up = f"{emit} --hook --server http://127.0.0.1:{port}"
        rows["loop, sidecar up"] = timings(up, env, n)
        os.killpg(proc.pid, signal.SIGSTOP)
        try:
            rows["loop, sidecar hung (SIGSTOP)"] = timings(up, env, n)
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
        rows["loop, sidecar down"] = timings(f"{emit} --hook --server http://127.0.0.1:{free_port()}", env, n)
        spool = tmp / "spool" / f"127_0_0_1_{port}__claude-hooks.jsonl"
        deadline = time.monotonic() + 120
        while spool.exists() and spool.stat().st_size and time.monotonic() < deadline:
            time.sleep(0.1)                 # the hung sidecar's backlog, delivered
        delivered = not (spool.exists() and spool.stat().st_size)
    finally:
        for pidfile in (tmp / "spool").glob("*.pid"):
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
            except (ValueError, ProcessLookupError):
                pass
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"rows": rows, "delivered": delivered}


def report(r: dict) -> list[str]:
    lines = ["", "The hook `loop hooks install` wires, as Claude Code runs it (`sh -c`, a PreToolUse payload on "
                 "stdin), spawn to exit:", "",
             "| hook | p50 (ms) | p99 (ms) | max (ms) | calls |", "|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        lines.append(f"| {name} | {row['p50']:.1f} | {row['p99']:.1f} | {row['max']:.1f} | {row['calls']} |")
    return lines


if __name__ == "__main__":   # python -m bench.hooks [--smoke]
    print("\n".join(report(hook_latency("--smoke" in sys.argv))))
