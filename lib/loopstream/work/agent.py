"""Agent-aware stories in `loop run`: stream-json parsing, stalls, timeouts, agents going in circles
and a cost ceiling.

``AgentMonitor`` holds what the runner needs per running story: its stdout
through its agent format's parser (``agentFormat``: ``claude-stream-json``,
``codex-json``, ``gemini-stream-json``; or recognised by its first line), when it
last showed a sign of life, when it started, and the run's reported cost. It
does no I/O and reads time only through the injected ``clock``;
``AgentRunner`` wires it into the runner (see stories.py: ``output_events``).
"""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loopstream.core.events import OUTPUT_CHUNK
from loopstream.core.formats import (
    IDLE_FLUSH_S,
    LOOP_AFTER,
    MAX_LINE_BYTES,
    PRD_FORMATS,
    AgentParser,
    detect,
    parser_for,
)
from loopstream.work.stories import Runner

AGENT_FORMATS = ("text", *PRD_FORMATS)
DETECT_LIMIT = 65_536    # a first line longer than this (without a newline yet) is plain text

Event = tuple[str, dict]


def output_chunks(story_id: str, stream: str, text: str) -> list[Event]:
    return [("output", {"story_id": story_id, "stream": stream, "text": text[i:i + OUTPUT_CHUNK]})
            for i in range(0, len(text), OUTPUT_CHUNK)]


class StoryStream:
    """One attempt's stdout: plain text, or an agent's JSON lines through its format's parser.

    Undecided (format "text"), the first line decides: the first line of a
    known agent format (formats.detect) turns that parser on. Output that
    cannot start such a line (it does not begin with ``{``) passes through at
    once, so plain agents lose no liveness waiting for a newline.
    """

    def __init__(self, story_id: str, agent_format: str = "text", loop_after: int = LOOP_AFTER):
        self.story_id = story_id
        self.loop_after = loop_after
        self.mode = "json" if agent_format != "text" else "undecided"
        self.parser: AgentParser = parser_for(agent_format if agent_format != "text" else "claude", story_id,
                                              loop_after)
        self._buf = ""

    def feed(self, stream: str, text: str) -> list[Event]:
        if stream != "stdout" or self.mode == "text":
            return output_chunks(self.story_id, stream, text)
        self._buf += text
        if self.mode == "undecided" and not self._decide():
            return []
        if self.mode == "text":
            held, self._buf = self._buf, ""
            return output_chunks(self.story_id, stream, held)
        return self._lines()

    def _decide(self) -> bool:
        """Settle the mode when the held text allows; False while it must wait for more."""
        head = self._buf.lstrip()
        if not head:
            return False
        if not head.startswith("{"):
            self.mode = "text"
        elif "\n" in self._buf:
            fmt = detect(self._buf.split("\n", 1)[0])
            self.mode = "json" if fmt else "text"
            if fmt:
                self.parser = parser_for(fmt, self.story_id, self.loop_after)
        elif len(self._buf) > DETECT_LIMIT:
            self.mode = "text"
        else:
            return False
        return True

    def _lines(self) -> list[Event]:
        *lines, self._buf = self._buf.split("\n")
        if len(self._buf) > MAX_LINE_BYTES:           # a runaway line: parse (as output) what we hold
            lines.append(self._buf)
            self._buf = ""
        events: list[Event] = []
        for line in lines:
            events += self.parser.feed(line)
        return [c for e in events for c in self._sized(e)]

    def _sized(self, event: Event) -> list[Event]:
        kind, data = event
        if kind == "output":
            return output_chunks(self.story_id, data.get("stream", "stdout"), data["text"])
        return [event]

    def close(self) -> list[Event]:
        """What is still held when the command ends: a last line without newline, coalesced text."""
        held, self._buf = self._buf, ""
        if self.mode != "json":
            return output_chunks(self.story_id, "stdout", held)
        events = self.parser.feed(held) if held.strip() else []
        return [c for e in events + self.parser.flush() for c in self._sized(e)]


@dataclass
class AgentOptions:
    agent_format: str = "text"
    stall_after: float | None = None     # seconds of silence before one story_stalled
    story_timeout: float | None = None   # seconds an attempt may run
    max_cost: float | None = None        # dollars of reported cost before the run is stopped
    max_repeat: int | None = None        # the same tool call this many times in a row stops the story

    @property
    def loop_after(self) -> int:
        """Identical calls in a row before agent_looping: 3, or fewer when --max-repeat stops sooner."""
        return min(LOOP_AFTER, self.max_repeat) if self.max_repeat else LOOP_AFTER


