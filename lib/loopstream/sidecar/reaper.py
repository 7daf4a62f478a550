"""Stale runs: a runner that announced a liveness interval and then went silent (pure).

A runner says in ``task_started`` how often it will speak (``heartbeat_s``)
and keeps its word with ``task_alive`` pings when it has nothing else to say.
A live run silent for three of its intervals (or ``loop serve --stale-after``
seconds) lost its runner (kill -9, a machine gone): the server finishes it
with a ``task_interrupted`` event, so no run stays "running" for good. Runs
that announced nothing (shell scripts) are never declared lost, unless they
are ghosts: every event of the run came in one request and nothing followed
for ``loop serve --ghost-after`` seconds (a run only ever named, as a batch
naming a thousand new runs does, must not hold a live-run slot for long), but a
Claude Code session (it has a ``session``) idles as long as its user does. A
finished run whose runner speaks again is live again (the reducer).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from loopstream.core import events as ev
from loopstream.core import state

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


def ghost_runs(snapshots: Iterable[dict], now: float, after: float) -> Iterator[tuple[str, int, str | None]]:
    """(run, whole seconds of silence, its last event id) for each live run whose events all came in
    one request (one batch: one ``ts``) and that has been silent ``after`` seconds since; none if 0."""
    if not after:
        return
    for snap in list(snapshots):
        first, last = snap.get("started_at"), snap.get("updated_at")
        if not state.is_live(snap) or not isinstance(last, (int, float)) or first != last:
            continue
        if snap.get("session") is not None:   # a Claude Code session idles as long as its user does
            continue
        silent = now - last
        if silent >= after:
            yield snap["run"], int(silent), snap.get("last_event_id")


SESSION_GONE_AFTER = 24 * 3600.0   # a Claude Code session silent this long is gone (closed, killed, crashed)


def gone_sessions(snapshots: Iterable[dict], now: float,
                  after: float = SESSION_GONE_AFTER) -> Iterator[tuple[str, int, str | None]]:
    """(run, whole seconds of silence, its last event id) for each live Claude Code session silent for
    ``after`` seconds: an idle session is never lost sooner, and one whose process died without a
    SessionEnd does not hold its live-run slot for ever (its next hook event brings it back)."""
    for snap in list(snapshots):
        last = snap.get("updated_at")
        if snap.get("session") is None or not state.is_live(snap) or not isinstance(last, (int, float)):
            continue
        if now - last >= after:
            yield snap["run"], int(now - last), snap.get("last_event_id")


def abandoned(run: str, silent_s: int) -> ev.Draft:
    """The event that finishes a ghost run (see ghost_runs)."""
    return ev.Draft("task_interrupted", run,
                    {"reason": f"named once and then nothing for {silent_s} s", "silent_s": silent_s})
