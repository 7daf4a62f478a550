"""The run-state reducer: events -> snapshot (pure, shared by server and CLI).

``apply(snapshot, event)`` folds one event (a dict as on the wire) into a run's
snapshot, a plain JSON-able dict, and returns it. The dashboard's JS reducer
(dashboard/state.js) mirrors this package and both are pinned by the golden
fixtures in tests/fixtures/. Keep the two in step, and keep this pure: no
clock (times come from the events), no I/O.

It never raises on an event the server accepted: a field of the wrong type
is ignored or turned into text (values.py holds the rules for numbers and text).

The parts: reducer.py (``apply``: copy on write, an event to its handler),
records.py (a snapshot's shape, statuses, stories found by id, the log),
run.py (the run's own events, output, progress, controls), stories.py
(stories and acceptance criteria), agents.py (an agent's tools, subagents and
cost), sessions.py (a Claude Code session reported by its hooks), derive.py
(counts, percent, elapsed, ETA).
"""
from __future__ import annotations

from loopstream.core.state.records import FINISHED, LIVE, new_run
from loopstream.core.state.reducer import apply, is_live, reduce, summarize

__all__ = ["FINISHED", "LIVE", "apply", "is_live", "new_run", "reduce", "summarize"]
