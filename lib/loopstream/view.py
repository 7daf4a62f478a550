"""Terminal rendering of a run snapshot: the boxed live view and plain lines.

``render_box`` is pure (snapshot, width, now -> lines); ``LiveView`` redraws
it in place with rich (at most 10 times a second, at the terminal's current
width, cursor restored on exit). Event text is never trusted: control
characters and escape sequences are stripped before anything is printed.
"""
from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

from rich.cells import cell_len

from loopstream.core.formats.common import ANSI
from loopstream.core.state.values import as_text

# C0 (but \n), DEL, C1; bidi embeddings, overrides, isolates and marks (a U+202E reverses what
# follows it on screen); line/paragraph separators; lone surrogates (not printable at all).
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                    "\ud800-\udfff]")
MARK = {"passed": "✅", "running": "⏳", "pending": "○", "failed": "❌"}
STORY_MARK = {"passed": "✅", "running": "⏳", "queued": "○", "failed": "❌", "skipped": "⏭", "cancelled": "⛔"}


def clean(text: object) -> str:
    """Printable text of any value (not a string: as JSON, the reducers' rule): escape sequences,
    control characters (no CR survives) and bidi controls removed, tabs as spaces. A CR inside a
    line keeps what a terminal would show, the text after it, within this text only."""
    s = ANSI.sub("", as_text(text)).replace("\t", "    ").replace("\r\n", "\n")
    if "\r" in s:
        s = "\n".join(_last_nonempty(line.split("\r")) for line in s.split("\n"))
    return UNSAFE.sub("", s)


def _last_nonempty(parts: list[str]) -> str:
    return next((p for p in reversed(parts) if p), "")


def field(value: object) -> str:
    """One field of a line: cleaned as above but flat, every CR and newline a space (nothing in it
    is hidden). Every field is cleaned before a line is formatted, so no field can reach back over
    the line's start (a CR), eat what follows (an unfinished escape) or re-order it (bidi)."""
    s = ANSI.sub("", as_text(value)).replace("\t", "    ")
    return UNSAFE.sub("", s.replace("\r\n", " ").replace("\r", " ").replace("\n", " "))


