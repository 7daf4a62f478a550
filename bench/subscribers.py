"""N raw-socket SSE subscribers in one asyncio process (run by the benchmark as a child).

    python -m bench.subscribers --port P --path /stream --n 1000

Prints {"ready": connected, "failed": n} once connected, records every frame's
receive time, and on "stop LO HI" (stdin) prints the results for seqs LO..HI.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import time

SEQ = re.compile(rb'"seq":\s*(\d+)')
SENT = re.compile(rb'"sent":\s*([0-9.]+)')
HEADER_WAIT = 3.0


class Sub:
    __slots__ = ("seqs", "latencies", "resets", "writer", "alive")

    def __init__(self):
        self.seqs: list[int] = []
        self.latencies: list[float] = []
        self.resets = 0
        self.writer = None
        self.alive = False


async def run_sub(sub: Sub, host: str, port: int, path: str, gate: asyncio.Semaphore, ready: list) -> None:
    async with gate:
        try:
            reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
            await writer.drain()
        except OSError:
            ready[1] += 1
            return
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_WAIT)
    except asyncio.TimeoutError:
        head = None   # Flask-SSE sends its headers with the first message: count it connected
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        ready[1] += 1
        return
    if head is not None and b" 200" not in head.split(b"\r\n", 1)[0]:
        ready[1] += 1
        writer.close()
        return
    sub.writer, sub.alive = writer, True
    ready[0] += 1
    buf = head.split(b"\r\n\r\n", 1)[1] if head is not None else b""
    pending_head = head is None
    try:
        while True:
            chunk = await reader.read(1 << 16)
            if not chunk:
                break
            now = time.time()
            if pending_head:
                buf += chunk
                if b"\r\n\r\n" not in buf:
                    continue
                chunk, buf, pending_head = buf.split(b"\r\n\r\n", 1)[1], b"", False
            buf = (buf + chunk).replace(b"\r\n", b"\n")   # sse-starlette ends lines with CRLF
            *frames, buf = buf.split(b"\n\n")
            for frame in frames:
                if b"event: reset" in frame:
                    sub.resets += 1
                    continue
                m = SEQ.search(frame)
                s = SENT.search(frame)
                if m and s:
                    sub.seqs.append(int(m.group(1)))
                    sub.latencies.append((now - float(s.group(1))) * 1000)
    except (OSError, asyncio.IncompleteReadError):
        pass
    sub.alive = False


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/stream")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=256)
    args = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    subs = [Sub() for _ in range(args.n)]
    ready = [0, 0]
    gate = asyncio.Semaphore(args.concurrency)
    tasks = [asyncio.create_task(run_sub(s, args.host, args.port, args.path, gate, ready)) for s in subs]
    while ready[0] + ready[1] < args.n:
        await asyncio.sleep(0.02)
    print(json.dumps({"ready": ready[0], "failed": ready[1]}), flush=True)
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    _, lo, hi = line.split()
    lo, hi = int(lo), int(hi)
    result = {"latencies_ms": [], "per_sub": [], "resets": 0, "connected": ready[0]}
    for s in subs:
        if s.writer is None:
            continue
        got = {q for q in s.seqs if lo <= q <= hi}
        result["latencies_ms"] += [lat for q, lat in zip(s.seqs, s.latencies) if lo <= q <= hi]
        result["per_sub"].append([len(got), s.resets])
        result["resets"] += s.resets
        s.writer.close()
    for t in tasks:
        t.cancel()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
