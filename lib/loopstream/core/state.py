"""The run-state reducer: events -> snapshot (pure, shared by server and CLI).

``apply(snapshot, event)`` folds one event (a dict as on the wire) into a run's
snapshot, a plain JSON-able dict, and returns it. The dashboard's JS reducer
(dashboard/state.js) mirrors this function and both are pinned by the golden
fixtures in tests/fixtures/. Keep the two in step, and keep this pure: no
clock (times come from the events), no I/O.

It never raises on an event the server accepted: a field of the wrong type
is ignored or turned into text. One text rule holds in both reducers: text is
cut by code points, and a value that is not a string is shown as compact JSON
(sorted keys, numbers written as JavaScript writes them: ``2.0`` is ``2``).
"""
from __future__ import annotations

import marshal
import math
from collections.abc import Iterable
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any

OUTPUT_TAIL = 100_000   # characters of output kept per run
LOG_TAIL = 100          # log lines (unknown types, errors) kept per run
LOG_TEXT = 500          # characters kept of one log line: a snapshot stays small whatever is logged
LAST_OUTPUT = 240       # characters of a story's latest output shown on its card
AGENT_TEXT = 300        # characters kept of an agent's tool name, summary, model
AGENT_MAX = 1e12        # an agent count or cost beyond this is garbage, not a number
SUBAGENTS = 100         # subagents kept per agent record (the latest)
MAX_NUMBER = 10**15     # a number beyond this (or NaN, Infinity) is not a number to the reducer
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


def _story(snap: dict, story_id: Any) -> dict:
    sid = as_text(story_id) if story_id is not None else "?"
    for s in snap["stories"]:
        if s["id"] == sid:
            return s
    s = {"id": sid, "title": "", "status": "queued", "priority": None, "attempt": 0,
         "attempts": 0, "acceptance_criteria": [], "duration_ms": None,
         "started_at": None, "last_output": "", "agent": None, "stalled": None}
    snap["stories"].append(s)
    return s


def _criterion_text(item: Any) -> str:
    if isinstance(item, dict):
        return as_text(item.get("text", ""))
    return as_text(item)


def _criterion(story: dict, index: Any, text: Any) -> dict | None:
    index = _index(index)
    if index is None:
        return None
    acs = story["acceptance_criteria"]
    while len(acs) <= index:
        acs.append({"text": "", "status": "pending", "duration_ms": None, "error": None})
    ac = acs[index]
    if text is not None and not ac["text"]:
        ac["text"] = as_text(text)
    return ac


def _mark_next_running(story: dict) -> None:
    """While a story runs, the first criterion not yet decided is the one in progress."""
    acs = story["acceptance_criteria"]
    for ac in acs:
        if ac["status"] == "running":
            ac["status"] = "pending"
    if story["status"] != "running":
        return
    for ac in acs:
        if ac["status"] == "pending":
            ac["status"] = "running"
            return


def _log(snap: dict, etype: Any, ts: Any, text: Any) -> None:
    line = {"type": etype, "ts": ts, "text": text[:LOG_TEXT]}   # code points, as in JS
    snap["log"] = [*snap["log"][1 - LOG_TAIL:], line]            # a new list: the old snapshot keeps its own


