"""Google's Gemini CLI ``gemini -p … --output-format stream-json``, as loop events.

One JSON object a line: ``init`` (session_id, model), ``message`` (role ``user`` or ``assistant``,
``content``, ``delta`` while it streams), ``tool_use`` (tool_name, tool_id, parameters),
``tool_result`` (tool_id, status ``success``/``error``, output, error), ``error`` (severity,
message) and a final ``result`` (status, error, ``stats``: tokens, duration, tool calls). Gemini
reports no cost: ``cost_usd`` is null, never 0.
"""
from __future__ import annotations

from typing import Any

from loopstream.core.formats.common import (
    AgentParser,
    Event,
    count,
    name,
    one_line,
    result_summary,
    signature,
    tool_summary,
)


class GeminiParser(AgentParser):
    HANDLERS = {"init": "_init", "message": "_message", "tool_use": "_tool_use", "tool_result": "_result_of_tool",
                "error": "_error", "result": "_result"}

    @staticmethod
    def detect(obj: dict) -> bool:
        return obj.get("type") == "init" and "session_id" in obj

    def _init(self, obj: dict) -> list[Event]:
        return self.flush() + [("agent_init", self._data(model=name(obj.get("model")),
                                                         session_id=name(obj.get("session_id"))))]

    def _message(self, obj: dict) -> list[Event] | None:
        if obj.get("role") == "user":
            return []
        if obj.get("role") != "assistant" or not isinstance(obj.get("content"), str):
            return None
        self._add_text(obj["content"])
        return []

    def _tool_use(self, obj: dict) -> list[Event]:
        tool = name(obj.get("tool_name")) or "?"
        return self._tool_call(tool, name(obj.get("tool_id")) or "", tool_summary(tool, obj.get("parameters")),
                               signature(obj.get("parameters")))

    def _result_of_tool(self, obj: dict) -> list[Event]:
        error: Any = obj.get("error") if isinstance(obj.get("error"), dict) else {}
        is_error = obj.get("status") == "error" or bool(error)
        summary = one_line(error.get("message")) if error.get("message") else result_summary(obj.get("output"))
        return self._tool_result(name(obj.get("tool_id")) or "", is_error, summary)

    def _error(self, obj: dict) -> list[Event]:
        severity = name(obj.get("severity")) or "error"
        return self.flush() + [self._output(f"gemini {severity}: {one_line(obj.get('message'))}", "stderr")]

    def _result(self, obj: dict) -> list[Event]:
        stats: Any = obj.get("stats") if isinstance(obj.get("stats"), dict) else {}
        error: Any = obj.get("error") if isinstance(obj.get("error"), dict) else {}
        status = name(obj.get("status"))
        is_error = (status is not None and status != "success") or bool(error)
        said = [self._output(f"gemini error: {one_line(error['message'])}", "stderr")] if error.get("message") else []
        return self.flush() + said + [("agent_result", self._data(
            is_error=is_error, subtype=name(error.get("type")) or status, num_turns=None,
            duration_ms=count(stats.get("duration_ms")), cost_usd=None,
            input_tokens=count(stats.get("input_tokens")), output_tokens=count(stats.get("output_tokens")),
            cache_read_input_tokens=count(stats.get("cached"))))]
