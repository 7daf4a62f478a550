"""The pieces of a trace as otlp/trace_map.py builds them (pure): span records, open spans, a run's
trace, the bounds every attribute value is held to, and ids derived from run and event ids."""
from __future__ import annotations

import hashlib
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

ATTR_TEXT = 2000          # characters of an event's text kept in an attribute
NAME_TEXT = 100           # characters of a text kept in a span's name
MAX_NUMBER = 1e15         # a number beyond this is not exported
RUNS = 2000               # runs whose open spans are kept (ended ones go first)
CALLS = 1000              # tool calls remembered per run (a subagent's calls find their Task call)
OPEN_TOOLS = 500          # tool spans open at once per run (the oldest are ended as unfinished)
END_TYPES = frozenset({"task_completed", "task_stopped", "task_interrupted", "session_ended"})
AttrValue = str | bool | int | float


@dataclass
class SpanRecord:
    """A finished span, ready to send: ids as integers (128-bit trace, 64-bit spans), times in ns."""

    trace_id: int
    span_id: int
    parent_id: int | None
    name: str
    kind: str                      # OpenInference's span kind: CHAIN, AGENT or TOOL
    start_ns: int
    end_ns: int
    attributes: dict[str, AttrValue]
    error: str | None = None       # the span's status: ERROR with this message, else OK
    run: str = ""
    end_key: tuple[int, int] = (0, 0)   # the id (epoch, seq) of the event that ended it


@dataclass
class Open:
    """A span begun and not yet ended."""

    span_id: int
    parent_id: int | None
    name: str
    kind: str
    start: float
    attrs: dict[str, AttrValue] = field(default_factory=dict)
    error: str | None = None

    @property
    def at(self) -> tuple[int, float]:
        """What a child span needs of its parent: its id, and its start (a child never starts before)."""
        return self.span_id, self.start


@dataclass
class Trace:
    """One run's trace while it is written: its open spans and what its root says at the end."""

    run: str
    trace_id: int
    root: Open
    ended: bool = False
    last: tuple[int, int] = (0, 0)   # the id (epoch, seq) of the last event fed: one at or below it is ignored
    session: bool = False
    stories: dict[str, Open] = field(default_factory=dict)        # story id -> its open attempt
    steps: dict[str, float] = field(default_factory=dict)         # story id -> when its last step ended
    errors: dict[str, str] = field(default_factory=dict)          # story id -> its last error
    agents: dict[str, Open] = field(default_factory=dict)         # story id ("" = the run's) -> its agent
    tools: OrderedDict[str, tuple[str, Open]] = field(default_factory=OrderedDict)   # call id -> (agent, span)
    calls: OrderedDict[str, tuple[int, float]] = field(default_factory=OrderedDict)  # call id -> its span .at
    turn: Open | None = None
    turns: int = 0
    subagents: dict[str, Open] = field(default_factory=dict)      # a session's agent_id -> its span
    outcomes: dict[str, int] = field(default_factory=dict)        # story status -> how many
    cost: float | None = None
    tokens: list[float] = field(default_factory=lambda: [0, 0])  # input, output


# -- the bounds: every value an attribute can hold ----------------------------------------------
def text(value: Any, limit: int = ATTR_TEXT) -> str:
    """Any event value as attribute text, cut to ``limit`` characters (never None: "" for nothing)."""
    if isinstance(value, str):
        s = value
    elif value is None:
        s = ""
    else:
        s = repr(value) if not isinstance(value, (dict, list)) else str(value)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def number(value: Any) -> int | float | None:
    """A finite number within ±MAX_NUMBER (never a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if abs(value) <= MAX_NUMBER else None


def put(attrs: dict[str, AttrValue], key: str, value: Any) -> None:
    """Set an attribute when the value is one: text cut, numbers bounded, None and others left out."""
    if isinstance(value, bool):
        attrs[key] = value
    elif isinstance(value, (int, float)):
        n = number(value)
        if n is not None:
            attrs[key] = n
    elif isinstance(value, str):
        attrs[key] = text(value)


def one_line(value: Any, limit: int = NAME_TEXT) -> str:
    return " ".join(text(value, limit * 2).split())[:limit]


def _hash(*parts: str) -> bytes:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).digest()


def trace_id_of(run: str, event_id: str) -> int:
    """The trace of the run whose trace ``event_id`` started (never 0, which means 'no trace')."""
    return int.from_bytes(_hash("trace", run, event_id)[:16], "big") or 1


def span_id_of(trace_id: int, what: str, key: str) -> int:
    """A span of that trace, named by what it is and the event that opened it (never 0)."""
    return int.from_bytes(_hash("span", format(trace_id, "032x"), what, key)[:8], "big") or 1


def event_key(event_id: Any) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{1,20})-(\d{1,20})", event_id) if isinstance(event_id, str) else None
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def nanos(ts: Any) -> int:
    n = number(ts)
    return int(n * 1e9) if n is not None and n >= 0 else 0


@dataclass
class Ev:
    run: str
    type: str
    data: dict
    ts: float
    id: str
    key: tuple[int, int]

    def story(self) -> str | None:
        sid = self.data.get("story_id")
        return None if sid is None else text(sid, 200)


def finish(tr: Trace, span: Open, ev: Ev, out: list[SpanRecord], error: str | None = None) -> None:
    """End ``span`` at the event's time (never before it began) and add it to ``out``."""
    err = error if error is not None else span.error
    start = nanos(span.start)
    end = max(nanos(ev.ts), start)
    out.append(SpanRecord(tr.trace_id, span.span_id, span.parent_id, span.name, span.kind, start, end,
                          {**span.attrs, "openinference.span.kind": span.kind}, text(err) if err else None,
                          tr.run, ev.key))


def begin(tr: Trace, what: str, ev: Ev, parent: tuple[int, float], name: str, kind: str,
          start: float | None = None) -> Open:
    """A span under ``parent`` (its ``.at``), from ``start`` (the event's time unless said), never
    before its parent began: an untrusted duration cannot put a check in 1970."""
    parent_id, parent_start = parent
    begun = ev.ts if start is None else start
    return Open(span_id_of(tr.trace_id, what, ev.id), parent_id, name, kind, max(begun, parent_start))


