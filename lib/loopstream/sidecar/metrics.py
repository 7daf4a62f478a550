"""What /metrics shows: one worker's counters, and the Prometheus text of them (the fleet's and each worker's)."""
from __future__ import annotations


class Metrics:
    """The counters /metrics shows, and when the worker last had something to do (--idle-exit)."""

    def __init__(self, now: float = 0.0):
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        self.rate_limited = 0
        self.resets = 0
        self.subscribers = 0
        self.streams_by_client: dict[str, int] = {}
        self.last_activity = now   # the last request or stream end (monotonic seconds)
        self.reaped = 0
        self.forwarded_malformed = 0   # trusted proxies' X-Forwarded-For / X-Real-IP that did not parse

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


# Prometheus names of the numbers fleet.py reports: (key, name, type); ``rejected:REASON`` apart.
METRICS = [("accepted", "loop_events_accepted_total", "counter"),
           ("rate_limited", "loop_rate_limited_total", "counter"),
           ("resets", "loop_resets_total", "counter"),
           ("subscribers", "loop_subscribers", "gauge"),
           ("fanout_direct", "loop_fanout_direct_total", "counter"),
           ("fanout_woken", "loop_fanout_woken_total", "counter"),
           ("reaped", "loop_runs_reaped_total", "counter"),
           ("stream_clients", "loop_stream_clients", "gauge"),
           ("forwarded_malformed", "loop_forwarded_malformed_total", "counter"),
           ("otlp_exported", "loop_otlp_spans_exported_total", "counter")]
# Counters by reason, ``KEY:REASON``: (key, name) shown as ``name{reason="REASON"}``.
BY_REASON = [("rejected", "loop_events_rejected_total"), ("otlp_dropped", "loop_otlp_spans_dropped_total")]


def metric_lines(counters: dict[str, int], gauges: dict[str, int], prefix: str = "loop_",
                 labels: str = "") -> list[str]:
    """Prometheus lines for one set of numbers; ``prefix``/``labels`` name a worker's own."""
    numbers = {**counters, **gauges}
    lines = []
    for key, name in BY_REASON:
        name = prefix + name[5:]
        lines += [f"# TYPE {name} counter"]
        lines += [f'{name}{{reason="{k[len(key) + 1:]}"{labels}}} {n}'
                  for k, n in sorted(numbers.items()) if k.startswith(key + ":")]
    for key, name, kind in METRICS:
        name = prefix + name[5:]
        lines += [f"# TYPE {name} {kind}", f"{name}{{{labels[1:]}}} {numbers.get(key, 0)}" if labels
                  else f"{name} {numbers.get(key, 0)}"]
    return lines


def worker_lines(workers: dict[str, dict]) -> list[str]:
    """Each live worker's own numbers as ``loop_worker_*{worker="host:pid"}`` (the per-worker view)."""
    by_name: dict[str, list[str]] = {}
    for name, numbers in sorted(workers.items()):
        label = ',worker="' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        for line in metric_lines(numbers.get("counters", {}), numbers.get("gauges", {}), "loop_worker_", label):
            family = line.split()[2] if line.startswith("# TYPE") else line.split("{")[0]
            by_name.setdefault(family, [])
            if not line.startswith("# TYPE") or not by_name[family]:
                by_name[family].append(line)
    return [line for lines in by_name.values() for line in lines]