@dataclass
class _Active:
    stream: StoryStream
    started: float
    last_sign: float
    stalled: bool = False
    timed_out: bool = False
    looped: bool = False
    stopping: bool = False          # a limit's stop was sent (one per attempt, whichever asked first)
    held_since: float | None = None


@dataclass
class AgentMonitor:
    """Per-story agent state and the checks a watcher thread runs (``tick``)."""

    options: AgentOptions
    clock: Callable[[], float] = time.monotonic
    cost_usd: float | None = None
    cost_exceeded: bool = False
    timed_out: set[str] = field(default_factory=set)
    looped: dict[str, str] = field(default_factory=dict)    # story -> the call it repeated (--max-repeat)
    _active: dict[str, _Active] = field(default_factory=dict)
    # Held while parsing and while the watcher emits what tick() found, so held text flushed
    # after quiet never overtakes the events of a line read at that moment (re-entrant: emit touches).
    lock: threading.RLock = field(default_factory=threading.RLock)

    def start_attempt(self, story_id: str) -> None:
        now = self.clock()
        with self.lock:
            self.timed_out.discard(story_id)
            self.looped.pop(story_id, None)
            stream = StoryStream(story_id, self.options.agent_format, self.options.loop_after)
            self._active[story_id] = _Active(stream, now, now)

    def end_output(self, story_id: str) -> list[Event]:
        """The command ended: what its stream still holds."""
        with self.lock:
            a = self._active.get(story_id)
            return a.stream.close() if a else []

    def end_attempt(self, story_id: str) -> None:
        with self.lock:
            self._active.pop(story_id, None)

    def touch(self, story_id: str) -> None:
        """A sign of life (an event of the story): silence starts again."""
        with self.lock:
            a = self._active.get(story_id)
            if a:
                a.last_sign = self.clock()
                a.stalled = False

    def output_events(self, story_id: str, stream: str, text: str) -> list[Event]:
        with self.lock:
            a = self._active.get(story_id)
            if a is None:
                return output_chunks(story_id, stream, text)
            a.last_sign = self.clock()
            a.stalled = False
            events = a.stream.feed(stream, text)
            a.held_since = (a.held_since or a.last_sign) if a.stream.parser.pending_text else None
            self._count_repeats(story_id, a, events)
        self._count_cost(events)
        return events

    def _count_repeats(self, story_id: str, a: _Active, events: list[Event]) -> None:
        """The story's agent called the same tool with the same input --max-repeat times in a row."""
        limit = self.options.max_repeat
        for kind, data in events:
            if limit and not a.looped and kind == "tool_call" and (data.get("repeat") or 1) >= limit:
                a.looped = True
                self.looped[story_id] = f"{data.get('tool')} {data.get('summary') or ''}".strip()

    def loop_stop_due(self, story_id: str) -> bool:
        """Whether the story went in circles and its stop is still to be sent (True once)."""
        with self.lock:
            a = self._active.get(story_id)
            if a is None or not a.looped or a.stopping:
                return False
            a.stopping = True
            return True

    def _count_cost(self, events: list[Event]) -> None:
        for kind, data in events:
            if kind == "agent_result" and data.get("cost_usd") is not None:
                self.cost_usd = (self.cost_usd or 0.0) + data["cost_usd"]
                limit = self.options.max_cost
                if limit is not None and self.cost_usd > limit:
                    self.cost_exceeded = True

    def tick(self) -> tuple[list[Event], list[str]]:
        """Events due now (held text after quiet, story_stalled) and stories whose time is up."""
        now = self.clock()
        events: list[Event] = []
        expired: list[str] = []
        with self.lock:
            for sid, a in self._active.items():
                if a.held_since is not None and now - a.last_sign >= IDLE_FLUSH_S:
                    events += a.stream.parser.flush()
                    a.held_since = None
                stall = self.options.stall_after
                if stall is not None and not a.stalled and now - a.last_sign >= stall:
                    a.stalled = True
                    events.append(("story_stalled", {"story_id": sid, "silent_s": round(now - a.last_sign, 1)}))
                limit = self.options.story_timeout
                if limit is not None and not a.stopping and now - a.started >= limit:
                    a.timed_out = a.stopping = True
                    self.timed_out.add(sid)
                    expired.append(sid)
        return events, expired


