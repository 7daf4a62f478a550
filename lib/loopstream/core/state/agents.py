"""An agent's record in a run: its model, tool calls, subagents, going in circles, cost and tokens.

The events come from the agent formats (core/formats/). An event that names a story updates that
story's agent record, else the run's; cost and tokens add up over a story's attempts and into
the run's totals.
"""
from __future__ import annotations

from typing import Any

from loopstream.core.state.records import SUBAGENTS, log, story
from loopstream.core.state.values import amount, as_text, js_number, short


def new_agent() -> dict:
    return {"model": None, "session_id": None, "tool_calls": 0, "tool_errors": 0, "last_tool": None,
            "cost_usd": None, "input_tokens": 0, "output_tokens": 0, "num_turns": None, "is_error": None,
            "subagents": [], "looping": None}


def agent_of(snap: dict, data: dict) -> dict:
    """The agent record an event updates: its story's, or the run's when it names no story."""
    holder = snap if data.get("story_id") is None else story(snap, data["story_id"])
    if holder["agent"] is None:
        holder["agent"] = new_agent()
    return holder["agent"]


def subagents(a: dict) -> list:
    """An agent record's subagents (none in a record stored before they were kept)."""
    return a.get("subagents") or []


def add_spent(snap: dict, a: dict, data: dict) -> None:
    """An agent's reported cost and tokens, added to its record and to the run's."""
    cost = amount(data.get("cost_usd"))
    if cost is not None:
        a["cost_usd"] = (a["cost_usd"] or 0) + cost
        snap["cost_usd"] = (snap["cost_usd"] or 0) + cost
    for key in ("input_tokens", "output_tokens"):
        n = amount(data.get(key))
        if n is not None:
            a[key] += n
            snap[key] += n


def _agent_init(snap: dict, data: dict, ts: Any) -> None:
    a = agent_of(snap, data)
    a["model"] = short(data.get("model"))
    a["session_id"] = short(data.get("session_id"))


def _agent_text(snap: dict, data: dict, ts: Any) -> None:
    agent_of(snap, data)


def _tool_call(snap: dict, data: dict, ts: Any) -> None:
    a = agent_of(snap, data)
    a["tool_calls"] += 1
    parent = short(data.get("parent_id"))
    tool = a["last_tool"] = {"tool": short(data.get("tool")) or "?", "id": short(data.get("id")),
                             "summary": short(data.get("summary")) or "", "started_at": ts,
                             "finished_at": None, "is_error": None, "parent_id": parent}
    _still_looping(a, data, parent)
    if "subagent_type" in data and tool["id"] is not None:   # a Task call: the subagent it starts
        sub = {"id": tool["id"], "type": short(data.get("subagent_type")),
               "description": short(data.get("description")), "state": "running", "tool_calls": 0,
               "last_tool": None, "started_at": ts, "finished_at": None}
        a["subagents"] = [*[x for x in subagents(a) if x["id"] != sub["id"]], sub][-SUBAGENTS:]
    for sub in subagents(a):
        if sub["id"] == parent:
            sub["tool_calls"] += 1
            sub["last_tool"] = {"tool": tool["tool"], "id": tool["id"], "summary": tool["summary"]}


def _still_looping(a: dict, data: dict, parent: str | None) -> None:
    """A call of the agent that went in circles: the streak goes on (``repeat`` grows) or ends."""
    looping = a.get("looping")
    if looping is None or looping["parent_id"] != parent:
        return
    repeat = amount(data.get("repeat"))
    if repeat is not None and repeat > looping["repeats"]:
        looping["repeats"] = repeat
    else:
        a["looping"] = None


def _agent_looping(snap: dict, data: dict, ts: Any) -> None:
    a = agent_of(snap, data)
    repeats = amount(data.get("repeats"))
    looping = a["looping"] = {"tool": short(data.get("tool")) or "?", "summary": short(data.get("summary")) or "",
                              "repeats": repeats if repeats is not None else 0,
                              "parent_id": short(data.get("parent_id")), "since": ts}
    who = f"{as_text(data['story_id'])} " if data.get("story_id") is not None else ""
    times = js_number(looping["repeats"])
    log(snap, "agent_looping", ts, f"{who}looping: {looping['tool']} {looping['summary']} ×{times}")


def _subagent_completed(snap: dict, data: dict, ts: Any) -> None:
    a = agent_of(snap, data)
    sid = short(data.get("id"))
    for sub in subagents(a):
        if sub["id"] == sid:
            sub["state"] = "failed" if data.get("state") == "failed" else "done"
            sub["finished_at"] = ts
    if a.get("looping") is not None and a["looping"]["parent_id"] == sid:
        a["looping"] = None      # the subagent that went in circles has ended


def _tool_result(snap: dict, data: dict, ts: Any) -> None:
    a = agent_of(snap, data)
    failed = data.get("is_error") is True
    if failed:
        a["tool_errors"] += 1
    tool = a["last_tool"]
    if tool is not None and tool["finished_at"] is None and tool["id"] == short(data.get("id")):
        tool["finished_at"] = ts
        tool["is_error"] = failed


def _agent_result(snap: dict, data: dict, ts: Any) -> None:
    """Cost and tokens add up over a story's attempts and over the run's stories."""
    a = agent_of(snap, data)
    add_spent(snap, a, data)
    a["num_turns"] = amount(data.get("num_turns"))
    a["is_error"] = data.get("is_error") is True


HANDLERS = {
    "agent_init": _agent_init,
    "agent_text": _agent_text,
    "tool_call": _tool_call,
    "tool_result": _tool_result,
    "agent_result": _agent_result,
    "agent_looping": _agent_looping,
    "subagent_completed": _subagent_completed,
}
