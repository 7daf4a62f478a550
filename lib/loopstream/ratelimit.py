"""Token buckets per emitter key (pure; the clock is injected).

A request costs one token per event. A batch larger than the bucket is let
through when the bucket is full and leaves it in debt, so a batch is never
refused forever and the sustained rate still holds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class TokenBuckets:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000):
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, cost: int = 1) -> float:
        """Spend ``cost`` tokens. Returns 0.0 when allowed, else seconds to wait."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_full(now)
            b = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.rate)
            b.stamp = now
        need = min(cost, self.burst)
        if b.tokens + 1e-9 >= need:
            b.tokens -= cost
            return 0.0
        return (need - b.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: they hold no information."""
        full = [k for k, b in self._buckets.items()
                if b.tokens + (now - b.stamp) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= self.max_keys:  # all busy: forget the oldest
            oldest = min(self._buckets, key=lambda k: self._buckets[k].stamp)
            del self._buckets[oldest]
