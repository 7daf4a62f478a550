"""A Claude Code session reported by its hooks (core/formats/hook_session.py) is a run: its
session record (working, waiting for input, idle, ended), its subagents, and the API usage its
telemetry reports (sidecar/otlp/logs_in.py).
"""
from __future__ import annotations

import marshal
from typing import Any

from loopstream.core.state.agents import add_spent, agent_of
from loopstream.core.state.records import LIVE, SUBAGENTS, log
from loopstream.core.state.values import amount, opt_text, short

SESSION_STATES = ("working", "waiting_for_input", "idle")


def _session_of(snap: dict) -> dict:
    """The run's session record, as a copy this event may change (created on first use)."""
    old = snap.get("session")
    s = snap["session"] = marshal.loads(marshal.dumps(old)) if old is not None else {
        "state": "idle", "since": None, "waiting_for": None, "cwd": None, "project": None, "model": None,
        "source": None, "reason": None, "subagents": []}
    return s


def _session_live(snap: dict) -> None:
    """A session that reports is running, even after it ended (``claude --resume``)."""
    if snap["status"] not in LIVE:
        snap["status"] = "running"
        snap["finished_at"] = None


def _set_session_state(s: dict, state: str, ts: Any, waiting_for: str | None = None) -> None:
    if s["state"] != state:
        s["since"] = ts
    s["state"] = state
    s["waiting_for"] = waiting_for


def _session_started(snap: dict, data: dict, ts: Any) -> None:
    s = _session_of(snap)
    _session_live(snap)
    for key in ("cwd", "project", "model", "source"):
        value = short(data.get(key)) if key != "cwd" else opt_text(data.get("cwd"))
        if value is not None:
            s[key] = value
    s["reason"] = None
    _set_session_state(s, "idle", ts)
    if snap["task_name"] is None and s["project"] is not None:
        snap["task_name"] = s["project"]
    log(snap, "session_started", ts, f"session started ({s['source'] or '?'}) in {s['cwd'] or '?'}")


def _session_state(snap: dict, data: dict, ts: Any) -> None:
    state = data.get("state")
    if state not in SESSION_STATES:
        return
    s = _session_of(snap)
    _session_live(snap)
    waiting = (short(data.get("waiting_for")) or "") if state == "waiting_for_input" else None
    _set_session_state(s, state, ts, waiting)


def _session_subagent(snap: dict, data: dict, ts: Any) -> None:
    agent = short(data.get("agent_id"))
    if agent is None:
        return
    s = _session_of(snap)
    done = data.get("state") == "done"
    subs = [x for x in s["subagents"] if x["agent_id"] == agent]
    if not subs:
        subs = [{"agent_id": agent, "agent_type": short(data.get("agent_type")), "state": "running",
                 "tool_calls": 0, "last_tool": None, "cost_usd": None, "started_at": ts, "finished_at": None}]
        s["subagents"] = [*s["subagents"], subs[0]][-SUBAGENTS:]
    subs[0]["state"] = "done" if done else "running"
    subs[0]["finished_at"] = ts if done else None


def _session_ended(snap: dict, data: dict, ts: Any) -> None:
    s = _session_of(snap)
    _set_session_state(s, "ended", ts)
    s["reason"] = short(data.get("reason"))
    log(snap, "session_ended", ts, f"session ended ({s['reason'] or '?'})")
    for sub in s["subagents"]:
        if sub["state"] == "running":
            sub["state"] = "done"
            sub["finished_at"] = ts
    if snap["status"] in LIVE:
        snap["status"] = "passed"
        snap["finished_at"] = ts
        snap["current_story"] = None


def session_activity(snap: dict, etype: Any, data: dict, ts: Any) -> None:
    """A tool call or result in a session: it is working (no longer waiting), and a subagent's
    call counts for that subagent."""
    s = _session_of(snap)
    if s["state"] != "ended":
        _set_session_state(s, "working", ts)
    agent = short(data.get("agent_id"))
    if etype != "tool_call" or agent is None:
        return
    for sub in s["subagents"]:
        if sub["agent_id"] == agent:
            sub["tool_calls"] += 1
            sub["last_tool"] = {"tool": short(data.get("tool")) or "?", "id": short(data.get("id")),
                                "summary": short(data.get("summary")) or ""}


def _agent_usage(snap: dict, data: dict, ts: Any) -> None:
    """Cost and tokens of API requests as Claude Code's telemetry reports them (otlp/logs_in.py), added up
    as agent_result's are; the model when none was known; in a session, a subagent's share on it too."""
    a = agent_of(snap, data)
    model = short(data.get("model"))
    if a["model"] is None:
        a["model"] = model
    add_spent(snap, a, data)
    if snap.get("session") is None:
        return
    s = _session_of(snap)
    if s["model"] is None:
        s["model"] = model
    agent, cost = short(data.get("agent_id")), amount(data.get("cost_usd"))
    for sub in s["subagents"]:
        if sub["agent_id"] == agent and cost is not None:
            sub["cost_usd"] = (sub.get("cost_usd") or 0) + cost


HANDLERS = {
    "session_started": _session_started,
    "session_state": _session_state,
    "session_subagent": _session_subagent,
    "session_ended": _session_ended,
    "agent_usage": _agent_usage,
}
