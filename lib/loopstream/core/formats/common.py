"""What every agent format shares (pure: no I/O, no clock): the event vocabulary, the bounds, the
summary rules, and ``AgentParser``, the shape each format's parser takes.

A parser is fed one line at a time and returns the loop events that line means, as ``(type, data)``
pairs: ``agent_init``, ``agent_text``, ``tool_call``, ``tool_result``, ``agent_result``,
``agent_looping`` (the same tool call again and again), ``subagent_completed``, and ``output`` for
every line it does not understand (another type, a future shape, not JSON,
truncated): nothing an agent prints is dropped, and nothing it prints can raise. Every string taken
from a line is cut to a bounded size and every number is checked to be finite and in range, so an
event built here is always small and valid whatever the agent printed. ``LineSplitter`` cuts bytes
into lines with a bound on the length of one line, for callers reading a raw pipe.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

MAX_TEXT = 2000          # characters of one agent_text event (coalesced text is cut here)
IDLE_FLUSH_S = 1.0       # held assistant text is flushed after this much quiet (timed by the caller: no clock here)
MAX_SUMMARY = 200        # characters of a tool_call / tool_result summary
MAX_NAME = 100           # characters of a tool name, model, session id
MAX_OUTPUT_LINE = 16_000  # characters of one not-understood line passed on as output
MAX_LINE_BYTES = 1 << 20  # a longer line is cut (its rest discarded) before parsing
MAX_TRACKED_TOOLS = 4096  # tool ids remembered to name their results
MAX_COUNT = 10 ** 12     # bound of turns, tokens, milliseconds
MAX_COST = 1_000_000.0   # dollars; anything beyond is not a cost but garbage
LOOP_AFTER = 3           # the same tool call this many times in a row is an agent going in circles
MAX_SUBAGENTS = 1000     # subagents (Task calls) remembered to nest their lines

SPACE = re.compile(r"\s+")
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]")  # view.py's too
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

Event = tuple[str, dict]


def cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters; a cut is marked so a reader knows there was more."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"… [cut: {len(text) - limit} more characters]"


def one_line(value: Any, limit: int = MAX_SUMMARY) -> str:
    """A value as one short line: control characters out, whitespace runs as one space."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    text = SPACE.sub(" ", CONTROL.sub("", ANSI.sub("", text.replace("\n", " ")))).strip()
    if len(text) > limit:
        return text[:limit - 1] + "…"
    return text


def name(value: Any) -> str | None:
    return one_line(value, MAX_NAME) if isinstance(value, str) and value.strip() else None


def count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(min(MAX_COUNT, max(0, value)))


def cost(value: Any) -> float | None:
    """A reported cost in dollars, or None: a missing or nonsensical cost is unknown, never 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if value < 0 or value > MAX_COST:
        return None
    return float(value)


# -- tool summaries ---------------------------------------------------------------------

def _first_line(value: Any) -> str:
    text = value if isinstance(value, str) else ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[0] + (" …" if len(lines) > 1 else "") if lines else ""


def _path_and(primary: str, extra: str) -> Callable[[dict], str]:
    """Summary as ``input[primary]``, followed by ``in input[extra]`` when given."""
    def summarise(inp: dict) -> str:
        main = inp.get(primary)
        more = inp.get(extra)
        text = main if isinstance(main, str) else ""
        return f"{text} in {more}" if isinstance(more, str) and more else text
    return summarise


def _todos(inp: dict) -> str:
    todos = inp.get("todos")
    return f"{len(todos)} todos" if isinstance(todos, list) else ""


TOOL_SUMMARY: dict[str, Callable[[dict], str]] = {
    "Bash": lambda inp: _first_line(inp.get("command")),
    "Read": _path_and("file_path", ""),
    "Write": _path_and("file_path", ""),
    "Edit": _path_and("file_path", ""),
    "MultiEdit": _path_and("file_path", ""),
    "NotebookEdit": _path_and("notebook_path", ""),
    "Glob": _path_and("pattern", "path"),
    "Grep": _path_and("pattern", "path"),
    "LS": _path_and("path", ""),
    "WebFetch": _path_and("url", ""),
    "WebSearch": _path_and("query", ""),
    "Task": _path_and("description", ""),
    "Agent": _path_and("description", ""),
    "TodoWrite": _todos,
}
# For tools not in the table (MCP tools, future ones): the first of these that holds text.
SUMMARY_KEYS = ("command", "file_path", "absolute_path", "path", "dir_path", "pattern", "url", "query",
                "description", "title", "prompt", "name")


def tool_summary(tool: str, inp: Any) -> str:
    """One line a person understands for a tool call: the command, the path, the pattern…"""
    if not isinstance(inp, dict):
        return one_line(inp) if inp is not None else ""
    known = TOOL_SUMMARY.get(tool)
    text = known(inp) if known else ""
    if not text:
        text = next((inp[k] for k in SUMMARY_KEYS if isinstance(inp.get(k), str) and inp[k].strip()), "")
    if not text and inp:
        text = json.dumps(inp, ensure_ascii=False, sort_keys=True)
    return one_line(text)


def signature(value: Any) -> str | None:
    """A tool input's canonical JSON (sorted keys, compact), as a short digest: two calls are the same
    call when their tool and signature are. None when it cannot be written (nested too deep)."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    except (ValueError, TypeError, RecursionError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def result_text(content: Any) -> str:
    """A tool_result's content (a string, or a list of text and other blocks) as plain text."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return "" if content is None else one_line(content)
    parts = []
    for item in content[:100]:
        if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
            parts.append(item["text"][:MAX_LINE_BYTES])
        elif isinstance(item, dict) and isinstance(item.get("type"), str):
            parts.append(f"[{one_line(item['type'], 40)}]")
    return "\n".join(parts)


def result_summary(content: Any) -> str:
    """The first lines of a tool's result, cut to one summary line."""
    lines = [ln.strip() for ln in result_text(content).splitlines() if ln.strip()]
    text = " ⏎ ".join(lines[:2]) + (" …" if len(lines) > 2 else "")
    return one_line(text)


