"""The run's own events: started, finished (completed, stopped, interrupted), alive, its output,
progress and errors, and the controls (stop, pause, resume) asked of it and answered.
"""
from __future__ import annotations

from typing import Any

from loopstream.core.state.records import FINISHED, STORY_DONE, log, story
from loopstream.core.state.values import as_text, num, opt_text

OUTPUT_TAIL = 100_000   # characters of output kept per run
LAST_OUTPUT = 240       # characters of a story's latest output shown on its card


def _task_started(snap: dict, data: dict, ts: Any) -> None:
    snap["status"] = "running"
    snap["started_at"] = ts
    snap["finished_at"] = None
    snap["task_id"] = data.get("task_id")
    snap["task_name"] = opt_text(data.get("task_name"))
    snap["story_count"] = num(data.get("story_count"))
    snap["estimated_duration"] = num(data.get("estimated_duration"))
    snap["heartbeat_s"] = num(data.get("heartbeat_s"))   # the runner's liveness interval (reaper.py)
    snap["command"] = opt_text(data.get("command"))      # what `loop exec` runs
    snap["exit_code"] = None
    snap["stop_reason"] = None
    stories = data.get("stories")
    for item in stories if isinstance(stories, list) else []:
        if isinstance(item, dict) and item.get("id") is not None:
            s = story(snap, item["id"])
            s["title"] = as_text(item.get("title") or s["title"])
            s["priority"] = item.get("priority", s["priority"])
            if item.get("status") in STORY_DONE:
                s["status"] = item["status"]


def _finish(status: str):
    def handle(snap: dict, data: dict, ts: Any) -> None:
        snap["exit_code"] = num(data.get("exit_code"))   # the command's, from `loop exec`
        if status == "completed":
            failed = any(x["status"] == "failed" for x in snap["stories"])
            explicit = data.get("status")
            snap["status"] = explicit if explicit in FINISHED else ("failed" if failed else "passed")
            snap["summary"] = data.get("summary") if isinstance(data.get("summary"), dict) else {
                k: data[k] for k in ("passed", "failed", "skipped", "duration_ms") if k in data} or None
        else:
            snap["status"] = "stopped"
            snap["control"]["stop_requested"] = None
            snap["stopped_at"] = _stopped_at(snap)
            for x in snap["stories"]:
                if x["status"] in ("running", "queued"):
                    x["status"] = "cancelled"
                    for ac in x["acceptance_criteria"]:
                        if ac["status"] == "running":
                            ac["status"] = "pending"
            snap["stop_reason"] = as_text(data["reason"]) if data.get("reason") else None
            if data.get("reason"):
                log(snap, "task_stopped", ts, f"stopped: {as_text(data['reason'])}")
        snap["finished_at"] = ts
        snap["current_story"] = None
    return handle


def _interrupted(snap: dict, data: dict, ts: Any) -> None:
    """The runner is gone (the sidecar's reaper, or a restart): finished, but it may come back."""
    snap["status"] = "interrupted"
    snap["finished_at"] = ts
    log(snap, "task_interrupted", ts, "interrupted" + (f": {as_text(data['reason'])}" if data.get("reason") else ""))


def _alive(snap: dict, data: dict, ts: Any) -> None:
    """task_alive: a liveness ping; apply() already noted the time, nothing else changes."""


def _stopped_at(snap: dict) -> str | None:
    """The story a stop interrupted: the last one running, else the last one cancelled after it started."""
    started = [x["id"] for x in snap["stories"]
               if x["status"] == "running" or (x["status"] == "cancelled" and x["started_at"] is not None)]
    return started[-1] if started else None


def _output(snap: dict, data: dict, ts: Any) -> None:
    text = data.get("text")
    if not isinstance(text, str) or not text:
        return
    out = snap["output"] + text
    if len(out) > OUTPUT_TAIL:
        out = out[-OUTPUT_TAIL:]
        snap["output_truncated"] = True
    snap["output"] = out
    if data.get("story_id") is not None:
        s = story(snap, data["story_id"])
        s["last_output"] = (s["last_output"] + text)[-LAST_OUTPUT:]


def _progress(snap: dict, data: dict, ts: Any) -> None:
    p = dict(snap["progress"] or {"percent": None, "current": None, "total": None, "message": None})
    for k in ("percent", "current", "total"):
        if num(data.get(k)) is not None:
            p[k] = data[k]
    if isinstance(data.get("message"), str):
        p["message"] = data["message"]
    snap["progress"] = p


def _error(snap: dict, data: dict, ts: Any) -> None:
    snap["last_error"] = {"story_id": data.get("story_id"), "error_type": opt_text(data.get("error_type")),
                          "error_message": opt_text(data.get("error_message")), "retryable": data.get("retryable")}
    snap["error_count"] += 1
    log(snap, "error_occurred", ts,
        f"{as_text(data.get('error_type') or 'error')}: {as_text(data.get('error_message') or '')}")


def _control(kind: str):
    def handle(snap: dict, data: dict, ts: Any) -> None:
        c = snap["control"]
        if kind == "stop_requested":
            c["stop_requested"] = as_text(data.get("reason") or "requested")
        elif kind == "pause_requested":
            c["pause_requested"] = True
        elif kind == "resume_requested":
            c["pause_requested"] = False
        elif kind == "task_paused":
            c["pause_requested"] = False
            if snap["status"] == "running":
                snap["status"] = "paused"
        elif kind == "task_resumed":
            c["pause_requested"] = False
            if snap["status"] == "paused":
                snap["status"] = "running"
        reason = f": {as_text(data['reason'])}" if data.get("reason") else ""
        log(snap, kind, ts, kind.replace("_", " ") + reason)
    return handle


HANDLERS = {
    "task_started": _task_started,
    "task_completed": _finish("completed"),
    "task_stopped": _finish("stopped"),
    "task_interrupted": _interrupted,
    "task_alive": _alive,
    "output": _output,
    "progress": _progress,
    "error_occurred": _error,
    **{k: _control(k) for k in ("stop_requested", "pause_requested", "resume_requested",
                                "task_paused", "task_resumed")},
}
