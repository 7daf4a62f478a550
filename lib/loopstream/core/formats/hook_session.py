"""Claude Code hook payloads -> loop events (pure: no I/O, no clock). The one place this mapping lives.

Claude Code runs a hook on each step of a session (SessionStart, UserPromptSubmit, PreToolUse,
PermissionRequest, PostToolUse, PostToolUseFailure, Notification, Stop, SubagentStart, SubagentStop,
SessionEnd, …) with the step as JSON. ``session_events(payload)`` says which run that is (the
``session_id``) and which loop events the step means:

========================  ==========================================================================
SessionStart              ``session_started`` (cwd, project, source, model): the run starts, ``idle``
UserPromptSubmit          ``session_state`` ``working``, with the prompt's length; its text only when
                          the install opted in (``prompts=True``)
PreToolUse                ``tool_call`` (the hook's ``tool_use_id`` as id, the summary formats make)
PostToolUse(Failure)      ``tool_result`` (``is_error`` for a failure)
PermissionRequest         ``session_state`` ``waiting_for_input`` (``waiting_for``: the tool asked for)
Notification              ``session_state`` ``waiting_for_input`` (``waiting_for``: its message)
Stop                      the last assistant message as ``agent_text`` (cut), ``session_state`` ``idle``
SubagentStart / Stop      ``session_subagent`` running / done (and the subagent's last message)
SessionEnd                ``session_ended``: the run is finished (a later SessionStart brings it back)
anything else             ``claude_hook``, a log line: kept, never dropped, never a crash
========================  ==========================================================================

A step inside a subagent carries ``agent_id``: its events carry it too, and ``parent_id`` (the
agent id), so they group under that subagent. Every text taken from a payload is cut and made one
line where it is a name or a summary; a payload it cannot use raises ``EventError`` naming the field.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from loopstream.core.events import RUN_RE, EventError
from loopstream.core.formats.common import (
    ANSI,
    CONTROL,
    LOOP_AFTER,
    MAX_SUMMARY,
    MAX_TEXT,
    Event,
    count,
    cut,
    name,
    one_line,
    result_summary,
    signature,
    tool_summary,
)

MAX_PATH = 1000          # characters of a cwd kept


def session_events(payload: Any, prompts: bool = False) -> tuple[str, list[Event]]:
    """(run, events) of one hook payload; ``prompts`` keeps a prompt's text (else only its length)."""
    if not isinstance(payload, dict):
        raise EventError("body", "a hook payload must be a JSON object")
    sid = payload.get("session_id")
    if not isinstance(sid, str) or not RUN_RE.match(sid):
        raise EventError("session_id", "missing or not a session id ([A-Za-z0-9._-]{1,64})")
    hook = payload.get("hook_event_name")
    if not isinstance(hook, str) or not hook.strip():
        raise EventError("hook_event_name", "missing or not a string")
    mapper = MAPPERS.get(hook)
    if mapper is None:
        hook = one_line(hook, 100)
        return sid, [("claude_hook", {"hook": hook, "message": f"Claude Code hook {hook}"})]
    return sid, mapper(payload, _subagent(payload), prompts)


def project_of(cwd: str) -> str:
    """A short name for a working directory: its last component."""
    parts = [p for p in cwd.replace("\\", "/").split("/") if p]
    return one_line(parts[-1], 100) if parts else one_line(cwd, 100)


def _subagent(payload: dict) -> dict:
    """The fields that put an event under the subagent the payload comes from (none: the main agent)."""
    agent = name(payload.get("agent_id"))
    if agent is None:
        return {}
    return {"agent_id": agent, "agent_type": name(payload.get("agent_type")), "parent_id": agent}


def _session_start(p: dict, sub: dict, prompts: bool) -> list[Event]:
    raw = p.get("cwd")
    cwd = CONTROL.sub("", ANSI.sub("", raw))[:MAX_PATH] if isinstance(raw, str) else ""
    return [("session_started", {"cwd": cwd, "project": project_of(cwd) if cwd else None,
                                 "source": name(p.get("source")), "model": name(p.get("model")),
                                 "permission_mode": name(p.get("permission_mode"))})]


def _prompt(p: dict, sub: dict, prompts: bool) -> list[Event]:
    text = p.get("prompt")
    length = len(text) if isinstance(text, str) else count(p.get("prompt_length"))
    data: dict[str, Any] = {"state": "working", "prompt_length": length}
    if prompts and isinstance(text, str):
        data["prompt"] = cut(text, MAX_TEXT)
    return [("session_state", data)]


def _tool(p: dict) -> tuple[str, str]:
    return name(p.get("tool_name")) or "?", name(p.get("tool_use_id")) or ""


def _pre_tool(p: dict, sub: dict, prompts: bool) -> list[Event]:
    tool, tid = _tool(p)
    inp = p.get("tool_input")
    data: dict[str, Any] = {"tool": tool, "id": tid, "summary": tool_summary(tool, inp), **sub}
    if tool in ("Agent", "Task") and isinstance(inp, dict):   # the call that starts a subagent
        data.update(subagent_type=name(inp.get("subagent_type")), description=name(inp.get("description")))
    return [("tool_call", data)]


