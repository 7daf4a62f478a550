"""`loop adapt claude`: stream-json on stdin -> events to the sidecar + a readable transcript.

For scripts that run the agent themselves (a ralph-style bash loop)::

    claude -p "$PROMPT" --output-format stream-json --verbose | loop adapt claude

The events leave through the client's outbox (ordered, retrying), which never
blocks this loop: a sidecar that is down or hung costs at most the bounded
wait at the end (``close_timeout``), and the exit status never depends on it.
"""
from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

from .agent import LineSplitter, StreamJsonParser
from .view import clean

IDLE_FLUSH_S = 1.0     # coalesced assistant text is shown after this much quiet
READ_SIZE = 65536
OUTPUT_CHUNK = 4096    # the sidecar's output events are at most 4 KB


def money(value: object) -> str:
    return f"${value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "unknown"


def _result_line(d: dict) -> str:
    parts = [f"{d.get('num_turns')} turns" if d.get("num_turns") is not None else None,
             f"{d['duration_ms'] / 1000:.1f} s" if isinstance(d.get("duration_ms"), int) else None,
             f"cost {money(d.get('cost_usd'))}",
             f"{d.get('input_tokens') or 0} in / {d.get('output_tokens') or 0} out tokens"]
    failed = "✗ agent failed" + (f" ({d['subtype']})" if d.get("subtype") else "")
    head = failed if d.get("is_error") else "✓ agent done"
    return f"= {head}: " + ", ".join(p for p in parts if p)


def transcript_line(etype: str, d: dict) -> str | None:
    """How one event reads in the transcript; every piece of agent text is cleaned for the terminal."""
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


class Adapter:
    """Reads a file descriptor to its end, turning each line into events and transcript lines."""

    def __init__(self, emit: Callable[[dict], None], write: Callable[[str], None], run: str | None,
                 story_id: str | None):
        self.emit_event = emit
        self.write = write
        self.run = run
        self.parser = StreamJsonParser(story_id)
        self.splitter = LineSplitter()
        self.counts: dict[str, int] = {}

    def _deliver(self, events: list[tuple[str, dict]]) -> None:
        for etype, data in events:
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
        for line in self.splitter.feed(chunk):
            self._deliver(self.parser.feed(line))

    def finish(self) -> None:
        for line in self.splitter.close():
            self._deliver(self.parser.feed(line))
        self._deliver(self.parser.flush())

    def read_fd(self, fd: int) -> None:
        """Read ``fd`` to end of file; text held for coalescing is shown after a second of quiet."""
        while True:
            wait = IDLE_FLUSH_S if self.parser.pending_text else None
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                self._deliver(self.parser.flush())
                continue
            chunk = os.read(fd, READ_SIZE)
            if not chunk:
                break
            self.feed(chunk)
        self.finish()
