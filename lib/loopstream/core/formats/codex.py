"""OpenAI Codex CLI's ``codex exec --json``, as loop events.

One JSON object a line: ``thread.started`` (the thread id), ``turn.started``, ``item.started`` /
``item.updated`` / ``item.completed`` carrying an ``item`` with its ``type`` — ``agent_message``
(text), ``reasoning``, ``command_execution`` (command, aggregated_output, exit_code, status),
``file_change`` (changes: path and kind), ``mcp_tool_call`` (server, tool, arguments, result,
error), ``web_search`` (query), ``todo_list``, ``error`` — then ``turn.completed`` with ``usage``
(input, cached input and output tokens), ``turn.failed`` with an ``error``, or a top-level
``error``. Codex reports no cost: ``cost_usd`` is null, never 0. No model name is printed either.

A tool item becomes a ``tool_call`` when it starts and a ``tool_result`` when it completes (a
``file_change`` is printed only completed: both at once); an item completed twice gives its result
once. Reasoning, to-do lists and updates in flight are understood and not shown.
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

TOOL_ITEMS = {"command_execution", "mcp_tool_call", "web_search", "file_change", "collab_tool_call"}
QUIET_ITEMS = {"reasoning", "todo_list", "plan"}    # understood, nothing to show


class CodexParser(AgentParser):
    HANDLERS = {"thread.started": "_thread", "turn.started": "_turn_started", "item.started": "_item_started",
                "item.updated": "_silent", "item.completed": "_item_completed", "turn.completed": "_turn_completed",
                "turn.failed": "_turn_failed", "error": "_error", "item.plan.delta": "_silent"}

    def __init__(self, story_id: str | None = None, **kw: Any):
        super().__init__(story_id, **kw)
        self.turns = 0
        self._completed: dict[str, None] = {}      # ids of completed items, oldest first

    @staticmethod
    def detect(obj: dict) -> bool:
        return obj.get("type") == "thread.started"

    def _thread(self, obj: dict) -> list[Event]:
        return self.flush() + [("agent_init", self._data(model=None, session_id=name(obj.get("thread_id"))))]

    def _turn_started(self, obj: dict) -> list[Event]:
        self.turns += 1
        return []

    def _item_started(self, obj: dict) -> list[Event] | None:
        item = _item(obj)
        if item is None:
            return None
        if item.get("type") in TOOL_ITEMS - {"file_change"}:
            tool, summary = _tool(item)
            return self._tool_call(tool, name(item.get("id")) or "", summary, _signature(item))
        return []

    def _item_completed(self, obj: dict) -> list[Event] | None:
        item = _item(obj)
        if item is None:
            return None
        kind, iid = item.get("type"), name(item.get("id")) or ""
        if iid and iid in self._completed:      # completed twice: its result is given once
            return []
        if iid:
            self._completed[iid] = None
            while len(self._completed) > 4096:
                del self._completed[next(iter(self._completed))]
        if kind == "agent_message" and isinstance(item.get("text"), str):
            self._add_text(item["text"])
            return []
        if kind == "error":
            return self.flush() + [self._output(f"codex error: {one_line(item.get('message'))}", "stderr")]
        if kind in TOOL_ITEMS:
            return self._finished_tool(item, iid)
        if kind in QUIET_ITEMS:
            return []
        return None                              # an item type from the future: shown as output

    def _finished_tool(self, item: dict, iid: str) -> list[Event]:
        tool, summary = _tool(item)
        events = self._tool_call(tool, iid, summary, _signature(item)) if iid not in self._tools else []
        failed = item.get("status") in ("failed", "declined") or bool(item.get("error")) or \
            (isinstance(item.get("exit_code"), int) and item["exit_code"] != 0)
        return events + self._tool_result(iid, failed, _result(item))

    def _turn_completed(self, obj: dict) -> list[Event]:
        return self.flush() + [self._agent_result(obj, is_error=False, subtype="success")]

    def _turn_failed(self, obj: dict) -> list[Event]:
        error: Any = obj.get("error") if isinstance(obj.get("error"), dict) else {}
        message = self._output(f"codex turn failed: {one_line(error.get('message'))}", "stderr")
        return self.flush() + [message, self._agent_result(obj, is_error=True, subtype="turn_failed")]

    def _error(self, obj: dict) -> list[Event]:
        return self.flush() + [self._output(f"codex error: {one_line(obj.get('message'))}", "stderr")]

    def _agent_result(self, obj: dict, is_error: bool, subtype: str) -> Event:
        usage: Any = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
        return ("agent_result", self._data(
            is_error=is_error, subtype=subtype, num_turns=self.turns or None, duration_ms=None, cost_usd=None,
            input_tokens=count(usage.get("input_tokens")), output_tokens=count(usage.get("output_tokens")),
            cache_read_input_tokens=count(usage.get("cached_input_tokens"))))


def _item(obj: dict) -> dict | None:
    """The line's item when it is one (an object with a text type), else None: not understood."""
    item = obj.get("item")
    return item if isinstance(item, dict) and isinstance(item.get("type"), str) else None


def _tool(item: dict) -> tuple[str, str]:
    """A tool item's name and one-line summary, by the rules every format shares."""
    kind = item.get("type")
    if kind == "command_execution":
        return "shell", tool_summary("Bash", {"command": item.get("command")})
    if kind == "mcp_tool_call":
        tool = f"{name(item.get('server')) or 'mcp'}.{name(item.get('tool')) or '?'}"
        return tool, tool_summary(tool, item.get("arguments"))
    if kind == "collab_tool_call":             # a subagent: spawned, messaged, waited for, closed
        prompt = item.get("prompt") if isinstance(item.get("prompt"), str) else None
        agents = item["receiver_thread_ids"] if isinstance(item.get("receiver_thread_ids"), list) else []
        return f"agent.{name(item.get('tool')) or '?'}", one_line(prompt or ", ".join(map(str, agents[:3])))
    if kind == "web_search":
        return "web_search", tool_summary("WebSearch", {"query": item.get("query")})
    changes: list = item["changes"] if isinstance(item.get("changes"), list) else []
    parts = [f"{c.get('kind')} {c.get('path')}" for c in changes[:5] if isinstance(c, dict)]
    return "apply_patch", one_line(", ".join(parts) + (" …" if len(changes) > 5 else ""))


def _signature(item: dict) -> str | None:
    """What makes two tool items the same call: their type and input (not their id, output or status)."""
    keys = ("command", "server", "tool", "arguments", "query", "changes")
    return signature({"type": item.get("type"), **{k: item.get(k) for k in keys if k in item}})


def _result(item: dict) -> str:
    error = item.get("error")
    if isinstance(error, dict) and error.get("message"):
        return one_line(error["message"])
    if item.get("type") == "command_execution":
        out = result_summary(item.get("aggregated_output"))
        code = item.get("exit_code")
        return out or (f"exit {code}" if isinstance(code, int) else "")
    if item.get("type") == "mcp_tool_call" and isinstance(item.get("result"), dict):
        return result_summary(item["result"].get("content"))
    return one_line(item.get("status") or "")
