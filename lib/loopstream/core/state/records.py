"""A run's snapshot and what every part of the reducer shares: the statuses, a story found (or
added) by id, and a line added to the run's log.

A snapshot is a plain JSON-able dict; ``new_run`` gives its shape (an agent record is added by
agents.py, a session record by sessions.py, when their first event comes).
"""
from __future__ import annotations

from typing import Any

from loopstream.core.state.values import as_text

LOG_TAIL = 100          # log lines (unknown types, errors) kept per run
LOG_TEXT = 500          # characters kept of one log line: a snapshot stays small whatever is logged
SUBAGENTS = 100         # subagents kept per agent record or session (the latest)
FINISHED = ("passed", "failed", "stopped")
LIVE = ("running", "paused")
STORY_DONE = ("passed", "failed", "skipped", "cancelled")


def new_run(run: str) -> dict:
    return {
        "run": run, "task_id": None, "task_name": None, "status": "running",
        "started_at": None, "updated_at": None, "finished_at": None,
        "elapsed_s": 0, "eta_s": None, "estimated_duration": None, "story_count": None,
        "stories": [], "current_story": None,
        "counts": {"total": 0, "completed": 0, "running": 0, "queued": 0,
                   "failed": 0, "skipped": 0, "cancelled": 0},
        "success_rate": None, "percent": 0,
        "progress": None, "output": "", "output_truncated": False,
        "log": [], "last_error": None, "error_count": 0,
        "control": {"stop_requested": None, "pause_requested": False},
        "summary": None, "event_count": 0, "last_event_id": None,
        "stopped_at": None,
        "agent": None, "cost_usd": None, "input_tokens": 0, "output_tokens": 0,
        "heartbeat_s": None,
        "command": None, "exit_code": None, "stop_reason": None,
    }


def story(snap: dict, story_id: Any) -> dict:
    """The run's story with this id, added (queued) when the run has none yet."""
    sid = as_text(story_id) if story_id is not None else "?"
    for s in snap["stories"]:
        if s["id"] == sid:
            return s
    s = {"id": sid, "title": "", "status": "queued", "priority": None, "attempt": 0,
         "attempts": 0, "acceptance_criteria": [], "duration_ms": None,
         "started_at": None, "last_output": "", "agent": None, "stalled": None}
    snap["stories"].append(s)
    return s


def log(snap: dict, etype: Any, ts: Any, text: Any) -> None:
    line = {"type": etype, "ts": ts, "text": text[:LOG_TEXT]}   # code points, as in JS
    snap["log"] = [*snap["log"][1 - LOG_TAIL:], line]            # a new list: the old snapshot keeps its own
