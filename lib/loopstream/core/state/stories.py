"""A run's stories and their acceptance criteria: started, checked, completed, stalled.

A story is found or added by its id (records.story); while it runs, the first criterion not yet
decided is the one shown in progress.
"""
from __future__ import annotations

from typing import Any

from loopstream.core.state.agents import subagents
from loopstream.core.state.records import STORY_DONE, log, story
from loopstream.core.state.values import amount, as_text, num


def _index(value: Any) -> int | None:
    """A criterion index: a whole number 0-1000 (``1.0`` counts, as JSON cannot tell them apart)."""
    n = num(value)
    return int(n) if n is not None and n == int(n) and 0 <= n <= 1000 else None


def _criterion_text(item: Any) -> str:
    if isinstance(item, dict):
        return as_text(item.get("text", ""))
    return as_text(item)


def _criterion(s: dict, index: Any, text: Any) -> dict | None:
    index = _index(index)
    if index is None:
        return None
    acs = s["acceptance_criteria"]
    while len(acs) <= index:
        acs.append({"text": "", "status": "pending", "duration_ms": None, "error": None})
    ac = acs[index]
    if text is not None and not ac["text"]:
        ac["text"] = as_text(text)
    return ac


def _mark_next_running(s: dict) -> None:
    """While a story runs, the first criterion not yet decided is the one in progress."""
    acs = s["acceptance_criteria"]
    for ac in acs:
        if ac["status"] == "running":
            ac["status"] = "pending"
    if s["status"] != "running":
        return
    for ac in acs:
        if ac["status"] == "pending":
            ac["status"] = "running"
            return


def clear_stall(snap: dict, story_id: Any) -> None:
    """Any event of a stalled story shows it is alive again."""
    if story_id is None:
        return
    for s in snap["stories"]:
        if s["id"] == as_text(story_id):
            s["stalled"] = None


def _story_started(snap: dict, data: dict, ts: Any) -> None:
    s = story(snap, data.get("story_id"))
    s["status"] = "running"
    s["started_at"] = ts
    s["duration_ms"] = None
    if data.get("title") is not None:
        s["title"] = as_text(data["title"])
    if data.get("priority") is not None:
        s["priority"] = data["priority"]
    attempt = num(data.get("attempt"))
    s["attempt"] = attempt if attempt is not None else s["attempt"] + 1
    criteria = data.get("acceptance_criteria")
    if isinstance(criteria, list):
        s["acceptance_criteria"] = [
            {"text": _criterion_text(c), "status": "pending", "duration_ms": None, "error": None}
            for c in criteria]
    else:
        for ac in s["acceptance_criteria"]:
            ac.update(status="pending", duration_ms=None, error=None)
    snap["current_story"] = s["id"]
    if s["agent"] is not None:
        s["agent"]["last_tool"] = None   # a new attempt runs no tool yet, nor in circles; counts and cost add up
        s["agent"]["looping"] = None
    _mark_next_running(s)


def _ac_event(passed: bool):
    def handle(snap: dict, data: dict, ts: Any) -> None:
        s = story(snap, data.get("story_id"))
        ac = _criterion(s, data.get("ac_index"), data.get("ac_text"))
        if ac is None:
            return
        ac["status"] = "passed" if passed else "failed"
        if passed:
            ac["duration_ms"] = num(data.get("duration_ms"))
            ac["error"] = None
        else:
            ac["error"] = as_text(data.get("error") or "failed")
        _mark_next_running(s)
    return handle


def _story_completed(snap: dict, data: dict, ts: Any) -> None:
    s = story(snap, data.get("story_id"))
    status = data.get("status")
    s["status"] = status if status in STORY_DONE else "passed"
    s["duration_ms"] = num(data.get("duration_ms"))
    attempts = num(data.get("attempts"))
    s["attempts"] = attempts if attempts is not None else max(s["attempt"], 1)
    tool = s["agent"]["last_tool"] if s["agent"] is not None else None
    if tool is not None and tool["finished_at"] is None:
        tool["finished_at"] = ts   # the story ended while its tool ran (stopped, timed out)
    for sub in subagents(s["agent"]) if s["agent"] is not None else []:
        if sub["state"] == "running":   # its end never reported: it ended with the story
            sub["state"] = "done" if s["status"] == "passed" else "failed"
            sub["finished_at"] = ts
    for ac in s["acceptance_criteria"]:
        if ac["status"] == "running":
            ac["status"] = "pending"
        if s["status"] == "passed" and ac["status"] == "pending":
            ac["status"] = "passed"
    if snap["current_story"] == s["id"]:
        running = [x["id"] for x in snap["stories"] if x["status"] == "running"]
        snap["current_story"] = running[-1] if running else None


def _story_stalled(snap: dict, data: dict, ts: Any) -> None:
    s = story(snap, data.get("story_id"))
    silent = amount(data.get("silent_s"))
    s["stalled"] = {"silent_s": silent, "since": ts}
    log(snap, "story_stalled", ts, f"{s['id']} stalled: nothing from it for {int(silent)} s" if silent is not None
        else f"{s['id']} stalled")


HANDLERS = {
    "story_started": _story_started,
    "ac_completed": _ac_event(True),
    "ac_failed": _ac_event(False),
    "story_completed": _story_completed,
    "story_stalled": _story_stalled,
}