# -- the parser's shape ---------------------------------------------------------------------

class AgentParser:
    """Feed it an agent's lines; it returns the loop events they mean, in order.

    A format is a subclass: ``HANDLERS`` maps a line's ``type`` to the name of the method that turns
    the object into events (or returns None: not understood, shown as output), and ``detect(obj)``
    says whether a first line is this format's. Consecutive assistant text is held and coalesced into
    one ``agent_text`` until anything else happens or the caller calls ``flush()`` (at the end, or
    when the agent has been quiet a while). ``story_id`` goes into every event's data when set.

    Subagents: a format whose agent starts subagents registers each by the id of the call that started
    it (``_subagent_started``); a line that belongs to one is parsed after ``_enter(parent)``, and its
    events carry ``parent_id`` (that call's id). A parent naming no known call is kept flat.

    Going in circles: every tool call is compared with the same agent's (or subagent's) previous one
    by tool and ``signature`` (the input's canonical JSON); text and results between them do not
    matter. The second and later calls of a streak carry ``repeat`` (their place in it), and the
    ``loop_after``-th gives one ``agent_looping`` (``tool``, ``summary``, ``repeats``) per streak.
    """

    HANDLERS: dict[str, str] = {}

    def __init__(self, story_id: str | None = None, max_text: int = MAX_TEXT, loop_after: int = LOOP_AFTER):
        self.story_id = story_id
        self.max_text = max_text
        self.loop_after = max(2, loop_after)
        self._text: list[str] = []
        self._text_len = 0
        self._text_parent: str | None = None
        self._tools: OrderedDict[str, str] = OrderedDict()
        self._parent: str | None = None          # the subagent the line being parsed belongs to
        self._subagents: OrderedDict[str, dict] = OrderedDict()   # its call's id -> background, done
        self._streaks: OrderedDict[str | None, tuple[tuple[str, str], int]] = OrderedDict()
        self.lines = 0
        self.understood = 0

    @staticmethod
    def detect(obj: dict) -> bool:
        """True when ``obj``, an agent's first line, is this format's."""
        return False

    @property
    def pending_text(self) -> bool:
        return bool(self._text)

    def _data(self, **fields: Any) -> dict:
        data = {"story_id": self.story_id, **fields} if self.story_id is not None else fields
        if self._parent is not None:
            data["parent_id"] = self._parent
        return data

    def feed(self, line: str) -> list[Event]:
        """The events of one line (without its newline; a trailing newline is ignored)."""
        self.lines += 1
        self._parent = None
        line = line.rstrip("\r\n")
        if not line.strip():
            return []
        obj = parse_line(line)
        method = self.HANDLERS.get(str(obj.get("type"))) if obj is not None else None
        events = getattr(self, method)(obj) if method and obj is not None else None
        if events is None:                       # not understood: shown as it is
            self._parent = None
            return self.flush() + [self._output(line)]
        self.understood += 1
        return events

    def flush(self) -> list[Event]:
        """The coalesced text not yet emitted, as one ``agent_text`` (or nothing)."""
        if not self._text:
            return []
        text, total = "".join(self._text), self._text_len
        self._text, self._text_len = [], 0
        if total > self.max_text:
            text = text[:self.max_text] + f"… [cut: {total - self.max_text} more characters]"
        data = {"story_id": self.story_id, "text": text} if self.story_id is not None else {"text": text}
        if self._text_parent is not None:
            data["parent_id"] = self._text_parent
        return [("agent_text", data)]

    def _enter(self, parent: Any) -> list[Event]:
        """The line being parsed belongs to the subagent started by call ``parent`` (kept flat when no
        known call has that id); text held for another agent is sent first."""
        self._parent = parent if isinstance(parent, str) and parent in self._subagents else None
        return self.flush() if self._text and self._text_parent != self._parent else []

    def _output(self, line: str, stream: str = "stdout") -> Event:
        return ("output", self._data(stream=stream, text=cut(line, MAX_OUTPUT_LINE) + "\n"))

    def _add_text(self, text: str) -> None:
        if not self._text:
            self._text_parent = self._parent
        if self._text_len <= self.max_text:     # past the cut only the count grows
            self._text.append(text[: self.max_text + 1])
        self._text_len += len(text)

    def _tool_call(self, tool: str, tid: str, summary: str, sig: str | None = None, **extra: Any) -> list[Event]:
        """A tool call (after the text held before it); its id is remembered to name its result.
        ``sig`` is the input's ``signature`` (the summary stands in without one); ``extra`` fields
        go into the event as they are."""
        if tid:
            self._tools[tid] = tool
            while len(self._tools) > MAX_TRACKED_TOOLS:
                self._tools.popitem(last=False)
        repeats = self._repeat((tool, sig if sig is not None else summary))
        call = self._data(tool=tool, id=tid, summary=summary, **extra)
        if repeats > 1:
            call["repeat"] = repeats
        events = self.flush() + [("tool_call", call)]
        if repeats == self.loop_after:
            events.append(("agent_looping", self._data(tool=tool, summary=summary, repeats=repeats)))
        return events

    def _repeat(self, call: tuple[str, str]) -> int:
        """This call's place in its agent's streak of identical consecutive calls (1: a new one)."""
        last = self._streaks.pop(self._parent, None)
        repeats = last[1] + 1 if last is not None and last[0] == call else 1
        self._streaks[self._parent] = (call, repeats)
        while len(self._streaks) > MAX_SUBAGENTS:
            self._streaks.popitem(last=False)
        return repeats

    def _subagent_started(self, tid: str, background: bool) -> None:
        """Call ``tid`` started a subagent: lines naming it as their parent are its."""
        if tid:
            self._subagents[tid] = {"background": background, "done": False}
            while len(self._subagents) > MAX_SUBAGENTS:
                self._subagents.popitem(last=False)

    def _subagent_done(self, tid: str, failed: bool, summary: str) -> list[Event]:
        """One ``subagent_completed`` for a known subagent that had not ended (nothing otherwise)."""
        sub = self._subagents.get(tid)
        if sub is None or sub["done"]:
            return []
        sub["done"] = True
        data = {"story_id": self.story_id} if self.story_id is not None else {}
        return self.flush() + [("subagent_completed", {**data, "id": tid, "state": "failed" if failed else "done",
                                                       "summary": summary})]

    def _tool_result(self, tid: str, is_error: bool, summary: str, tool: str | None = None) -> list[Event]:
        """A tool's result, named by the call it answers (``?`` for an id no call had)."""
        known = self._tools.pop(tid, None)
        return self.flush() + [("tool_result", self._data(tool=tool or known or "?", id=tid, is_error=is_error,
                                                          summary=summary))]

    def _silent(self, obj: dict) -> list[Event]:
        """Understood, and nothing to show."""
        return []