def _num(value: Any) -> float | None:
    """A finite number within ±MAX_NUMBER (never a bool), else None: stored data is not trusted."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if abs(value) <= MAX_NUMBER else None


def _index(value: Any) -> int | None:
    """A criterion index: a whole number 0-1000 (``1.0`` counts, as JSON cannot tell them apart)."""
    n = _num(value)
    return int(n) if n is not None and n == int(n) and 0 <= n <= 1000 else None


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def js_number(x: int | float) -> str:
    """A number as JavaScript's ``String(x)`` and ``JSON.stringify`` write it (``2.0`` -> ``2``,
    ``1e-7`` -> ``1e-7``, ``1e21`` -> ``1e+21``); NaN and Infinity as ``null``, like JSON.stringify."""
    if isinstance(x, int) and abs(x) < 10**21:
        return str(x)
    if not math.isfinite(x):
        return "null"
    if x == 0:
        return "0"
    short = repr(float(x))     # the shortest round-trip digits; positional from 1e-4 to 1e16, as in JS
    if "e" not in short:
        return short[:-2] if short.endswith(".0") else short
    d = Decimal(repr(abs(float(x)))).normalize().as_tuple()   # the shortest round-trip digits, as JS
    digits = "".join(map(str, d.digits))
    k, n = len(digits), int(d.exponent) + len(digits)        # x = 0.DIGITS × 10^n (finite: an int exponent)
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * -n + digits
    else:
        body = (digits[0] + ("." + digits[1:] if k > 1 else "")) + f"e{'+' if n > 0 else '-'}{abs(n - 1)}"
    return ("-" if x < 0 else "") + body


def text_json(value: Any) -> str:
    """Compact JSON with keys sorted by UTF-16 units and numbers written as in JS: the text both
    reducers make of a value that is not a string (JS: ``textJson`` in dashboard/state.js)."""
    if isinstance(value, str):
        return encode_basestring(value)
    if value is None or value is True or value is False:
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return js_number(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(text_json(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: str(k).encode("utf-16-be"))
        return "{" + ",".join(f"{encode_basestring(str(k))}:{text_json(value[k])}" for k in keys) + "}"
    return encode_basestring(str(value))


def _opt_text(value: Any) -> str | None:
    return None if value is None else as_text(value)


def as_text(value: Any) -> str:
    """Text of any event value: a string as it is, None as nothing, anything else as text_json."""
    if isinstance(value, str):
        return value
    return "" if value is None else text_json(value)


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
        _clear_stall(snap, data.get("story_id"))
    handler = _HANDLERS.get(etype)
    if handler:
        handler(snap, data, ts)
    else:
        text = data.get("message") if isinstance(data.get("message"), str) else text_json(data)
        _log(snap, etype, ts, text)
    if etype in ("tool_call", "tool_result") and snap.get("session") is not None:
        _session_activity(snap, etype, data, ts)
    _derive(snap)
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


def _clear_stall(snap: dict, story_id: Any) -> None:
    """Any event of a stalled story shows it is alive again."""
    if story_id is None:
        return
    for s in snap["stories"]:
        if s["id"] == as_text(story_id):
            s["stalled"] = None


def _task_started(snap: dict, data: dict, ts: Any) -> None:
    snap["status"] = "running"
    snap["started_at"] = ts
    snap["finished_at"] = None
    snap["task_id"] = data.get("task_id")
    snap["task_name"] = _opt_text(data.get("task_name"))
    snap["story_count"] = _num(data.get("story_count"))
    snap["estimated_duration"] = _num(data.get("estimated_duration"))
    snap["heartbeat_s"] = _num(data.get("heartbeat_s"))   # the runner's liveness interval (reaper.py)
    snap["command"] = _opt_text(data.get("command"))      # what `loop exec` runs
    snap["exit_code"] = None
    snap["stop_reason"] = None
    stories = data.get("stories")
    for item in stories if isinstance(stories, list) else []:
        if isinstance(item, dict) and item.get("id") is not None:
            s = _story(snap, item["id"])
            s["title"] = as_text(item.get("title") or s["title"])
            s["priority"] = item.get("priority", s["priority"])
            if item.get("status") in STORY_DONE:
                s["status"] = item["status"]


def _story_started(snap: dict, data: dict, ts: Any) -> None:
    s = _story(snap, data.get("story_id"))
    s["status"] = "running"
    s["started_at"] = ts
    s["duration_ms"] = None
    if data.get("title") is not None:
        s["title"] = as_text(data["title"])
    if data.get("priority") is not None:
        s["priority"] = data["priority"]
    attempt = _num(data.get("attempt"))
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
        s = _story(snap, data.get("story_id"))
        ac = _criterion(s, data.get("ac_index"), data.get("ac_text"))
        if ac is None:
            return
        ac["status"] = "passed" if passed else "failed"
        if passed:
            ac["duration_ms"] = _num(data.get("duration_ms"))
            ac["error"] = None
        else:
            ac["error"] = as_text(data.get("error") or "failed")
        _mark_next_running(s)
    return handle


def _story_completed(snap: dict, data: dict, ts: Any) -> None:
    s = _story(snap, data.get("story_id"))
    status = data.get("status")
    s["status"] = status if status in STORY_DONE else "passed"
    s["duration_ms"] = _num(data.get("duration_ms"))
    attempts = _num(data.get("attempts"))
    s["attempts"] = attempts if attempts is not None else max(s["attempt"], 1)
    tool = s["agent"]["last_tool"] if s["agent"] is not None else None
    if tool is not None and tool["finished_at"] is None:
        tool["finished_at"] = ts   # the story ended while its tool ran (stopped, timed out)
    for sub in _subagents(s["agent"]) if s["agent"] is not None else []:
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


def _finish(status: str):
    def handle(snap: dict, data: dict, ts: Any) -> None:
        snap["exit_code"] = _num(data.get("exit_code"))   # the command's, from `loop exec`
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
                _log(snap, "task_stopped", ts, f"stopped: {as_text(data['reason'])}")
        snap["finished_at"] = ts
        snap["current_story"] = None
    return handle


def _interrupted(snap: dict, data: dict, ts: Any) -> None:
    """The runner is gone (the sidecar's reaper, or a restart): finished, but it may come back."""
    snap["status"] = "interrupted"
    snap["finished_at"] = ts
    _log(snap, "task_interrupted", ts, "interrupted" + (f": {as_text(data['reason'])}" if data.get("reason") else ""))


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
        s = _story(snap, data["story_id"])
        s["last_output"] = (s["last_output"] + text)[-LAST_OUTPUT:]


def _progress(snap: dict, data: dict, ts: Any) -> None:
    p = dict(snap["progress"] or {"percent": None, "current": None, "total": None, "message": None})
    for k in ("percent", "current", "total"):
        if _num(data.get(k)) is not None:
            p[k] = data[k]
    if isinstance(data.get("message"), str):
        p["message"] = data["message"]
    snap["progress"] = p


def _error(snap: dict, data: dict, ts: Any) -> None:
    snap["last_error"] = {"story_id": data.get("story_id"), "error_type": _opt_text(data.get("error_type")),
                          "error_message": _opt_text(data.get("error_message")), "retryable": data.get("retryable")}
    snap["error_count"] += 1
    _log(snap, "error_occurred", ts,
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
        _log(snap, kind, ts, kind.replace("_", " ") + reason)
    return handle


def new_agent() -> dict:
    return {"model": None, "session_id": None, "tool_calls": 0, "tool_errors": 0, "last_tool": None,
            "cost_usd": None, "input_tokens": 0, "output_tokens": 0, "num_turns": None, "is_error": None,
            "subagents": [], "looping": None}


def _short(value: Any) -> str | None:
    return value[:AGENT_TEXT] if isinstance(value, str) else None


def _amount(value: Any) -> float | None:
    """A count or a cost from an event: a finite number in [0, AGENT_MAX], else unknown."""
    n = _num(value)
    return n if n is not None and 0 <= n <= AGENT_MAX else None


def _agent_of(snap: dict, data: dict) -> dict:
    """The agent record an event updates: its story's, or the run's when it names no story."""
    holder = snap if data.get("story_id") is None else _story(snap, data["story_id"])
    if holder["agent"] is None:
        holder["agent"] = new_agent()
    return holder["agent"]


def _agent_init(snap: dict, data: dict, ts: Any) -> None:
    a = _agent_of(snap, data)
    a["model"] = _short(data.get("model"))
    a["session_id"] = _short(data.get("session_id"))


def _agent_text(snap: dict, data: dict, ts: Any) -> None:
    _agent_of(snap, data)


def _tool_call(snap: dict, data: dict, ts: Any) -> None:
    a = _agent_of(snap, data)
    a["tool_calls"] += 1
    parent = _short(data.get("parent_id"))
    tool = a["last_tool"] = {"tool": _short(data.get("tool")) or "?", "id": _short(data.get("id")),
                             "summary": _short(data.get("summary")) or "", "started_at": ts,
                             "finished_at": None, "is_error": None, "parent_id": parent}
    _still_looping(a, data, parent)
    if "subagent_type" in data and tool["id"] is not None:   # a Task call: the subagent it starts
        sub = {"id": tool["id"], "type": _short(data.get("subagent_type")),
               "description": _short(data.get("description")), "state": "running", "tool_calls": 0,
               "last_tool": None, "started_at": ts, "finished_at": None}
        a["subagents"] = [*[x for x in _subagents(a) if x["id"] != sub["id"]], sub][-SUBAGENTS:]
    for sub in _subagents(a):
        if sub["id"] == parent:
            sub["tool_calls"] += 1
            sub["last_tool"] = {"tool": tool["tool"], "id": tool["id"], "summary": tool["summary"]}


def _subagents(a: dict) -> list:
    """An agent record's subagents (none in a record stored before they were kept)."""
    return a.get("subagents") or []


def _still_looping(a: dict, data: dict, parent: str | None) -> None:
    """A call of the agent that went in circles: the streak goes on (``repeat`` grows) or ends."""
    looping = a.get("looping")
    if looping is None or looping["parent_id"] != parent:
        return
    repeat = _amount(data.get("repeat"))
    if repeat is not None and repeat > looping["repeats"]:
        looping["repeats"] = repeat
    else:
        a["looping"] = None


def _agent_looping(snap: dict, data: dict, ts: Any) -> None:
    a = _agent_of(snap, data)
    repeats = _amount(data.get("repeats"))
    looping = a["looping"] = {"tool": _short(data.get("tool")) or "?", "summary": _short(data.get("summary")) or "",
                              "repeats": repeats if repeats is not None else 0,
                              "parent_id": _short(data.get("parent_id")), "since": ts}
    who = f"{as_text(data['story_id'])} " if data.get("story_id") is not None else ""
    times = js_number(looping["repeats"])
    _log(snap, "agent_looping", ts, f"{who}looping: {looping['tool']} {looping['summary']} ×{times}")


def _subagent_completed(snap: dict, data: dict, ts: Any) -> None:
    a = _agent_of(snap, data)
    sid = _short(data.get("id"))
    for sub in _subagents(a):
        if sub["id"] == sid:
            sub["state"] = "failed" if data.get("state") == "failed" else "done"
            sub["finished_at"] = ts
    if a.get("looping") is not None and a["looping"]["parent_id"] == sid:
        a["looping"] = None      # the subagent that went in circles has ended


def _tool_result(snap: dict, data: dict, ts: Any) -> None:
    a = _agent_of(snap, data)
    failed = data.get("is_error") is True
    if failed:
        a["tool_errors"] += 1
    tool = a["last_tool"]
    if tool is not None and tool["finished_at"] is None and tool["id"] == _short(data.get("id")):
        tool["finished_at"] = ts
        tool["is_error"] = failed


def _add_spent(snap: dict, a: dict, data: dict) -> None:
    """An agent's reported cost and tokens, added to its record and to the run's."""
    cost = _amount(data.get("cost_usd"))
    if cost is not None:
        a["cost_usd"] = (a["cost_usd"] or 0) + cost
        snap["cost_usd"] = (snap["cost_usd"] or 0) + cost
    for key in ("input_tokens", "output_tokens"):
        n = _amount(data.get(key))
        if n is not None:
            a[key] += n
            snap[key] += n


def _agent_result(snap: dict, data: dict, ts: Any) -> None:
    """Cost and tokens add up over a story's attempts and over the run's stories."""
    a = _agent_of(snap, data)
    _add_spent(snap, a, data)
    a["num_turns"] = _amount(data.get("num_turns"))
    a["is_error"] = data.get("is_error") is True


def _story_stalled(snap: dict, data: dict, ts: Any) -> None:
    s = _story(snap, data.get("story_id"))
    silent = _amount(data.get("silent_s"))
    s["stalled"] = {"silent_s": silent, "since": ts}
    _log(snap, "story_stalled", ts, f"{s['id']} stalled: nothing from it for {int(silent)} s" if silent is not None
         else f"{s['id']} stalled")


# -- sessions: a Claude Code session reported by its hooks (formats/hook_session.py) is a run ---------------
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
        value = _short(data.get(key)) if key != "cwd" else _opt_text(data.get("cwd"))
        if value is not None:
            s[key] = value
    s["reason"] = None
    _set_session_state(s, "idle", ts)
    if snap["task_name"] is None and s["project"] is not None:
        snap["task_name"] = s["project"]
    _log(snap, "session_started", ts, f"session started ({s['source'] or '?'}) in {s['cwd'] or '?'}")


def _session_state(snap: dict, data: dict, ts: Any) -> None:
    state = data.get("state")
    if state not in SESSION_STATES:
        return
    s = _session_of(snap)
    _session_live(snap)
    waiting = (_short(data.get("waiting_for")) or "") if state == "waiting_for_input" else None
    _set_session_state(s, state, ts, waiting)


def _session_subagent(snap: dict, data: dict, ts: Any) -> None:
    agent = _short(data.get("agent_id"))
    if agent is None:
        return
    s = _session_of(snap)
    done = data.get("state") == "done"
    subs = [x for x in s["subagents"] if x["agent_id"] == agent]
    if not subs:
        subs = [{"agent_id": agent, "agent_type": _short(data.get("agent_type")), "state": "running",
                 "tool_calls": 0, "last_tool": None, "cost_usd": None, "started_at": ts, "finished_at": None}]
        s["subagents"] = [*s["subagents"], subs[0]][-SUBAGENTS:]
    subs[0]["state"] = "done" if done else "running"
    subs[0]["finished_at"] = ts if done else None


def _session_ended(snap: dict, data: dict, ts: Any) -> None:
    s = _session_of(snap)
    _set_session_state(s, "ended", ts)
    s["reason"] = _short(data.get("reason"))
    _log(snap, "session_ended", ts, f"session ended ({s['reason'] or '?'})")
    for sub in s["subagents"]:
        if sub["state"] == "running":
            sub["state"] = "done"
            sub["finished_at"] = ts
    if snap["status"] in LIVE:
        snap["status"] = "passed"
        snap["finished_at"] = ts
        snap["current_story"] = None


def _session_activity(snap: dict, etype: Any, data: dict, ts: Any) -> None:
    """A tool call or result in a session: it is working (no longer waiting), and a subagent's
    call counts for that subagent."""
    s = _session_of(snap)
    if s["state"] != "ended":
        _set_session_state(s, "working", ts)
    agent = _short(data.get("agent_id"))
    if etype != "tool_call" or agent is None:
        return
    for sub in s["subagents"]:
        if sub["agent_id"] == agent:
            sub["tool_calls"] += 1
            sub["last_tool"] = {"tool": _short(data.get("tool")) or "?", "id": _short(data.get("id")),
                                "summary": _short(data.get("summary")) or ""}



def _agent_usage(snap: dict, data: dict, ts: Any) -> None:
    """Cost and tokens of API requests as Claude Code's telemetry reports them (otlp_in.py), added up
    as agent_result's are; the model when none was known; in a session, a subagent's share on it too."""
    a = _agent_of(snap, data)
    model = _short(data.get("model"))
    if a["model"] is None:
        a["model"] = model
    _add_spent(snap, a, data)
    if snap.get("session") is None:
        return
    s = _session_of(snap)
    if s["model"] is None:
        s["model"] = model
    agent, cost = _short(data.get("agent_id")), _amount(data.get("cost_usd"))
    for sub in s["subagents"]:
        if sub["agent_id"] == agent and cost is not None:
            sub["cost_usd"] = (sub.get("cost_usd") or 0) + cost

# What _writable copies, by event type: the handlers below that change stories, the control
# record or the run's agent record in place (an event naming a story_id may change its story).
_TOUCH_STORIES = frozenset({"task_started", "story_started", "ac_completed", "ac_failed", "story_completed",
                            "task_stopped", "story_stalled"})
_TOUCH_CONTROL = frozenset({"task_stopped", "stop_requested", "pause_requested", "resume_requested",
                            "task_paused", "task_resumed"})
_TOUCH_AGENT = frozenset({"agent_init", "agent_text", "tool_call", "tool_result", "agent_result", "agent_looping",
                          "subagent_completed", "agent_usage"})

_HANDLERS = {
    "task_started": _task_started,
    "story_started": _story_started,
    "ac_completed": _ac_event(True),
    "ac_failed": _ac_event(False),
    "story_completed": _story_completed,
    "task_completed": _finish("completed"),
    "task_stopped": _finish("stopped"),
    "task_interrupted": _interrupted,
    "task_alive": _alive,
    "output": _output,
    "progress": _progress,
    "error_occurred": _error,
    "agent_init": _agent_init,
    "agent_text": _agent_text,
    "tool_call": _tool_call,
    "tool_result": _tool_result,
    "agent_result": _agent_result,
    "agent_looping": _agent_looping,
    "subagent_completed": _subagent_completed,
    "story_stalled": _story_stalled,
    "session_started": _session_started,
    "session_state": _session_state,
    "session_subagent": _session_subagent,
    "session_ended": _session_ended,
    "agent_usage": _agent_usage,
    **{k: _control(k) for k in ("stop_requested", "pause_requested", "resume_requested",
                                "task_paused", "task_resumed")},
}


def _derive(snap: dict) -> None:
    """Counts, percent, elapsed and ETA: all from the events' own times."""
    c = snap["counts"] = _counts(snap)
    decided = c["completed"] + c["failed"]
    snap["success_rate"] = c["completed"] / decided if decided else None
    started, end = snap["started_at"], snap["finished_at"] or snap["updated_at"]
    elapsed = end - started if _num(started) is not None and _num(end) is not None else 0
    snap["elapsed_s"] = max(0, elapsed)
    snap["percent"] = _percent(snap, c)
    snap["eta_s"] = _eta(snap, c) if snap["status"] in LIVE else None


def _counts(snap: dict) -> dict:
    stories = snap["stories"]
    c = {"total": 0, "completed": 0, "running": 0, "queued": 0, "failed": 0, "skipped": 0, "cancelled": 0}
    for s in stories:
        key = {"passed": "completed"}.get(s["status"], s["status"])
        if key in c:
            c[key] += 1
    c["total"] = max(len(stories), int(snap["story_count"] or 0))
    c["queued"] = c["total"] - c["completed"] - c["running"] - c["failed"] - c["skipped"] - c["cancelled"]
    if snap["status"] == "stopped":  # stories a stopped run never reached (known only by count) were cancelled too
        c["cancelled"], c["queued"] = c["cancelled"] + c["queued"], 0
    return c


def _percent(snap: dict, c: dict) -> float:
    progress = snap["progress"] or {}
    if c["total"]:  # finished stories: a cancelled one was never done, so a stopped run shows where it stopped
        done = c["completed"] + c["failed"] + c["skipped"]
        percent = done * 100 / c["total"]
    elif _num(progress.get("percent")) is not None:
        percent = progress["percent"]
    elif _num(progress.get("current")) is not None and _num(progress.get("total")):
        percent = float(progress["current"]) * 100 / progress["total"]   # in doubles, as JS
    else:
        percent = 0
    percent = min(100, max(0, percent))
    if snap["status"] in ("passed", "failed") and percent < 100 and not c["total"]:
        percent = 100
    return percent


def _eta(snap: dict, c: dict) -> float | None:
    durations = [s["duration_ms"] for s in snap["stories"]
                 if s["status"] in ("passed", "failed") and _num(s["duration_ms"]) is not None]
    remaining = c["queued"] + c["running"]
    if durations and remaining:
        total = 0.0
        for d in durations:   # added in order, in doubles, as JS does (sum() may compensate)
            total += d
        return total / len(durations) / 1000 * remaining
    if _num(snap["estimated_duration"]) is not None:
        return max(0, snap["estimated_duration"] - snap["elapsed_s"])
    if 0 < snap["percent"] < 100:
        return _finite(snap["elapsed_s"] * (100 - snap["percent"]) / snap["percent"])
    return None


def reduce(events: Iterable[dict], snap: dict | None = None) -> dict | None:
    for e in events:
        snap = apply(snap, e)
    return snap


def is_live(snap: dict) -> bool:
    return snap["status"] in LIVE


def summarize(snap: dict) -> dict:
    """The run-list view of a snapshot: everything but stories, output and log."""
    return {k: v for k, v in snap.items() if k not in ("stories", "output", "log")}
