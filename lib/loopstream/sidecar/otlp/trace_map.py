"""Runs as traces: events -> finished spans with deterministic ids (pure: no I/O, no clock, no SDK).

``Mapper.feed(event)`` folds one published event into its run's open spans and returns the spans
that event ended, as ``SpanRecord``s that otlp/traces_out.py hands to the OpenTelemetry SDK. The tree:

- one root per run (``openinference.span.kind`` CHAIN): task name, status, story counts, cost,
  tokens, the exit code of ``loop exec``; it ends with task_completed, task_stopped,
  task_interrupted (a reaped run) or session_ended;
- a CHAIN span per story attempt (id, title, attempt, status, reason), under it a CHAIN span per
  acceptance check (ac_completed / ac_failed) and verification command (verification_completed);
- an AGENT span per agent (model, session id, turns, cost, tokens: gen_ai.* and OpenInference's
  llm.*), under it a TOOL span per tool call (tool name, summary, error status); a subagent's calls
  (``parent_id``) nest under the Task call that started it;
- a Claude Code hook session (session_* events): the root is the session, each turn (a prompt to
  Stop) an AGENT span, subagents AGENT spans within it, tool calls TOOL spans.

Ids come from the run and event ids (sha256): the trace from the event that started the run's
trace, each span from the event that opened it. A sidecar that restarts folds the run's transcript
again (without sending) and carries on with the same ids; sending a span twice sends the same span.
An event whose id is at or below the last one fed for its run is ignored: fed twice (a transcript
read again) or late, it would otherwise end an attempt as failed and open a duplicate span.
Every text is cut to ATTR_TEXT characters; a number that is not finite and bounded is left out; a
span never starts before its parent (an untrusted duration_ms cannot put a check in 1970) nor ends
before it starts. Span times are the events' times.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from loopstream.sidecar.otlp.trace_parts import (
    ATTR_TEXT,
    CALLS,
    END_TYPES,
    NAME_TEXT,
    OPEN_TOOLS,
    RUNS,
    AttrValue,
    Ev,
    Open,
    SpanRecord,
    Trace,
    begin,
    event_key,
    finish,
    number,
    one_line,
    put,
    span_id_of,
    text,
    trace_id_of,
)

__all__ = ["ATTR_TEXT", "NAME_TEXT", "Mapper", "SpanRecord", "event_key"]


# -- the run --------------------------------------------------------------------------------------
def _task_started(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    d, a = ev.data, tr.root.attrs
    name = d.get("task_name") or d.get("command") or ev.run
    tr.root.name = f"run {one_line(name)}"
    for key, attr in (("task_id", "loop.task.id"), ("task_name", "loop.task.name"), ("command", "loop.command"),
                      ("story_count", "loop.stories.count")):
        put(a, attr, d.get(key))


def _run_ended(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    """The run is over: every span still open ends now, then the root (once, even if the run comes back)."""
    status = _run_status(tr, ev)
    for sid in list(tr.stories):
        _story_ends(tr, sid, ev, out, "cancelled" if status == "stopped" else status, None)
    _end_tools(tr, ev, out, None)
    for key in list(tr.agents):
        finish(tr, tr.agents.pop(key), ev, out)
    _end_turn(tr, ev, out)
    if tr.ended:
        return
    tr.ended = True
    a = tr.root.attrs
    put(a, "loop.status", status)
    put(a, "loop.exit_code", ev.data.get("exit_code"))
    put(a, "loop.reason", ev.data.get("reason"))
    for outcome, n in sorted(tr.outcomes.items()):
        put(a, f"loop.stories.{outcome}", n)
    _spent_attrs(a, tr.cost, tr.tokens)
    error = None
    if status == "failed":
        failed = tr.outcomes.get("failed", 0)
        code = number(ev.data.get("exit_code"))
        error = f"exit code {code}" if code is not None else f"{failed} stor{'y' if failed == 1 else 'ies'} failed"
    elif status == "interrupted":
        error = "interrupted" + (f": {text(ev.data.get('reason'))}" if ev.data.get("reason") else "")
    finish(tr, tr.root, ev, out, error)


def _run_status(tr: Trace, ev: Ev) -> str:
    explicit = ev.data.get("status")
    if ev.type == "task_stopped":
        return "stopped"
    if ev.type == "task_interrupted":
        return "interrupted"
    if ev.type == "session_ended" or explicit in ("passed", "failed", "stopped"):
        return explicit if explicit in ("passed", "failed", "stopped") else "passed"
    code = number(ev.data.get("exit_code"))
    return "failed" if tr.outcomes.get("failed") or (code is not None and code != 0) else "passed"


def _spent_attrs(a: dict[str, AttrValue], cost: float | None, tokens: list[float]) -> None:
    """Cost and tokens as the GenAI conventions (Langfuse) and OpenInference (Phoenix) name them."""
    if cost is not None:
        put(a, "gen_ai.usage.cost", cost)
        put(a, "llm.cost.total", cost)
    if tokens[0] or tokens[1]:
        put(a, "gen_ai.usage.input_tokens", int(tokens[0]))
        put(a, "gen_ai.usage.output_tokens", int(tokens[1]))
        put(a, "llm.token_count.prompt", int(tokens[0]))
        put(a, "llm.token_count.completion", int(tokens[1]))
        put(a, "llm.token_count.total", int(tokens[0] + tokens[1]))


# -- stories, checks, verification --------------------------------------------------------------
def _story_started(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    sid = ev.story() or "?"
    if sid in tr.stories:   # the attempt before this one ended without story_completed: it failed
        _story_ends(tr, sid, ev, out, "failed", None)
    d = ev.data
    span = tr.stories[sid] = begin(tr, "story", ev, tr.root.at, f"story {one_line(sid)}", "CHAIN")
    put(span.attrs, "loop.story.id", sid)
    put(span.attrs, "loop.story.title", d.get("title"))
    put(span.attrs, "loop.story.attempt", d.get("attempt"))
    put(span.attrs, "loop.story.priority", d.get("priority"))
    if isinstance(d.get("title"), str) and d["title"].strip():
        span.name = f"story {one_line(sid, 40)} {one_line(d['title'])}"
    tr.steps[sid] = ev.ts
    tr.errors.pop(sid, None)


def _story_ends(tr: Trace, sid: str, ev: Ev, out: list[SpanRecord], status: str, reason: Any) -> None:
    """A story's attempt is over: its agent and tools end with it."""
    span = tr.stories.pop(sid, None)
    agent = tr.agents.pop(sid, None)
    _end_tools(tr, ev, out, sid)
    if agent is not None:
        finish(tr, agent, ev, out)
    if span is None:
        return
    put(span.attrs, "loop.story.status", status)
    put(span.attrs, "loop.story.reason", reason)
    error = None
    if status == "failed":
        error = tr.errors.get(sid) or (f"failed: {text(reason)}" if reason else "failed")
    finish(tr, span, ev, out, error)


