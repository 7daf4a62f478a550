"""Token buckets per emitter key (pure; the clock is injected).

A request costs one token per event, charged to several buckets at once (each
run it names, for that run's events, and the client address's, for all of
them, which a client cannot dodge by naming new runs) — to all of them or to
none. A batch larger than a bucket is let
through when that bucket is full and leaves it in debt, so a batch is never
refused forever; the debt is at most one burst, so one big batch posted for
someone else's run locks that run out for at most 2 × burst / rate seconds.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Budget:
    """A sustained rate (events/s; 0 = unlimited) and a bucket size."""

    rate: float
    burst: int

    @property
    def enabled(self) -> bool:
        return self.rate > 0


Charge = tuple[str, Budget, int]   # a bucket's key, its budget, the tokens to take from it


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float
    budget: Budget


class TokenBuckets:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000):
        self.budget = Budget(float(rate), max(1, int(burst)))
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    @property
    def rate(self) -> float:
        return self.budget.rate

    @property
    def burst(self) -> int:
        return self.budget.burst

    @property
    def enabled(self) -> bool:
        return self.budget.enabled

    def take(self, key: str, cost: int = 1) -> float:
        """Spend ``cost`` tokens of the default budget. 0.0 when allowed, else seconds to wait."""
        return self.take_all([(key, self.budget, cost)])[0]

    def take_all(self, charges: list[Charge]) -> tuple[float, str | None]:
        """Charge every (key, budget, cost) bucket its cost, or none of them.
        Returns (0.0, None) when allowed, else (seconds to wait, the key that refused)."""
        charges = [c for c in charges if c[1].enabled]
        if not charges:
            return 0.0, None
        now = self.clock()
        buckets = [self._refilled(k, b, now) for k, b, _ in charges]
        waits = [self._wait(bucket, cost) for bucket, (_, _, cost) in zip(buckets, charges, strict=True)]
        worst = max(range(len(waits)), key=waits.__getitem__)
        if waits[worst] > 0:
            return waits[worst], charges[worst][0]
        for bucket, (_, _, cost) in zip(buckets, charges, strict=True):
            bucket.tokens = max(-float(bucket.budget.burst), bucket.tokens - cost)
        return 0.0, None

    @staticmethod
    def _wait(bucket: _Bucket, cost: int) -> float:
        need = min(cost, bucket.budget.burst)
        if bucket.tokens + 1e-9 >= need:
            return 0.0
        return (need - bucket.tokens) / bucket.budget.rate

    def _refilled(self, key: str, budget: Budget, now: float) -> _Bucket:
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_full(now)
            b = self._buckets[key] = _Bucket(float(budget.burst), now, budget)
        else:
            b.tokens = min(float(budget.burst), b.tokens + (now - b.stamp) * budget.rate)
            b.stamp = now
            b.budget = budget
        return b

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: they hold no information."""
        full = [k for k, b in self._buckets.items()
                if b.tokens + (now - b.stamp) * b.budget.rate >= b.budget.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:  # all busy: forget the oldest
            oldest = min(self._buckets, key=lambda k: self._buckets[k].stamp)
            del self._buckets[oldest]
