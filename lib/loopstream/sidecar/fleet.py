"""Fleet-wide /metrics and /healthz on the Redis backend: every worker's numbers, not the one asked.

With several workers (and hosts), a scrape reaches one worker; its counters
alone would jump from scrape to scrape. So each worker reports to Redis about
once a second (the housekeeping loop) and again right before it answers a
scrape:

- its counters' growth since its last report, added to fleet totals
  (``HINCRBY loop:metrics:total``): the totals only grow, and outlive a
  worker that exits (a restart does not make a fleet counter go back);
- its own numbers, counters and gauges, under ``loop:metrics:w:<host>:<pid>``
  with a 15 s expiry, listed in ``loop:metrics:workers``, so a per-worker
  view remains (``loop_worker_*{worker="host:pid"}``) and the gauges
  (subscribers) are the sum over the workers alive.

One ``MULTI`` per report: the totals and the worker's own numbers move
together, so a scrape never sees one without the other. What is read back is
another program's data as far as this worker knows (Redis is shared): only
names we use and whole numbers come out of ``gather``.
"""
from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from typing import Any

from loopstream.core import events as ev
from loopstream.sidecar import stored

WORKER_TTL = 15          # seconds a worker's report counts as alive
NAME = re.compile(r"[a-z_]{1,40}(:[a-z_]{1,40})?\Z")   # a counter or gauge as we name them ("rejected:invalid")
MAX_NUMBER = 2**63


def numbers(value: Any) -> dict[str, int]:
    """The entries of a stored {name: number} that are names we use and whole numbers we could have
    counted; the rest (another program's data, a damaged report) is dropped."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and NAME.match(k)
            and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_NUMBER}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Fleet:
    """One worker's side of the fleet numbers: report its own, read everyone's."""

    def __init__(self, client: Any, prefix: str, clock: Callable[[], float] = time.time):
        self.client, self.clock = client, clock
        self.name = worker_name()
        self.total_key, self.workers_key = f"{prefix}metrics:total", f"{prefix}metrics:workers"
        self.worker_prefix = f"{prefix}metrics:w:"
        self.reported: dict[str, int] = {}    # the counters as last added to the totals

    def report(self, counters: dict[str, int], gauges: dict[str, int]) -> None:
        """Add the counters' growth to the fleet totals and publish this worker's numbers."""
        now = self.clock()
        # taken before execute() yields: a report running meanwhile (housekeeping and a scrape) adds
        # only what grew after this one, never the same growth twice
        prev, self.reported = self.reported, dict(counters)
        try:
            with self.client.pipeline(transaction=True) as p:
                for name, value in counters.items():
                    grown = value - prev.get(name, 0)
                    if grown:
                        p.hincrby(self.total_key, name, grown)
                p.set(self.worker_prefix + self.name, ev.dumps({"counters": counters, "gauges": gauges}),
                      ex=WORKER_TTL)
                p.zadd(self.workers_key, {self.name: now})
                p.zremrangebyscore(self.workers_key, "-inf", now - WORKER_TTL)
                p.execute()
        except BaseException:
            self.reported = prev     # nothing was added: the next report adds this growth
            raise

    def gather(self) -> tuple[dict[str, int], dict[str, dict]]:
        """(the fleet's counter totals, each live worker's own numbers by name)."""
        now = self.clock()
        names = [n if isinstance(n, str) else n.decode() for n in
                 self.client.zrangebyscore(self.workers_key, now - WORKER_TTL, "+inf")]
        with self.client.pipeline(transaction=True) as p:
            p.hgetall(self.total_key)
            if names:
                p.mget([self.worker_prefix + n for n in names])
            replies = p.execute()
        totals = numbers({k: int(v) for k, v in replies[0].items()
                          if isinstance(v, str) and stored.DIGITS.match(v)})
        workers = {}
        for name, raw in zip(names, replies[1] if names else [], strict=True):
            report = stored.load_or_none(raw)
            if isinstance(report, dict):
                workers[name] = {"counters": numbers(report.get("counters")), "gauges": numbers(report.get("gauges"))}
        return totals, workers