def _story_completed(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    sid, d = ev.story() or "?", ev.data
    status = str(d["status"]) if d.get("status") in ("passed", "failed", "skipped", "cancelled") else "passed"
    tr.outcomes[status] = tr.outcomes.get(status, 0) + 1
    if sid not in tr.stories:    # never started (skipped, cancelled): a span of no length says so
        tr.stories[sid] = begin(tr, "story", ev, tr.root.at, f"story {one_line(sid)}", "CHAIN")
        put(tr.stories[sid].attrs, "loop.story.id", sid)
    span = tr.stories[sid]
    put(span.attrs, "loop.story.attempts", d.get("attempts"))
    put(span.attrs, "loop.story.duration_ms", d.get("duration_ms"))
    _story_ends(tr, sid, ev, out, status, d.get("reason"))


def _error_occurred(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    sid = ev.story()
    if sid is not None:
        tr.errors[sid] = f"{text(ev.data.get('error_type'), 100)}: {text(ev.data.get('error_message'))}"


def _output(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    """The story's command ended (its final output): the checks that follow start from here."""
    sid = ev.story()
    if sid is not None and ev.data.get("final") is True:
        tr.steps[sid] = ev.ts
        if sid in tr.stories:
            put(tr.stories[sid].attrs, "loop.story.exit_code", ev.data.get("exit_code"))


EXITED = re.compile(r"exited (-?\d{1,6})")


def _step(tr: Trace, ev: Ev, out: list[SpanRecord], what: str, name: str, attrs: dict[str, Any],
          error: str | None) -> None:
    """A check or verification command of a story: from its start (its duration, else the story's
    previous step) to this event."""
    sid = ev.story()
    parent = tr.stories[sid].at if sid in tr.stories else tr.root.at
    ms = number(ev.data.get("duration_ms"))
    start = ev.ts - ms / 1000 if ms is not None and ms >= 0 else tr.steps.get(sid or "", ev.ts)
    span = begin(tr, what, ev, parent, name, "CHAIN", start)
    for key, value in attrs.items():
        put(span.attrs, key, value)
    if sid is not None:
        tr.steps[sid] = ev.ts
        if error is not None:      # what the story's span says when it fails
            tr.errors[sid] = f"{name}: {error}"
    finish(tr, span, ev, out, error)


def _check(passed: bool) -> Callable[[Trace, Ev, list[SpanRecord]], None]:
    def handle(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
        d = ev.data
        code = d.get("exit_code")
        if code is None and not passed:
            m = EXITED.search(text(d.get("error")))
            code = int(m.group(1)) if m else None
        attrs = {"loop.check.index": d.get("ac_index"), "loop.check.text": d.get("ac_text"),
                 "loop.check.status": "passed" if passed else "failed", "loop.check.exit_code": code}
        error = None if passed else text(d.get("error") or "failed")
        _step(tr, ev, out, "check", f"check {one_line(d.get('ac_text') or d.get('ac_index'))}", attrs, error)
    return handle


def _verification(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    d = ev.data
    passed = d.get("status") == "passed"
    attrs = {"loop.verification.name": d.get("name"), "loop.verification.command": d.get("command"),
             "loop.verification.status": "passed" if passed else "failed",
             "loop.verification.exit_code": d.get("exit_code")}
    error = None if passed else text(d.get("message") or f"exit code {d.get('exit_code')}")
    _step(tr, ev, out, "verify", f"verify {one_line(d.get('name') or d.get('command'))}", attrs, error)


# -- agents and their tool calls ------------------------------------------------------------------
def _agent(tr: Trace, ev: Ev) -> Open:
    """The agent an event belongs to: its story's (or the run's), begun now if none is open."""
    key = ev.story() or ""
    span = tr.agents.get(key)
    if span is None:
        parent = tr.stories[key].at if key in tr.stories else tr.root.at
        span = tr.agents[key] = begin(tr, "agent", ev, parent, "invoke_agent", "AGENT")
        put(span.attrs, "gen_ai.operation.name", "invoke_agent")
    return span


def _agent_init(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    key = ev.story() or ""
    if key in tr.agents and "gen_ai.request.model" in tr.agents[key].attrs:   # a second agent in the attempt
        _end_tools(tr, ev, out, key)
        finish(tr, tr.agents.pop(key), ev, out)
    span, d = _agent(tr, ev), ev.data
    model, session = d.get("model"), d.get("session_id")
    if isinstance(model, str) and model:
        span.name = f"invoke_agent {one_line(model)}"
        for attr in ("gen_ai.request.model", "gen_ai.response.model", "llm.model_name"):
            put(span.attrs, attr, model)
    for attr in ("gen_ai.conversation.id", "session.id"):
        put(span.attrs, attr, session)


def _agent_result(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    span, d = _agent(tr, ev), ev.data
    cost, tokens = _spent(tr, d)
    _spent_attrs(span.attrs, cost, tokens)
    put(span.attrs, "loop.agent.num_turns", d.get("num_turns"))
    put(span.attrs, "loop.agent.duration_ms", d.get("duration_ms"))
    if d.get("is_error") is True:
        span.error = f"the agent failed: {text(d.get('subtype') or 'error')}"
    key = ev.story() or ""
    _end_tools(tr, ev, out, key)
    finish(tr, tr.agents.pop(key), ev, out)


def _spent(tr: Trace, d: dict) -> tuple[float | None, list[float]]:
    """An agent's reported cost and tokens, added to the run's totals; (cost, [in, out]) of this report."""
    cost = number(d.get("cost_usd"))
    cost = cost if cost is not None and cost >= 0 else None
    if cost is not None:
        tr.cost = (tr.cost or 0) + cost
    tokens = [0.0, 0.0]
    for i, key in enumerate(("input_tokens", "output_tokens")):
        n = number(d.get(key))
        if n is not None and n >= 0:
            tokens[i] = n
            tr.tokens[i] += n
    return cost, tokens


def _agent_usage(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    """Claude Code's own telemetry (otlp/logs_in.py): counts for the run, and the turn or agent running."""
    cost, tokens = _spent(tr, ev.data)
    span = tr.turn if tr.session else tr.agents.get(ev.story() or "")
    if span is None:
        return
    before = number(span.attrs.get("gen_ai.usage.cost"))
    total_cost = (before or 0) + cost if cost is not None else before
    old = [number(span.attrs.get(k)) or 0 for k in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens")]
    _spent_attrs(span.attrs, total_cost, [old[0] + tokens[0], old[1] + tokens[1]])


def _tool_parent(tr: Trace, ev: Ev) -> tuple[int, float]:
    """A subagent's call goes under the call that started it; a session's under its subagent or turn."""
    parent = ev.data.get("parent_id")
    if isinstance(parent, str) and parent in tr.calls:
        return tr.calls[parent]
    if tr.session:
        agent = ev.data.get("agent_id")
        if isinstance(agent, str) and agent in tr.subagents:
            return tr.subagents[agent].at
        return _turn(tr, ev).at
    return _agent(tr, ev).at


def _tool_call(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    d = ev.data
    tool = one_line(d.get("tool") or "?")
    span = begin(tr, "tool", ev, _tool_parent(tr, ev), f"execute_tool {tool}", "TOOL")
    call = text(d.get("id"), 200) or ev.id
    for attr, value in (("gen_ai.operation.name", "execute_tool"), ("gen_ai.tool.name", tool), ("tool.name", tool),
                        ("gen_ai.tool.call.id", d.get("id")), ("loop.tool.summary", d.get("summary")),
                        ("input.value", d.get("summary")), ("loop.tool.repeat", d.get("repeat")),
                        ("loop.tool.subagent_type", d.get("subagent_type")),
                        ("loop.tool.description", d.get("description")), ("loop.agent_id", d.get("agent_id"))):
        put(span.attrs, attr, value)
    old = tr.tools.pop(call, None)
    if old is not None:
        finish(tr, old[1], ev, out)
    tr.tools[call] = (ev.story() or "", span)
    tr.calls[call] = span.at
    while len(tr.calls) > CALLS:
        tr.calls.popitem(last=False)
    while len(tr.tools) > OPEN_TOOLS:
        finish(tr, tr.tools.popitem(last=False)[1][1], ev, out, "unfinished")


def _tool_result(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    d = ev.data
    found = tr.tools.pop(text(d.get("id"), 200), None)
    if found is None:
        return
    span = found[1]
    put(span.attrs, "output.value", d.get("summary"))
    put(span.attrs, "loop.tool.result", d.get("summary"))
    error = None
    if d.get("is_error") is True:
        put(span.attrs, "error.type", "tool_error")
        error = text(d.get("summary")) or "the tool failed"
    finish(tr, span, ev, out, error)


def _end_tools(tr: Trace, ev: Ev, out: list[SpanRecord], agent: str | None) -> None:
    """End the tool calls still open (of one agent, or all): their agent or story ended meanwhile."""
    for call, (owner, span) in list(tr.tools.items()):
        if agent is None or owner == agent:
            del tr.tools[call]
            put(span.attrs, "loop.tool.unfinished", True)
            finish(tr, span, ev, out)


def _agent_looping(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    span = _agent(tr, ev)
    put(span.attrs, "loop.agent.looping", f"{one_line(ev.data.get('tool'))} {one_line(ev.data.get('summary'))}")
    put(span.attrs, "loop.agent.looping_repeats", ev.data.get("repeats"))


# -- hook sessions: the session is the run, a turn (a prompt to its Stop) an agent span ------------
def _session_started(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    tr.session = True
    d, a = ev.data, tr.root.attrs
    tr.root.name = f"session {one_line(d.get('project') or ev.run)}"
    put(a, "session.id", ev.run)
    put(a, "gen_ai.conversation.id", ev.run)
    for key in ("cwd", "project", "source", "model"):
        put(a, f"loop.session.{key}", d.get(key))


def _turn(tr: Trace, ev: Ev) -> Open:
    if tr.turn is None:
        tr.session = True
        tr.turns += 1
        tr.turn = begin(tr, "turn", ev, tr.root.at, f"turn {tr.turns}", "AGENT")
        put(tr.turn.attrs, "gen_ai.operation.name", "invoke_agent")
        put(tr.turn.attrs, "loop.turn", tr.turns)
        put(tr.turn.attrs, "session.id", tr.run)
        model = tr.root.attrs.get("loop.session.model")
        if isinstance(model, str):
            put(tr.turn.attrs, "gen_ai.request.model", model)
            put(tr.turn.attrs, "llm.model_name", model)
    return tr.turn


def _end_turn(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    for agent in list(tr.subagents):
        finish(tr, tr.subagents.pop(agent), ev, out)
    if tr.turn is not None:
        _end_tools(tr, ev, out, None)
        finish(tr, tr.turn, ev, out)
        tr.turn = None


def _session_state(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    d, state = ev.data, ev.data.get("state")
    if state == "working" and "prompt_length" in d:     # a prompt: a new turn
        _end_turn(tr, ev, out)
        turn = _turn(tr, ev)
        put(turn.attrs, "loop.turn.prompt_length", d.get("prompt_length"))
        put(turn.attrs, "input.value", d.get("prompt"))
    elif state == "waiting_for_input" and tr.turn is not None:
        waits = number(tr.turn.attrs.get("loop.turn.waits")) or 0
        put(tr.turn.attrs, "loop.turn.waits", int(waits) + 1)
        put(tr.turn.attrs, "loop.turn.waiting_for", d.get("waiting_for"))
    elif state == "idle" and d.get("agent_id") is None:   # the main agent's Stop: the turn is over
        _end_turn(tr, ev, out)


def _agent_text(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    if tr.session and tr.turn is not None and ev.data.get("agent_id") is None:
        put(tr.turn.attrs, "output.value", ev.data.get("text"))


def _session_subagent(tr: Trace, ev: Ev, out: list[SpanRecord]) -> None:
    d = ev.data
    agent = d.get("agent_id")
    if not isinstance(agent, str):
        return
    agent = text(agent, 200)
    if d.get("state") == "done":
        span = tr.subagents.pop(agent, None)
        if span is not None:
            finish(tr, span, ev, out)
        return
    if agent not in tr.subagents:
        kind = one_line(d.get("agent_type") or "subagent")
        span = tr.subagents[agent] = begin(tr, "subagent", ev, _turn(tr, ev).at, f"invoke_agent {kind}", "AGENT")
        put(span.attrs, "gen_ai.operation.name", "invoke_agent")
        put(span.attrs, "gen_ai.agent.id", agent)
        put(span.attrs, "gen_ai.agent.name", d.get("agent_type"))


HANDLERS: dict[str, Callable[[Trace, Ev, list[SpanRecord]], None]] = {
    "task_started": _task_started,
    "story_started": _story_started,
    "story_completed": _story_completed,
    "ac_completed": _check(True),
    "ac_failed": _check(False),
    "verification_completed": _verification,
    "error_occurred": _error_occurred,
    "output": _output,
    "agent_init": _agent_init,
    "tool_call": _tool_call,
    "tool_result": _tool_result,
    "agent_result": _agent_result,
    "agent_usage": _agent_usage,
    "agent_looping": _agent_looping,
    "agent_text": _agent_text,
    "session_started": _session_started,
    "session_state": _session_state,
    "session_subagent": _session_subagent,
    **{t: _run_ended for t in END_TYPES},
}


# -- the mapper ---------------------------------------------------------------------------------
class Mapper:
    """Each run's trace, built from its events in order; ``feed`` returns the spans an event ended."""

    def __init__(self) -> None:
        self.traces: OrderedDict[str, Trace] = OrderedDict()

    def known(self, run: str) -> bool:
        return run in self.traces

    def last(self, run: str) -> tuple[int, int]:
        """The id of the last event of ``run`` fed ((0, 0): none)."""
        tr = self.traces.get(run)
        return tr.last if tr is not None else (0, 0)

    def feed(self, event: dict) -> list[SpanRecord]:
        run, etype = event.get("run"), event.get("type")
        data: dict = event.get("data") or {}
        if not isinstance(data, dict):
            data = {}
        if not isinstance(run, str) or not isinstance(etype, str):
            return []
        ts = number(event.get("ts")) or 0.0
        ev = Ev(run, etype, data, float(ts), text(event.get("id"), 64), event_key(event.get("id")))
        tr = self.traces.get(run)
        out: list[SpanRecord] = []
        if tr is not None and ev.key != (0, 0) and ev.key <= tr.last:   # fed already (or out of order)
            return out
        if tr is None or (tr.ended and etype in ("task_started", "session_started")):
            tr = self._begin(ev)
        self.traces.move_to_end(run)
        tr.last = max(tr.last, ev.key)
        handler = HANDLERS.get(etype)
        if handler is not None:
            handler(tr, ev, out)
        self._forget_old()
        return out

    def _begin(self, ev: Ev) -> Trace:
        trace_id = trace_id_of(ev.run, ev.id)
        root = Open(span_id_of(trace_id, "run", ""), None, f"run {one_line(ev.run)}", "CHAIN", ev.ts)
        put(root.attrs, "loop.run", ev.run)
        tr = self.traces[ev.run] = Trace(ev.run, trace_id, root)
        return tr

    def _forget_old(self) -> None:
        """At most RUNS traces: ended ones go first (the oldest), then the least recently fed."""
        if len(self.traces) <= RUNS:
            return
        ended = [r for r, t in self.traces.items() if t.ended]
        for run in (ended or list(self.traces))[: len(self.traces) - RUNS]:
            del self.traces[run]