def _safe(value: object) -> object:
    """An event value made safe to print: numbers, flags and None kept, anything else a field."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return field(value)


def fit(text: str, width: int) -> str:
    """Cut to ``width`` terminal cells (with an ellipsis) and pad to exactly ``width``."""
    text = field(text)
    if cell_len(text) > width:
        out, used = [], 0
        for ch in text:
            w = cell_len(ch)
            if used + w > width - 1:
                break
            out.append(ch)
            used += w
        text = "".join(out) + "…"
    return text + " " * max(0, width - cell_len(text))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def live_times(snap: dict, now: float) -> tuple[float, float | None]:
    """Elapsed and remaining seconds as of ``now`` (the snapshot's are as of its last event)."""
    elapsed, eta = snap.get("elapsed_s") or 0, snap.get("eta_s")
    if snap.get("status") in ("running", "paused") and isinstance(snap.get("started_at"), (int, float)):
        elapsed = max(elapsed, now - snap["started_at"])
        if eta is not None and isinstance(snap.get("updated_at"), (int, float)):
            eta = max(0.0, eta - (now - snap["updated_at"]))
    return elapsed, eta


def money(value: object) -> str | None:
    """A cost in dollars as loop prints it (``$0.0421``, ``$12.50``); None when it is not a number."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"${value:.4f}" if value < 10 else f"${value:,.2f}"
    return None


def agent_line(agent: dict | None, now: float) -> str | None:
    """The agent's current tool and how long it has run (``Agent: Bash pytest -q · 12s``), or its last one;
    a subagent's tool is named with it (``Agent: Explore “Find login” › Grep def login · 2s``)."""
    if not agent:
        return None
    tool = agent.get("last_tool")
    if not tool:
        return f"Agent: {agent.get('model') or 'started'} (no tool yet)"
    what = f"{field(tool.get('tool') or '?')} {field(tool.get('summary') or '')}".strip()
    sub = next((x for x in agent.get("subagents") or [] if x.get("id") == tool.get("parent_id")), None)
    if sub is not None:
        what = f"{subagent_name(sub)} › {what}"
    if tool.get("finished_at") is None and isinstance(tool.get("started_at"), (int, float)):
        return f"Agent: {what} · {duration(now - tool['started_at'])}"
    mark = {True: "✗ ", False: "✓ "}.get(tool.get("is_error"), "")
    return f"Agent: {mark}{what}" + f" ({agent.get('tool_calls', 0)} tool calls)"


def subagent_name(sub: dict) -> str:
    """A subagent as a person knows it: its type and the description it was given."""
    kind = field(sub.get("type") or "subagent")
    return f"{kind} “{field(sub['description'])}”" if sub.get("description") else kind


def looping_line(agent: dict | None) -> str | None:
    """``⚠ Looping: Bash pytest -q ×3`` while the agent calls the same tool with the same input again."""
    looping = (agent or {}).get("looping")
    if not looping:
        return None
    repeats = looping.get("repeats")
    times = f" ×{int(repeats)}" if isinstance(repeats, (int, float)) and not isinstance(repeats, bool) else ""
    return f"⚠ Looping: {field(looping.get('tool'))} {field(looping.get('summary'))}{times}"


def cost_line(snap: dict) -> str | None:
    """The run's reported cost and tokens; nothing when no agent reported any."""
    cost = money(snap.get("cost_usd"))
    tokens_in, tokens_out = snap.get("input_tokens") or 0, snap.get("output_tokens") or 0
    if cost is None and not tokens_in and not tokens_out:
        return None
    return f"Cost: {cost or 'unknown'} · {tokens_in:,} in / {tokens_out:,} out tokens"


def _agent_rows(snap: dict, current: dict | None, now: float) -> list[str]:
    rows = []
    live = snap.get("status") in ("running", "paused")
    line = agent_line(current.get("agent") if current else snap.get("agent"), now)
    if line and live:
        rows.append(line)
    running = [s for s in snap.get("stories") or [] if s.get("status") == "running"]
    for s in running:
        looping = looping_line(s.get("agent"))
        if looping:
            rows.append(looping + (f" ({field(s['id'])})" if len(running) > 1 else ""))
    looping = looping_line(snap.get("agent")) if live else None
    if looping:
        rows.append(looping)
    for s in snap.get("stories") or []:
        stalled = s.get("stalled")
        if stalled and s.get("status") == "running":
            silent = stalled.get("silent_s")
            since = stalled.get("since")
            quiet = (silent or 0) + (now - since if isinstance(since, (int, float)) else 0)
            rows.append(f"⚠ Stalled: {s['id']} silent for {duration(quiet)}")
    cost = cost_line(snap)
    if cost:
        rows.append(cost)
    return rows


def bar(percent: float, width: int) -> str:
    filled = int(round(width * max(0, min(100, percent)) / 100))
    return "█" * filled + "░" * (width - filled)


def render_box(snap: dict, width: int = 80, now: float | None = None, connection: str | None = None,
               output_lines: int = 4) -> list[str]:
    """The live box as lines of exactly ``width`` cells; every event field cleaned (see ``field``)."""
    now = time.time() if now is None else now
    width = max(40, min(width, 120))
    inner = width - 4
    top, mid, bottom = "╔" + "═" * (width - 2) + "╗", "╠" + "═" * (width - 2) + "╣", "╚" + "═" * (width - 2) + "╝"
    body = [*_story_texts(snap, now), *_output_texts(snap, output_lines), *_notice_texts(snap, connection)]
    return ([top] + [_row(t, inner) for t in _header_texts(snap, inner)] + [mid]
            + [_row(t, inner) for t in body] + [bottom])


def _row(text: str, inner: int) -> str:
    return "║ " + fit(text, inner) + " ║"


def has_progress(snap: dict) -> bool:
    """Whether the run reports progress at all (stories, or progress events): a run that does
    not (a command run by `loop exec`) gets no empty bar and no endless "estimating…"."""
    return bool((snap.get("counts") or {}).get("total")) or bool(snap.get("progress"))


def exit_line(snap: dict) -> str | None:
    """A finished command's outcome (`make test` failed: exit 3 after 5s); None for a live run
    or one that ran no command."""
    status, code = snap.get("status"), snap.get("exit_code")
    if status in ("running", "paused") or (code is None and snap.get("command") is None):
        return None
    what = f"`{field(snap.get('command'))}` " if snap.get("command") is not None else ""
    code_text = f"exit {code}" if isinstance(code, (int, float)) and not isinstance(code, bool) else "no exit code"
    return f"{what}{status}: {code_text} after {duration(snap.get('elapsed_s'))}"


def _header_texts(snap: dict, inner: int) -> list[str]:
    c = snap.get("counts") or {}
    total = c.get("total") or 0
    done = c.get("completed", 0) + c.get("failed", 0) + c.get("skipped", 0)   # as the reducers' percent
    status = snap.get("status", "running")
    title = field(snap.get("task_name") or snap.get("run"))
    command = None if snap.get("command") is None else field(snap["command"])
    label = "Command" if command == title else "Task"   # a `loop exec` run named by its command
    texts = [f"{label}: {title}   [{status.upper()}]" if status != "running" else f"{label}: {title}"]
    if command is not None and command != title:
        texts.append(f"Command: {command}")
    ended = exit_line(snap)
    if ended:
        texts.append(ended)
    session = session_line(snap)
    if session:
        texts.append(session)
    percent = snap.get("percent") or 0
    counts_text = f"{done}/{total} stories" if total else f"{percent:.0f}%"
    bar_width = max(10, min(40, inner - 12 - len(counts_text) - 3))
    if has_progress(snap):
        texts.append(f"Progress: [{bar(percent, bar_width)}] {counts_text}")
    if total:
        line = (f"✅ {c.get('completed', 0)} passed  ❌ {c.get('failed', 0)} failed  "
                f"⏳ {c.get('running', 0)} running  ○ {c.get('queued', 0)} queued")
        for name, mark in (("skipped", "⏭"), ("cancelled", "⛔")):
            if c.get(name):
                line += f"  {mark} {c[name]} {name}"
        texts.append(line)
    return texts


def _story_texts(snap: dict, now: float) -> list[str]:
    status = snap.get("status", "running")
    total = (snap.get("counts") or {}).get("total") or 0
    stories = snap.get("stories") or []
    current = next((s for s in stories if s["id"] == snap.get("current_story")), None)
    running = [s for s in stories if s["status"] == "running"]
    texts = []
    message = (snap.get("progress") or {}).get("message")
    if current:
        texts.append(f"Current Story: {field(current['id'])} - {field(current.get('title'))}")
    elif status in ("running", "paused") and not running and (total or message):
        texts.append("Current Story: (none running)" if total else f"Progress: {field(message)}")
    elapsed, eta = live_times(snap, now)
    remaining = "" if status not in ("running", "paused") else (
        f" | ~{duration(eta)} remaining" if eta is not None else
        " | estimating…" if has_progress(snap) or snap.get("estimated_duration") is not None else "")
    texts.append(f"Time: {duration(elapsed)} elapsed{remaining}")
    if len(running) > 1:
        texts.append("Running: " + ", ".join(field(s["id"]) for s in running))
    texts.extend(field(text) for text in _agent_rows(snap, current, now))
    if current and current.get("acceptance_criteria"):
        texts.append("Acceptance Criteria:")
        texts.extend(f"  {MARK.get(ac['status'], '○')} {field(ac.get('text'))}"
                     for ac in current["acceptance_criteria"])
    elif not current and stories and status not in ("running", "paused"):
        texts.extend(f"  {STORY_MARK.get(s['status'], '○')} {field(s['id'])} - {field(s.get('title'))}"
                     for s in stories[-8:])
    return texts


def _output_texts(snap: dict, output_lines: int) -> list[str]:
    out = [ln for ln in clean(snap.get("output") or "").split("\n") if ln.strip()][-output_lines:]
    return [f"> {ln}" for ln in out]


def _notice_texts(snap: dict, connection: str | None) -> list[str]:
    texts = []
    if snap.get("last_error") and snap.get("status", "running") not in ("passed",):
        e = snap["last_error"]
        texts.append(f"! {field(e.get('error_type') or 'error')}: {field(e.get('error_message'))}")
    control = snap.get("control") or {}
    if control.get("stop_requested"):
        texts.append(f"Stopping: {field(control['stop_requested'])}")
    elif control.get("pause_requested"):
        texts.append("Pausing after the running stories…")
    if connection:
        texts.append(f"Sidecar: {field(connection)}")
    ended = stop_line(snap)
    if ended:
        texts.append(ended)   # last: what a stopped run ends on is why
    return texts


def stop_line(snap: dict) -> str | None:
    """Why a stopped run stopped (``Stopped: wrong branch``), for the view's last line."""
    if snap.get("status") != "stopped":
        return None
    reason = snap.get("stop_reason")
    return f"Stopped: {field(reason)}" if reason else "Stopped"


AGENT_LINES = {
    "agent_init": lambda d: f"model={d.get('model')} session={d.get('session_id')}",
    "agent_text": lambda d: str(d.get("text") or "")[:300],
    "tool_call": lambda d: f"→ {d.get('tool')}: {d.get('summary') or ''}",
    "tool_result": lambda d: f"{'✗' if d.get('is_error') is True else '✓'} {d.get('tool')}: {d.get('summary') or ''}",
    "agent_result": lambda d: f"{'failed' if d.get('is_error') is True else 'done'} "
                              f"cost={money(d.get('cost_usd')) or 'unknown'} "
                              f"turns={d.get('num_turns')} tokens={d.get('input_tokens')}/{d.get('output_tokens')}",
    "story_stalled": lambda d: f"silent for {d.get('silent_s')} s",
    "agent_looping": lambda d: f"⚠ looping: {d.get('tool')} {d.get('summary') or ''} ×{d.get('repeats')}",
    "subagent_completed": lambda d: f"subagent {d.get('id')} {d.get('state')}: {d.get('summary') or ''}",
}

# A Claude Code session's own events (formats/hook_session.py, otlp/logs_in.py), one line each, as the agent's are.
SESSION_WORDS = {"working": "working", "waiting_for_input": "waiting", "idle": "idle", "ended": "ended"}
SESSION_LINES = {
    "session_started": lambda d: f"session started ({d.get('source') or '?'}) in {d.get('cwd') or '?'}",
    "session_state": lambda d: (f"waiting for you: {d.get('waiting_for') or ''}"
                                if d.get("state") == "waiting_for_input" else str(d.get("state"))),
    "session_subagent": lambda d: f"subagent {d.get('agent_id')} ({d.get('agent_type') or '?'}) {d.get('state')}",
    "session_ended": lambda d: f"session ended ({d.get('reason') or '?'})",
    "agent_usage": lambda d: f"{d.get('requests')} API requests cost={money(d.get('cost_usd')) or 'unknown'} "
                             f"tokens={d.get('input_tokens')}/{d.get('output_tokens')}",
}
AGENT_LINES.update(SESSION_LINES)


def session_line(snap: dict) -> str | None:
    """A Claude Code session's state in words: "Session: waiting for you — MESSAGE (in CWD)"."""
    s = snap.get("session")
    if not isinstance(s, dict):
        return None
    state = s.get("state")
    words = f"waiting for you — {field(s.get('waiting_for'))}" if state == "waiting_for_input" else field(state)
    where = f" (in {field(s.get('cwd'))})" if s.get("cwd") else ""
    subs: Any = s.get("subagents") if isinstance(s.get("subagents"), list) else []
    running = len([x for x in subs if isinstance(x, dict) and x.get("state") == "running"])
    return f"Session: {words}{where}" + (f", {running} subagent{'s' if running > 1 else ''} running" if running else "")


def _stamp(ts: Any) -> str:
    try:
        return datetime.fromtimestamp(ts).strftime("%H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "--:--:--"


def _summary_text(summary: object) -> str:
    if not isinstance(summary, dict):
        return ""
    return " ".join(f"{field(k)}={_safe(v)}" for k, v in summary.items())


def _started_text(d: dict) -> str:
    """A run's start: its name, its story count, and the command it runs when that is not its name."""
    count = d.get("story_count")
    text = f"{d.get('task_name')}" + (f" ({count} stories)" if count is not None else "")
    if d.get("command") is not None and d.get("command") != d.get("task_name"):
        text += f" — `{d['command']}`"
    return text


def _finish_text(t: str, raw: dict, d: dict) -> str:
    """A run's end: a command's exit code and time (``failed: exit 3 after 5s``), else the summary;
    a stop's reason last."""
    reason = f" reason={d['reason']}" if d.get("reason") else ""
    if "exit_code" not in raw:
        return _summary_text(raw.get("summary")) + reason
    status = "stopped" if t == "task_stopped" else (d.get("status") or "finished")
    return f"{status}: exit {d.get('exit_code')} after {_ms(d.get('duration_ms'))}{reason}"


def _ms(value: Any) -> str:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return duration(value / 1000) if ok and abs(value) < 1e15 else "?"


def plain_line(event: dict) -> str:
    """One line per event, for pipes and logs: every field cleaned (flat, no control or bidi
    characters) before the line is formatted, so no field can forge or hide the line's start."""
    raw = event.get("data")
    raw = raw if isinstance(raw, dict) else {}
    d = {k: _safe(v) for k, v in raw.items()}
    t = field(event.get("type", "?"))
    sid = d.get("story_id")
    if t == "task_started":
        text = _started_text(d)
    elif t == "story_started":
        text = f"{sid} {d.get('title', '')} (attempt {d.get('attempt', 1)})"
    elif t in ("ac_completed", "ac_failed"):
        text = f"{sid} [{d.get('ac_index')}] {d.get('ac_text', '')}" + (
            f" — {d.get('error')}" if t == "ac_failed" else "")
    elif t == "story_completed":
        text = f"{sid} {d.get('status')} in {_ms(d.get('duration_ms'))}"
    elif t == "output":
        text = f"{sid or ''} {d.get('stream', '')}: " + " ⏎ ".join(
            ln for ln in clean(raw.get("text", "")).split("\n") if ln)
    elif t == "error_occurred":
        text = f"{sid or ''} {d.get('error_type')}: {d.get('error_message')}"
    elif t in ("task_completed", "task_stopped"):
        text = _finish_text(t, raw, d)
    elif t in AGENT_LINES:
        within = f"↳ {d['parent_id']} " if d.get("parent_id") else ""     # a subagent's
        text = f"{sid or ''} {within}" + AGENT_LINES[t](d)
    elif t == "progress":
        text = " ".join(f"{k}={d[k]}" for k in ("percent", "current", "total", "message") if k in d)
    else:
        text = str(d.get("message")) if isinstance(raw.get("message"), str) else field(raw)
    return field(f"{_stamp(event.get('ts'))} {field(event.get('run', ''))} {t} {text}".rstrip())


def _count(value: object) -> int | float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e15 else 0


STATUS_SGR = {"passed": "32", "failed": "31", "running": "33", "paused": "33",   # green, red, yellow
              "stopped": "35", "interrupted": "35",                            # magenta
              "waiting": "1;33", "working": "33", "idle": "2", "ended": "32"}  # a session's: bold yellow, dim


def _cell(text: str, width: int, right: bool = False) -> str:
    """``text`` in exactly ``width`` terminal cells: padded, or cut with "…" (wide characters count twice)."""
    from rich.cells import cell_len, set_cell_size

    if cell_len(text) > width:
        return set_cell_size(text, max(width - 1, 0)) + "…"[:width]
    pad = " " * (width - cell_len(text))
    return pad + text if right else text + pad


def _run_cells(r: dict) -> tuple[str, str, str, str, str]:
    """run, status, done, elapsed and task of one run, every field cleaned before it is placed."""
    c: Any = r.get("counts") if isinstance(r.get("counts"), dict) else {}
    total = _count(c.get("total"))
    code = r.get("exit_code")
    if total:
        done = f"{_count(c.get('completed')) + _count(c.get('failed'))}/{total}"
    elif isinstance(code, int) and not isinstance(code, bool):
        done = f"exit {code}"              # a command's (loop exec): its exit code says how it went
    else:
        done = f"{_count(r.get('percent')):.0f}%" if r.get("progress") else "—"
    elapsed = r.get("elapsed_s")
    status, task = field(r.get("status")), field(r.get("task_name"))
    session = r.get("session")
    if isinstance(session, dict):          # a Claude Code session: its state in words
        status = SESSION_WORDS.get(str(session.get("state")), status)
        if session.get("state") == "waiting_for_input":
            task = f"{task} · waiting for you: {field(session.get('waiting_for'))}"
    return (field(r.get("run")), status, done, duration(_count(elapsed) if elapsed is not None else None), task)


def runs_table(rows: list[dict], width: int, color: bool = False) -> list[str]:
    """``loop runs`` on a terminal: a header and one line a run, never wider than ``width`` (cells cut
    with "…", never wrapped); statuses coloured when ``color``."""
    cells = [_run_cells(r) for r in rows]
    status_w, done_w, elapsed_w = 11, 9, 9
    rest = max(width - (status_w + done_w + elapsed_w + 5), 12)     # five separating spaces
    run_w = min(max([3, *(len(c[0]) for c in cells)]), max(rest * 11 // 20, 6))
    task_w = rest - run_w
    lines = [" ".join([_cell("RUN", run_w), _cell("STATUS", status_w), _cell("DONE", done_w, True),
                       _cell("ELAPSED", elapsed_w, True), "", _cell("TASK", task_w)]).rstrip()]
    for run, status, done, elapsed, task in cells:
        shown = _cell(status, status_w)
        if color and status in STATUS_SGR:
            shown = f"\x1b[{STATUS_SGR[status]}m{shown}\x1b[0m"
        lines.append(" ".join([_cell(run, run_w), shown, _cell(done, done_w, True), _cell(elapsed, elapsed_w, True),
                               "", _cell(task, task_w)]).rstrip())
    return lines


# Status words in the box: passed green, failed red, running yellow, stopped magenta.
STATUS_STYLES = [(r"\[PASSED\]|\b[1-9]\d* passed\b", "green"), (r"\[FAILED\]|\b[1-9]\d* failed\b", "red"),
                 (r"\b[1-9]\d* running\b", "yellow"), (r"\[(STOPPED|INTERRUPTED)\]", "magenta")]


class LiveView:
    """The box, redrawn in place on a TTY (rich Live), from whatever snapshot is current."""

    def __init__(self, get_snapshot, get_connection=lambda: None, refresh_per_second: float = 10):
        from rich.console import Console
        from rich.live import Live

        self.get_snapshot = get_snapshot
        self.get_connection = get_connection
        import os

        # The terminal's own size, read on every refresh: an inherited COLUMNS would pin the width.
        environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        self.console = Console(highlight=False, soft_wrap=False, _environ=environ)
        # The alternate screen: redrawn in place whatever the terminal does on a resize (a normal
        # screen reflows the old frame and leaves pieces behind); the final frame is printed on exit.
        self.live = Live(self, console=self.console, refresh_per_second=refresh_per_second, screen=True,
                         auto_refresh=True, transient=True, redirect_stdout=False, redirect_stderr=False)

    def __rich_console__(self, console, options):
        from rich.text import Text

        snap = self.get_snapshot()
        if snap is None:
            yield Text("waiting for the first event…")
            return
        width = min(options.max_width, 100)
        text = Text("\n".join(render_box(snap, width, connection=self.get_connection())), no_wrap=True,
                    overflow="crop")
        for pattern, style in STATUS_STYLES:     # rich leaves colour out under NO_COLOR and when piped
            text.highlight_regex(pattern, style)
        yield text

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        """Leave the alternate screen and show the cursor (on every way out: an exception, a stop by
        signal), then print the last state once on the normal screen. A terminal that hung up
        (SIGHUP) cannot be written to any more: that is no error."""
        try:
            result = self.live.__exit__(*exc)
        except OSError:
            return False
        try:
            self.console.print(self)
        except OSError:
            pass
        return result