def parse_line(line: str) -> dict | None:
    """A line as a JSON object, or None (not one, too long, nested too deep)."""
    if not line.lstrip().startswith("{") or len(line) > MAX_LINE_BYTES:
        return None
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


class LineSplitter:
    """Bytes in, complete text lines out, with a bound on one line's length.

    A line longer than ``max_bytes`` is cut there; the rest of it, up to its
    newline, is discarded (and counted in the cut mark), so a runaway agent
    cannot make the reader hold an unbounded line in memory.
    """

    def __init__(self, max_bytes: int = MAX_LINE_BYTES):
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._dropped = 0

    def feed(self, chunk: bytes) -> list[str]:
        lines: list[str] = []
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            self._take(piece)
            if nl < 0:
                return lines
            lines.append(self._line())
            start = nl + 1

    def close(self) -> list[str]:
        """The last line, when the input did not end with a newline."""
        return [self._line()] if self._buf or self._dropped else []

    def _take(self, piece: bytes) -> None:
        room = self.max_bytes - len(self._buf)
        if len(piece) > room:
            self._buf += piece[:max(0, room)]
            self._dropped += len(piece) - max(0, room)
        else:
            self._buf += piece

    def _line(self) -> str:
        text = bytes(self._buf).decode("utf-8", "replace")   # a newline never splits a UTF-8 character
        if self._dropped:
            text += f"… [cut: {self._dropped} more bytes]"
        self._buf.clear()
        self._dropped = 0
        return text
