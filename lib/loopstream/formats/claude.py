"""Claude Code's stream-json (``claude -p … --output-format stream-json --verbose``), as loop events.

One JSON object a line: ``system``/``init`` (model, session), ``assistant`` messages whose content
holds ``text`` and ``tool_use`` blocks, ``user`` messages holding the ``tool_result`` blocks, and a
final ``result`` (turns, duration, cost, usage). Partial-message deltas (``stream_event``) repeat
what the full message says and are understood as nothing to show.
"""
from __future__ import annotations

from typing import Any

from .common import AgentParser, Event, cost, count, name, result_summary, tool_summary


class ClaudeParser(AgentParser):
    HANDLERS = {"system": "_system", "assistant": "_assistant", "user": "_user", "result": "_result",
                "stream_event": "_silent"}

    @staticmethod
    def detect(obj: dict) -> bool:
        return obj.get("type") == "system" and obj.get("subtype") == "init"

    def _system(self, obj: dict) -> list[Event] | None:
        if obj.get("subtype") != "init":
            return None
        return self.flush() + [("agent_init", self._data(model=name(obj.get("model")),
                                                         session_id=name(obj.get("session_id"))))]

    def _assistant(self, obj: dict) -> list[Event] | None:
        content = _content(obj)
        if content is None:
            return None
        events: list[Event] = []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                self._add_text(block["text"])
            elif kind == "tool_use":
                tool = name(block.get("name")) or "?"
                events += self._tool_call(tool, name(block.get("id")) or "", tool_summary(tool, block.get("input")))
        return events

    def _user(self, obj: dict) -> list[Event] | None:
        content = _content(obj)
        if content is None:
            return [] if isinstance((obj.get("message") or {}).get("content"), str) else None
        events: list[Event] = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                events += self._tool_result(name(block.get("tool_use_id")) or "", block.get("is_error") is True,
                                            result_summary(block.get("content")))
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
