"""`loop adapt FORMAT`: an agent's JSON lines on stdin -> events to the sidecar + a readable transcript.

For scripts that run the agent themselves (a ralph-style bash loop)::

    claude -p "$PROMPT" --output-format stream-json --verbose | loop adapt claude
    codex exec --json "$PROMPT" | loop adapt codex
    gemini -p "$PROMPT" --output-format stream-json | loop adapt gemini

The events leave through the client's outbox (ordered, retrying), which never
blocks this loop: a sidecar that is down or hung costs at most the bounded
wait at the end (``close_timeout``), and the exit status never depends on it.
"""
from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass

from loopstream.core.events import OUTPUT_CHUNK
from loopstream.core.formats import IDLE_FLUSH_S, LineSplitter, parser_for
from loopstream.view import clean, money

READ_SIZE = 65536


def _result_line(d: dict) -> str:
    parts = [f"{d.get('num_turns')} turns" if d.get("num_turns") is not None else None,
             f"{d['duration_ms'] / 1000:.1f} s" if isinstance(d.get("duration_ms"), int) else None,
             f"cost {money(d.get('cost_usd')) or 'unknown'}",
             f"{d.get('input_tokens') or 0} in / {d.get('output_tokens') or 0} out tokens"]
    failed = "✗ agent failed" + (f" ({d['subtype']})" if d.get("subtype") else "")
    head = failed if d.get("is_error") else "✓ agent done"
    return f"= {head}: " + ", ".join(p for p in parts if p)


def transcript_line(etype: str, d: dict) -> str | None:
    """How one event reads in the transcript; every piece of agent text is cleaned for the terminal.
    What a subagent does is indented under it (``  ↳ → Bash: ls``)."""
    line = _transcript_text(etype, d)
    if line is not None and d.get("parent_id"):
        return "\n".join(f"  ↳ {part}" for part in line.split("\n"))
    return line


def _transcript_text(etype: str, d: dict) -> str | None:
    if etype == "agent_looping":
        return clean(f"⚠ Looping: {d.get('tool')} {d.get('summary') or ''} ×{d.get('repeats')}").replace("\n", " ")
    if etype == "subagent_completed":
        mark = "✗ subagent failed" if d.get("state") == "failed" else "✓ subagent done"
        return clean(f"  {mark}" + (f": {d['summary']}" if d.get("summary") else "")).replace("\n", " ")
    if etype == "agent_init":
        return clean(f"● {d.get('model') or 'agent'} (session {d.get('session_id') or '?'})")
    if etype == "agent_text":
        return clean(d.get("text") or "")
    if etype == "tool_call":
        return clean(f"→ {d.get('tool')}: {d.get('summary') or ''}").replace("\n", " ")
    if etype == "tool_result":
        mark = "✗" if d.get("is_error") else "✓"
        return clean(f"  {mark} {d.get('tool')}" + (f": {d['summary']}" if d.get("summary") else ""))
    if etype == "agent_result":
        return clean(_result_line(d))
    if etype == "output":
        return clean((d.get("text") or "").rstrip("\n"))
    return None


def output_events(data: dict) -> list[dict]:
    """An output's text in chunks the sidecar accepts (at most 4 KB each)."""
    text = data.get("text") or ""
    return [{**data, "text": text[i:i + OUTPUT_CHUNK]} for i in range(0, len(text), OUTPUT_CHUNK)] or [data]


