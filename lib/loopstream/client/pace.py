"""The outbox's pace: a mirror of the sidecar's token bucket for our run, learned from its 429s."""
from __future__ import annotations

import math
import re
import time

RESERVE = 5               # tokens kept for lifecycle events once the sidecar has rate-limited us


class Pace:
    """A mirror of the sidecar's token bucket for our run, kept once the sidecar has said 429.

    Its rate and burst come from the 429's ``rate`` and ``burst`` fields (from an older sidecar's
    message, "over 10 events/s (burst 20 ...", when it has none). Output then
    goes only as fast as the bucket refills while keeping ``RESERVE`` tokens for lifecycle events,
    so a run's last events never wait out a rate limit that its own output ran into.
    """

    def __init__(self) -> None:
        self.rate = 0.0          # 0: not rate-limited (yet)
        self.burst = 20
        self.tokens = 0.0
        self.stamp = time.monotonic()

    @property
    def active(self) -> bool:
        return self.rate > 0

    def learn(self, body: dict, wait: float, count: int) -> None:
        """A batch of ``count`` events was refused: the bucket lacks ``wait`` seconds of refill."""
        rate, burst = body.get("rate"), body.get("burst")
        if not (_is_number(rate) and _is_number(burst)):
            m = re.search(r"over ([0-9.]+) events/s \(burst (\d+)", str(body.get("message") or ""))
            try:
                rate, burst = (float(m.group(1)), int(m.group(2))) if m else (None, None)
            except ValueError:       # "over 1.2.3 events/s": not a figure
                rate, burst = None, None
        if rate is not None and burst is not None:
            self.rate, self.burst = min(1e6, max(0.1, float(rate))), min(10**6, max(1, int(burst or 1)))
        elif not self.active:
            self.rate = 10.0
        self.tokens, self.stamp = min(count, self.burst) - wait * self.rate, time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def output_room(self, closing: bool) -> int | None:
        """Output events the next batch may carry (None: no limit known)."""
        if not self.active:
            return None
        self._refill()
        return max(1, int(self.tokens - (0 if closing else RESERVE)))

    def delay(self, count: int, lifecycle: bool) -> float:
        """Seconds to wait before posting ``count`` events so that the sidecar takes them."""
        if not self.active:
            return 0.0
        self._refill()
        need = min(count, self.burst) + (0 if lifecycle else RESERVE)
        return max(0.0, (need - self.tokens) / self.rate)

    def spend(self, count: int) -> None:
        if self.active:
            self._refill()
            self.tokens = max(-float(self.burst), self.tokens - count)

def _is_number(value) -> bool:
    """A finite number within ±1e15 (a huge int would overflow float(); bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) <= 1e15 if isinstance(value, int) else math.isfinite(value) and abs(value) <= 1e15
