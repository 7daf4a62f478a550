"""How loop's cost grows (issue 16 item 5): p99 and memory by subscriber count, ingest by emitters.

    python -m bench --only growth        (also part of the full `python -m bench`)

One fresh memory-backend sidecar. For each subscriber count: that many raw-socket subscribers (a
separate process, as in the latency rows), PSS of the server with them held, then events at 20/s
for a few seconds: p50/p99 and delivery. Then single-event POSTs/s with 1, 10 and 100 concurrent
emitters, each its own keep-alive connection on its own thread in this process (so at 100 the
emitting side shares the 2 cores too: the figure is what one machine does end to end).
The table is printed and a plot is written to docs/bench-growth.png so a regression is visible.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from .client import KeepAlive
from .targets import ROOT, Loop, Target

PLOT = ROOT / "docs" / "bench-growth.png"


def subscribers_row(target: Target, n: int, base: float, seconds: float) -> dict:
    from .run import Subscribers, percentile, publish_at_rate

    subs = Subscribers(target, n)
    time.sleep(0.5)
    pss = target.rss_mb()
    seqs = publish_at_rate(target, 20, seconds)
    time.sleep(1.5)
    res = subs.stop(seqs[0], seqs[-1])
    lat = res["latencies_ms"]
    got = sum(min(len(seqs), g + (len(seqs) - g if r else 0)) for g, r in res["per_sub"])
    return {"subs": n, "connected": subs.connected, "p50": percentile(lat, 50), "p99": percentile(lat, 99),
            "delivery": got / (len(seqs) * n), "pss_mb": pss, "per_sub_kb": (pss - base) * 1024 / n}


def emitters_row(target: Target, k: int, seconds: float) -> dict:
    """Single-event POSTs/s summed over ``k`` emitters posting at once."""
    from .run import Seq

    counts = [0] * k
    start_at = time.perf_counter() + 0.2
    deadline = start_at + seconds

    def emit(i: int) -> None:
        client = KeepAlive(target.port)
        while time.perf_counter() < start_at:
            time.sleep(0.01)
        while time.perf_counter() < deadline:
            if client.post(target.publish_path, target.body(Seq.take()[0], time.time())) != 201:
                raise RuntimeError("growth: a POST was not accepted")
            counts[i] += 1
        client.close()

    threads = [threading.Thread(target=emit, args=(i,)) for i in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"emitters": k, "per_s": sum(counts) / seconds}


def growth(smoke: bool = False) -> dict:
    subs_levels, emitters, seconds = ([5, 20], [1, 2], 1.0) if smoke else ([100, 1000, 5000, 10000], [1, 10, 100], 5.0)
    target = Loop().start()
    try:
        base = target.rss_mb()
        rows = [subscribers_row(target, n, base, seconds) for n in subs_levels]
        time.sleep(1.0)
        ingest = [emitters_row(target, k, seconds) for k in emitters]
    finally:
        target.stop()
    result = {"base_mb": base, "subscribers": rows, "ingest": ingest}
    if not smoke:
        plot(result, PLOT)
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem, ing) = plt.subplots(1, 3, figsize=(13, 4))
    xs = [r["subs"] for r in result["subscribers"]]
    lat.plot(xs, [r["p99"] for r in result["subscribers"]], marker="o", label="p99")
    lat.plot(xs, [r["p50"] for r in result["subscribers"]], marker=".", linestyle="--", label="p50")
    lat.set(xscale="log", xlabel="subscribers", ylabel="emit → receive (ms)", title="latency at 20 events/s")
    mem.plot(xs, [r["pss_mb"] for r in result["subscribers"]], marker="o")
    mem.set(xscale="log", xlabel="subscribers", ylabel="server PSS (MB)", title="memory held")
    ks = [r["emitters"] for r in result["ingest"]]
    ing.plot(ks, [r["per_s"] for r in result["ingest"]], marker="o")
    ing.set(xscale="log", xlabel="concurrent emitters", ylabel="single-event POSTs/s", title="ingest")
    for ax in (lat, mem, ing):
        ax.grid(True, which="both", alpha=.3)
    lat.legend(fontsize=7)
    fig.suptitle("loop: how cost grows (python -m bench --only growth)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def report(result: dict) -> list[str]:
    lines = ["", "| subscribers | p50 / p99 (ms) at 20 events/s | delivery | server PSS (MB) | per subscriber (KB) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['subs']:,} | {r['p50']:.2f} / {r['p99']:.2f} | {r['delivery']:.1%} | {r['pss_mb']:.0f} "
              f"| {r['per_sub_kb']:.1f} |" for r in result["subscribers"]]
    lines += ["", "| concurrent emitters | single-event POSTs/s (all together) |", "|---|---|"]
    lines += [f"| {r['emitters']} | {r['per_s']:,.0f} |" for r in result["ingest"]]
    return lines