@dataclass
class Lifecycle:
    """The story's start and end, when `loop adapt` owns them (a bash loop's `--story`; inside `loop run`
    the runner owns them): started when the agent's first line comes, finished when its input ends
    (failed when its result says ``is_error`` or it never gave one), and the run finished after it
    when this is the ``last`` story."""

    story_id: str
    title: str | None = None
    last: bool = False
    started_at: float | None = None
    verdict: str = "failed"          # until the agent's result says otherwise

    def start(self) -> list[tuple[str, dict]]:
        self.started_at = time.monotonic()
        started = {"story_id": self.story_id}
        if self.title:              # without one, a title the story already has stays
            started["title"] = self.title
        return [("story_started", started)]

    def seen(self, etype: str, data: dict) -> None:
        if etype == "agent_result":
            self.verdict = "failed" if data.get("is_error") else "passed"

    def end(self, stopped: str | None = None) -> list[tuple[str, dict]]:
        """The story's end: its verdict, or cancelled when ``stopped`` (the run's stop is the caller's).
        An agent that printed nothing (not found, refused) has still run: its story failed."""
        if self.started_at is None:
            if stopped:
                return []
            return self.start() + [("story_completed", {"story_id": self.story_id, "status": "failed",
                                                        "duration_ms": 0, "reason": "no_output"})] + \
                ([("task_completed", {})] if self.last else [])
        duration_ms = round((time.monotonic() - self.started_at) * 1000)
        done = {"story_id": self.story_id, "status": "cancelled" if stopped else self.verdict,
                "duration_ms": duration_ms}
        if stopped:
            return [("story_completed", {**done, "reason": stopped})]
        return [("story_completed", done)] + ([("task_completed", {})] if self.last else [])


class Adapter:
    """Reads a file descriptor to its end, turning each line into events and transcript lines."""

    def __init__(self, emit: Callable[[dict], None], write: Callable[[str], None], run: str | None,
                 story_id: str | None, lifecycle: Lifecycle | None = None, agent_format: str = "claude"):
        self.emit_event = emit
        self.write = write
        self.run = run
        self.parser = parser_for(agent_format, story_id)
        self.splitter = LineSplitter()
        self.counts: dict[str, int] = {}
        self.lifecycle = lifecycle
        self.stop_reason: str | None = None
        self._wake_r, self._wake_w = os.pipe()

    def request_stop(self, reason: str) -> None:
        """A stop for the run (from the sidecar): end the read at once; the caller exits 130."""
        if self.stop_reason is None:
            self.stop_reason = reason or "stop requested"
            os.write(self._wake_w, b"x")

    def request_pause(self, reason: str | None) -> None:
        """Nothing to pause: the agent is not ours (it runs upstream of the pipe)."""

    def request_resume(self, reason: str | None) -> None:
        """Nothing to resume."""

    def force_kill(self) -> None:
        self.request_stop("stop requested")

    def _deliver(self, events: list[tuple[str, dict]]) -> None:
        for etype, data in events:
            if self.lifecycle:
                self.lifecycle.seen(etype, data)
            self.counts[etype] = self.counts.get(etype, 0) + 1
            for d in (output_events(data) if etype == "output" else [data]):
                event = {"type": etype, "ts": round(time.time(), 3), "data": d}
                if self.run:
                    event["run"] = self.run
                self.emit_event(event)
            line = transcript_line(etype, data)
            if line:
                self.write(line)

    def feed(self, chunk: bytes) -> None:
        if self.lifecycle and self.lifecycle.started_at is None:
            self._deliver(self.lifecycle.start())
        for line in self.splitter.feed(chunk):
            self._deliver(self.parser.feed(line))

    def finish(self) -> None:
        """The end of the input (or a stop): what is held, then the story's end when it is ours."""
        if self.stop_reason is None:
            for line in self.splitter.close():
                self._deliver(self.parser.feed(line))
        self._deliver(self.parser.flush())
        if self.lifecycle:
            self._deliver(self.lifecycle.end(self.stop_reason))
        if self.stop_reason is not None and self.run:     # the runner's answer to the stop: the run is stopped
            self._deliver([("task_stopped", {"reason": self.stop_reason})])

    def read_fd(self, fd: int) -> None:
        """Read ``fd`` to end of file or a stop; text held for coalescing is shown after a second of quiet."""
        while self.stop_reason is None:
            wait = IDLE_FLUSH_S if self.parser.pending_text else None
            ready, _, _ = select.select([fd, self._wake_r], [], [], wait)
            if not ready:
                self._deliver(self.parser.flush())
                continue
            if fd not in ready:
                break
            chunk = os.read(fd, READ_SIZE)
            if not chunk:
                break
            self.feed(chunk)
        self.finish()
