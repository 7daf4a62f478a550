"""Claude Code's stream-json (``claude -p … --output-format stream-json --verbose``), as loop events.

One JSON object a line: ``system``/``init`` (model, session), ``assistant`` messages whose content
holds ``text`` and ``tool_use`` blocks, ``user`` messages holding the ``tool_result`` blocks, and a
final ``result`` (turns, duration, cost, usage). Partial-message deltas (``stream_event``) repeat
what the full message says and are understood as nothing to show.

Subagents: a ``Task`` (now ``Agent``) tool call starts one; the messages it exchanges carry
``parent_tool_use_id`` (that call's id), so their events carry ``parent_id``. It ends with a
``system`` ``task_notification`` (status ``completed``, else failed), or, without one, with its
call's result — unless it runs in the background (``run_in_background``, or ``task_started`` says
``is_backgrounded``), whose call's result only says it was launched. The other ``system`` task lines
(``task_started``, ``task_progress``, ``task_updated``, ``background_tasks_changed``) are understood
and not shown. A ``parent_tool_use_id`` naming no known call is kept flat: the events go to the
agent itself, without ``parent_id``.
"""
from __future__ import annotations

from typing import Any

from loopstream.core.formats.common import (
    AgentParser,
    Event,
    cost,
    count,
    name,
    one_line,
    result_summary,
    signature,
    tool_summary,
)

SUBAGENT_TOOLS = ("Task", "Agent")       # the tool that starts a subagent (renamed Agent in 2.x)
TASK_LINES = ("task_started", "task_progress", "task_updated", "task_notification", "background_tasks_changed")


# system lines understood as nothing to show: thinking-token estimates, and loop's own hooks running.
QUIET_SYSTEM = {"thinking_tokens", "hook_started", "hook_response"}


class ClaudeParser(AgentParser):
    HANDLERS = {"system": "_system", "assistant": "_assistant", "user": "_user", "result": "_result",
                "stream_event": "_silent"}

    @staticmethod
    def detect(obj: dict) -> bool:
        """``system``/``init`` — or another ``system`` line of a session, which comes first when the user
        has SessionStart hooks (``hook_started``)."""
        return obj.get("type") == "system" and (obj.get("subtype") == "init" or "session_id" in obj)

    def _system(self, obj: dict) -> list[Event] | None:
        subtype = obj.get("subtype")
        if not isinstance(subtype, str):
            return None
        if subtype in TASK_LINES:
            return self._task_line(obj)
        if subtype in QUIET_SYSTEM:
            return []
        if subtype == "permission_denied":
            return self.flush() + [self._output(f"permission denied: {name(obj.get('tool_name')) or '?'}: "
                                                f"{one_line(obj.get('message'))}", "stderr")]
        if subtype != "init":
            return None
        return self.flush() + [("agent_init", self._data(model=name(obj.get("model")),
                                                         session_id=name(obj.get("session_id"))))]

    def _task_line(self, obj: dict) -> list[Event]:
        """A subagent's life as Claude Code reports it: started in the background or not, ended."""
        tid = name(obj.get("tool_use_id")) or ""
        sub = self._subagents.get(tid)
        if sub is not None and obj.get("subtype") == "task_started" and obj.get("is_backgrounded") is True:
            sub["background"] = True
        if obj.get("subtype") == "task_notification" and isinstance(obj.get("status"), str):
            return self._subagent_done(tid, obj["status"] != "completed", one_line(obj.get("summary") or ""))
        return []

    def _assistant(self, obj: dict) -> list[Event] | None:
        content = _content(obj)
        if content is None:
            return None
        events = self._enter(obj.get("parent_tool_use_id"))
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                self._add_text(block["text"])
            elif kind == "tool_use":
                events += self._tool_use(block)
        return events

    def _tool_use(self, block: dict) -> list[Event]:
        tool, tid, inp = name(block.get("name")) or "?", name(block.get("id")) or "", block.get("input")
        if tool not in SUBAGENT_TOOLS or not isinstance(inp, dict):
            return self._tool_call(tool, tid, tool_summary(tool, inp), signature(inp))
        self._subagent_started(tid, inp.get("run_in_background") is True)
        return self._tool_call(tool, tid, tool_summary(tool, inp), signature(inp),
                               subagent_type=name(inp.get("subagent_type")), description=name(inp.get("description")))

    def _user(self, obj: dict) -> list[Event] | None:
        content = _content(obj)
        if content is None:
            message = obj.get("message")
            return [] if isinstance(message, dict) and isinstance(message.get("content"), str) else None
        events = self._enter(obj.get("parent_tool_use_id"))
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                tid, failed = name(block.get("tool_use_id")) or "", block.get("is_error") is True
                summary = result_summary(block.get("content"))
                events += self._tool_result(tid, failed, summary)
                if not self._subagents.get(tid, {"background": True})["background"]:
                    events += self._subagent_done(tid, failed, summary)   # no task_notification came first
        return events

    def _result(self, obj: dict) -> list[Event]:
        usage: Any = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
        subtype = name(obj.get("subtype"))
        is_error = obj.get("is_error") is True or (subtype or "").startswith("error")
        spent = cost(obj.get("total_cost_usd"))
        if spent is None:
            spent = cost(obj.get("cost_usd"))      # older Claude Code versions
        return self.flush() + [("agent_result", self._data(
            is_error=is_error, subtype=subtype, num_turns=count(obj.get("num_turns")),
            duration_ms=count(obj.get("duration_ms")), cost_usd=spent,
            input_tokens=count(usage.get("input_tokens")), output_tokens=count(usage.get("output_tokens")),
            cache_read_input_tokens=count(usage.get("cache_read_input_tokens")),
            cache_creation_input_tokens=count(usage.get("cache_creation_input_tokens"))))]


def _content(obj: dict) -> list | None:
    message = obj.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return content if isinstance(content, list) else None
