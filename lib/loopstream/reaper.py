"""Stale runs: a runner that announced a liveness interval and then went silent (pure).

A runner says in ``task_started`` how often it will speak (``heartbeat_s``)
and keeps its word with ``task_alive`` pings when it has nothing else to say.
A live run silent for three of its intervals (or ``loop serve --stale-after``
seconds) lost its runner (kill -9, a machine gone): the server finishes it
with a ``task_interrupted`` event, so no run stays "running" for good. Runs
that announced nothing (shell scripts) are never declared lost.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from . import events as ev
from . import state

MISSED_BEATS = 3


def _positive(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e9:
        return float(value)
    return None


def silent_runs(snapshots: Iterable[dict], now: float,
                stale_after: float | None = None) -> Iterator[tuple[str, int, str | None]]:
    """(run, whole seconds of silence, its last event id) for each live run past its limit."""
    for snap in list(snapshots):
        beat = _positive(snap.get("heartbeat_s"))
        last = snap.get("updated_at")
        if beat is None or not state.is_live(snap) or not isinstance(last, (int, float)):
            continue
        limit = stale_after if stale_after else MISSED_BEATS * beat
        silent = now - last
        if silent >= limit:
            yield snap["run"], int(silent), snap.get("last_event_id")


def interrupted(run: str, silent_s: int) -> ev.Draft:
    """The event that finishes a run whose runner is gone."""
    return ev.Draft("task_interrupted", run,
                    {"reason": f"no event for {silent_s} s (runner gone?)", "silent_s": silent_s})
