"""``apply``: one event folded into its run's snapshot, copy on write, by the handler for its type
(run.py, stories.py, agents.py, sessions.py); then what the snapshot derives (derive.py)."""
from __future__ import annotations

import marshal
from collections.abc import Iterable
from typing import Any

from loopstream.core.state import agents, run, sessions, stories
from loopstream.core.state.derive import derive
from loopstream.core.state.records import FINISHED, LIVE, log, new_run
from loopstream.core.state.sessions import session_activity
from loopstream.core.state.stories import clear_stall
from loopstream.core.state.values import text_json

_HANDLERS = {**run.HANDLERS, **stories.HANDLERS, **agents.HANDLERS, **sessions.HANDLERS}

# What _writable copies, by event type: the handlers that change stories, the control record or
# the run's agent record in place (an event naming a story_id may change its story).
_TOUCH_STORIES = frozenset({"task_started", "story_started", "ac_completed", "ac_failed", "story_completed",
                            "task_stopped", "story_stalled"})
_TOUCH_CONTROL = frozenset({"task_stopped", "stop_requested", "pause_requested", "resume_requested",
                            "task_paused", "task_resumed"})
_TOUCH_AGENT = frozenset({"agent_init", "agent_text", "tool_call", "tool_result", "agent_result", "agent_looping",
                          "subagent_completed", "agent_usage"})


def apply(snap: dict | None, event: dict) -> dict:
    """Fold one event into its run's snapshot (created when None) and return the new snapshot.
    The one given is never changed (copy on write: the parts this event changes are copied, the
    rest is shared), so a publish can fold ahead and keep the old snapshot if anything fails."""
    etype: Any = event.get("type")
    data = event.get("data")
    if not isinstance(data, dict):
        data = {}
    ts = event.get("ts")
    if snap is None:
        snap = new_run(event.get("run", "default"))
    elif etype == "task_started" and snap["status"] in FINISHED:
        snap = new_run(snap["run"])  # a finished run's id used again starts afresh
    else:
        snap = _writable(snap, etype, data)
    if snap["status"] == "interrupted" and etype not in ("task_completed", "task_stopped", "task_interrupted"):
        snap["status"] = "running"  # its runner came back
        snap["finished_at"] = None
    snap["event_count"] += 1
    snap["last_event_id"] = event.get("id")
    if snap["started_at"] is None:
        snap["started_at"] = ts
    snap["updated_at"] = ts
    if etype != "story_stalled":
        clear_stall(snap, data.get("story_id"))
    handler = _HANDLERS.get(etype)
    if handler:
        handler(snap, data, ts)
    else:
        text = data.get("message") if isinstance(data.get("message"), str) else text_json(data)
        log(snap, etype, ts, text)
    if etype in ("tool_call", "tool_result") and snap.get("session") is not None:
        session_activity(snap, etype, data, ts)
    derive(snap)
    return snap


def _writable(snap: dict, etype: Any, data: dict) -> dict:
    """A copy of ``snap`` that this event's handler may change in place: the top level always;
    the stories (deeply) only when the event can touch one, the control and agent records only
    when it changes them. The log, progress and counts are replaced, never changed in place."""
    out = dict(snap)
    if etype in _TOUCH_STORIES or data.get("story_id") is not None:
        out["stories"] = marshal.loads(marshal.dumps(snap["stories"]))
    if etype in _TOUCH_CONTROL:
        out["control"] = dict(snap["control"])
    if etype in _TOUCH_AGENT and snap["agent"] is not None:
        out["agent"] = marshal.loads(marshal.dumps(snap["agent"]))
    return out


def reduce(events: Iterable[dict], snap: dict | None = None) -> dict | None:
    for e in events:
        snap = apply(snap, e)
    return snap


def is_live(snap: dict) -> bool:
    return snap["status"] in LIVE


def summarize(snap: dict) -> dict:
    """The run-list view of a snapshot: everything but stories, output and log."""
    return {k: v for k, v in snap.items() if k not in ("stories", "output", "log")}