def _response_summary(response: Any) -> str:
    """A tool's response (an object for most tools: Bash's stdout and stderr) as one line."""
    if isinstance(response, dict):
        if "stdout" in response or "stderr" in response:   # a shell's: what it printed, maybe nothing
            return result_summary(response.get("stdout") or response.get("stderr") or "")
        for key in ("stdout", "stderr", "content", "result", "output", "filePath", "message"):
            value = response.get(key)
            if isinstance(value, (str, list)) and value:
                return result_summary(value)
        return one_line(response)
    return result_summary(response)


def _post_tool(failed: bool):
    def handle(p: dict, sub: dict, prompts: bool) -> list[Event]:
        tool, tid = _tool(p)
        summary = result_summary(p.get("error")) if failed else _response_summary(p.get("tool_response"))
        return [("tool_result", {"tool": tool, "id": tid, "is_error": failed, "summary": summary, **sub})]
    return handle


def _permission(p: dict, sub: dict, prompts: bool) -> list[Event]:
    tool = name(p.get("tool_name")) or "a tool"
    what = tool_summary(tool, p.get("tool_input"))
    asked = one_line(f"Claude needs your permission to use {tool}" + (f": {what}" if what else ""), MAX_SUMMARY)
    return [("session_state", {"state": "waiting_for_input", "waiting_for": asked, "tool": tool, **sub})]


def _notification(p: dict, sub: dict, prompts: bool) -> list[Event]:
    message = one_line(p.get("message"), MAX_SUMMARY) if isinstance(p.get("message"), str) else ""
    return [("session_state", {"state": "waiting_for_input", "waiting_for": message or "Claude needs you",
                               "notification_type": name(p.get("notification_type")), **sub})]


def _last_message(p: dict, sub: dict) -> list[Event]:
    text = p.get("last_assistant_message")
    return [("agent_text", {"text": cut(text, MAX_TEXT), **sub})] if isinstance(text, str) and text.strip() else []


def _stop(p: dict, sub: dict, prompts: bool) -> list[Event]:
    return _last_message(p, sub) + [("session_state", {"state": "idle", **sub})]


def _subagent_event(state: str):
    def handle(p: dict, sub: dict, prompts: bool) -> list[Event]:
        if not sub:
            return [("claude_hook", {"hook": one_line(p["hook_event_name"], 100),
                                     "message": f"{one_line(p['hook_event_name'], 100)} without an agent_id"})]
        said = _last_message(p, sub) if state == "done" else []
        return said + [("session_subagent", {"agent_id": sub["agent_id"], "agent_type": sub["agent_type"],
                                             "state": state})]
    return handle


def _session_end(p: dict, sub: dict, prompts: bool) -> list[Event]:
    return [("session_ended", {"reason": name(p.get("reason"))})]


def _compact(p: dict, sub: dict, prompts: bool) -> list[Event]:
    trigger = name(p.get("trigger"))
    return [("claude_hook", {"hook": "PreCompact", "message": "compacting the conversation"
                             + (f" ({trigger})" if trigger else "")})]


MAPPERS = {
    "SessionStart": _session_start,
    "UserPromptSubmit": _prompt,
    "PreToolUse": _pre_tool,
    "PostToolUse": _post_tool(False),
    "PostToolUseFailure": _post_tool(True),
    "PermissionRequest": _permission,
    "Notification": _notification,
    "Stop": _stop,
    "SubagentStart": _subagent_event("running"),
    "SubagentStop": _subagent_event("done"),
    "SessionEnd": _session_end,
    "PreCompact": _compact,
}
# The hook events `loop hooks install` wires (every one mapped above).
HOOK_EVENTS = tuple(MAPPERS)


class Repeats:
    """Agents going in circles in hook sessions: each payload comes in its own request, so the streak
    of identical consecutive tool calls (tool and input's signature, per session and subagent) is kept
    here, between requests, by the sidecar worker that reads them. ``see`` gives the ``agent_looping``
    (a warning: loop does not own an interactive session's process) when a streak reaches LOOP_AFTER."""

    def __init__(self, keep: int = 10_000, loop_after: int = LOOP_AFTER):
        self.loop_after = loop_after
        self.keep = keep
        self._streaks: OrderedDict[tuple[str, str | None], tuple[tuple[str, str | None], int]] = OrderedDict()

    def see(self, payload: Any, run: str, events: list[Event]) -> list[Event]:
        """``events`` of one PreToolUse payload, with an ``agent_looping`` after its call when it is the
        LOOP_AFTER-th identical one in a row of its agent; other payloads' events as they are."""
        if not isinstance(payload, dict) or payload.get("hook_event_name") != "PreToolUse":
            return events
        call = next((d for t, d in events if t == "tool_call"), None)
        if call is None:
            return events
        agent = name(payload.get("agent_id"))
        this = (call["tool"], signature(payload.get("tool_input")))
        last = self._streaks.pop((run, agent), None)
        repeats = last[1] + 1 if last is not None and last[0] == this else 1
        self._streaks[(run, agent)] = (this, repeats)
        while len(self._streaks) > self.keep:
            self._streaks.popitem(last=False)
        if repeats > 1:                          # as the agent formats mark a call that repeats the last
            call["repeat"] = repeats
        if repeats != self.loop_after:
            return events
        looping = {"tool": call["tool"], "summary": call["summary"], "repeats": repeats,
                   **({"parent_id": agent} if agent else {})}
        return events + [("agent_looping", looping)]