class AgentRunner(Runner):
    """The runner, with its stories' output through an ``AgentMonitor`` and a watcher thread."""

    TICK_S = 0.25

    def __init__(self, prd, options, emit: Callable[[dict], None], agent: AgentOptions):
        super().__init__(prd, options, emit)
        self.monitor = AgentMonitor(agent)
        self._cost_stop_sent = False

    def output_events(self, story_id: str, stream: str, text: str) -> list[Event]:
        events = self.monitor.output_events(story_id, stream, text)
        if self.monitor.loop_stop_due(story_id):
            self.stop_story(story_id)      # its events still go out first: the stop takes a moment
        return events

    def emit(self, type_: str, **data) -> None:
        sid = data.get("story_id")
        if type_ == "output" and data.get("final") and sid is not None:
            for kind, d in self.monitor.end_output(sid):    # the parser's last words come before the end
                super().emit(kind, **d)
        if type_ == "story_completed" and sid in self.monitor.timed_out:
            data["reason"] = "timeout"
        elif type_ == "story_completed" and sid in self.monitor.looped:
            data["reason"] = "looping"
        super().emit(type_, **data)
        if sid is not None and type_ not in ("story_stalled",):
            self.monitor.touch(sid)
        if self.monitor.cost_exceeded and not self._cost_stop_sent:
            self._cost_stop_sent = True
            self.request_stop("max_cost")

    def _attempt(self, story, attempt, *args):
        self.monitor.start_attempt(story.id)
        try:
            status = super()._attempt(story, attempt, *args)
        finally:
            self.monitor.end_attempt(story.id)
        if status == "cancelled":
            return status
        retry = attempt < self.opts.max_attempts
        if story.id in self.monitor.timed_out:
            limit = self.monitor.options.story_timeout
            self.emit("error_occurred", story_id=story.id, error_type="timeout",
                      error_message=f"attempt {attempt} ran longer than {limit:g} s (--story-timeout)", retryable=retry)
            return "failed"
        if story.id in self.monitor.looped:
            self.emit("error_occurred", story_id=story.id, error_type="looping", retryable=retry,
                      error_message=f"attempt {attempt}: the agent called {self.monitor.looped[story.id]} "
                                    f"{self.monitor.options.max_repeat} times in a row (--max-repeat)")
            return "failed"
        return status

    def run(self) -> int:
        done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(done,), name="loop-agent-watch", daemon=True)
        watcher.start()
        try:
            return super().run()
        finally:
            done.set()
            watcher.join(2)

    def _watch(self, done: threading.Event) -> None:
        while not done.wait(self.TICK_S):
            with self.monitor.lock:
                events, expired = self.monitor.tick()
                for kind, data in events:
                    self.emit(kind, **data)
            for sid in expired:
                self.stop_story(sid)

    def stop_story(self, story_id: str) -> None:
        """The stop path for one story: SIGINT to its children's groups, SIGKILL after the grace period."""
        with self._children_lock:
            children = [c for c in self._children if getattr(c, "story_id", None) == story_id]
        for c in children:
            c.signal_group(signal.SIGINT)
        threading.Thread(target=self._kill_after_grace, args=(children,), daemon=True).start()

    def _kill_after_grace(self, children: list) -> None:
        deadline = time.monotonic() + self.opts.grace
        while any(c.proc.poll() is None for c in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        for c in children:
            c.signal_group(signal.SIGKILL)   # the group, even when its leader is gone


def agent_options(prd, agent_format: str | None = None, stall_after: float | None = None,
                  story_timeout: float | None = None, max_cost: float | None = None,
                  max_repeat: int | None = None) -> AgentOptions:
    """The run's agent settings: each command-line option, else the PRD's key, else off."""
    def pick(option, key):
        return option if option is not None else key
    return AgentOptions(agent_format=pick(agent_format, prd.agent_format) or "text",
                        stall_after=pick(stall_after, prd.stall_after),
                        story_timeout=pick(story_timeout, prd.story_timeout),
                        max_cost=pick(max_cost, prd.max_cost),
                        max_repeat=pick(max_repeat, prd.max_repeat))
