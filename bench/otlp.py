"""The traces-out row: what `loop serve --otlp-endpoint` costs ingest (memory backend, no history).

One local OTLP/HTTP sink (a thread in the bench process: it decodes each request with the protocol's own
classes and counts the spans) and two sidecars, one exporting to the sink, one not; single-event POSTs of
an agent's tool calls (a tool_call and its tool_result: one span per pair) from one keep-alive client, the
two sidecars taking turns for ROUNDS rounds, so both meet the same load from other work. The figure is
the median round; the sink's count and the sidecar's own counters say every span arrived.

    python -m bench --only otlp
"""
from __future__ import annotations

import http.server
import json
import statistics
import subprocess
import sys
import threading
import time

import requests

from .client import KeepAlive
from .targets import ROOT, free_port, wait_http

ROUNDS = 3


class Sink(http.server.ThreadingHTTPServer):
    """A collector that takes OTLP/HTTP protobuf traces and counts their spans."""

    daemon_threads = True

    def __init__(self) -> None:
        self.spans = 0
        self.requests = 0
        super().__init__(("127.0.0.1", free_port()), SinkHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class SinkHandler(http.server.BaseHTTPRequestHandler):
    server: Sink

    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        req = ExportTraceServiceRequest.FromString(body)
        self.server.spans += sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
        self.server.requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def start(extra: list[str]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "loopstream", "serve", "--port", str(port), "--rate", "0",
                             "--no-history", *extra], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return proc, port


def post_tool_calls(port: int, run: str, seconds: float) -> int:
    """Single-event POSTs, a tool call then its result, for ``seconds``; how many were answered 201."""
    c = KeepAlive(port)
    bodies = []
    c.post("/api/events", json.dumps({"type": "task_started", "run": run, "data": {"task_name": run}}).encode())
    sent, deadline, i = 0, time.perf_counter() + seconds, 0
    while time.perf_counter() < deadline:
        call = {"story_id": "S-1", "tool": "Bash", "id": f"c{i}", "summary": "pytest -q"}
        bodies = [{"type": "tool_call", "run": run, "data": call},
                  {"type": "tool_result", "run": run, "data": {**call, "is_error": False, "summary": "4 passed"}}]
        for b in bodies:
            if c.post("/api/events", json.dumps(b).encode()) != 201:
                raise RuntimeError("a POST was not answered 201")
            sent += 1
        i += 1
    c.post("/api/events", json.dumps({"type": "task_completed", "run": run, "data": {}}).encode())
    c.close()
    return sent


def metric(port: int, name: str) -> int:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(int(float(line.split()[1])) for line in text.splitlines()      # its series by reason summed
               if line.startswith((name + " ", name + "{reason=")))


def otlp_overhead(smoke: bool = False) -> dict:
    seconds = 1.0 if smoke else 4.0
    sink = Sink()
    off, off_port = start([])
    on, on_port = start(["--otlp-endpoint", sink.url])
    rates: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for port in (off_port, on_port):
            post_tool_calls(port, "warm-up", 0.5)
        for r in range(1 if smoke else ROUNDS):
            for name, port in (("off", off_port), ("on", on_port)):
                rates[name].append(post_tool_calls(port, f"bench-{name}-{r}", seconds) / seconds)
        exported = lambda: metric(on_port, "loop_otlp_spans_exported_total")   # noqa: E731
        deadline = time.monotonic() + 30
        while sink.spans < exported() or exported() == 0:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        time.sleep(1.5)                    # the last batch (the batch processor sends every 0.5 s)
        dropped = metric(on_port, "loop_otlp_spans_dropped_total")
        sent = exported()
    finally:
        for proc in (off, on):
            proc.terminate()
            proc.wait(10)
        sink.shutdown()
    return {"seconds": seconds, "off": rates["off"], "on": rates["on"], "off_median": statistics.median(rates["off"]),
            "on_median": statistics.median(rates["on"]), "exported": sent, "received": sink.spans,
            "requests": sink.requests, "dropped": dropped}


def report(r: dict) -> list[str]:
    ratio = r["on_median"] / r["off_median"] if r["off_median"] else float("nan")
    rounds = " / ".join(f"{a:,.0f} vs {b:,.0f}" for a, b in zip(r["off"], r["on"], strict=True))
    return ["", f"Traces out (`--otlp-endpoint` to a local OTLP sink), single-event POSTs of tool calls and results "
                f"for {r['seconds']:g} s, the two sidecars taking turns ({len(r['off'])} rounds):", "",
            "| export | POSTs/s (median round) |", "|---|---|",
            f"| off | {r['off_median']:,.0f} |", f"| on | {r['on_median']:,.0f} |", "",
            f"- Export on vs off: {ratio:.2f} × (rounds, off vs on: {rounds}); spans exported {r['exported']:,}, "
            f"received by the sink {r['received']:,} in {r['requests']:,} requests, dropped {r['dropped']:,}."]


if __name__ == "__main__":   # python -m bench.otlp [--smoke]
    result = otlp_overhead("--smoke" in sys.argv)
    print("\n".join(report(result)))
