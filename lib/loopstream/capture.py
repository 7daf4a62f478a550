"""Capture work that is not a PRD: follow a log file (``loop tail``).

``LineFollower`` is the file-following logic with no clock and no events: each
``poll()`` returns the complete lines that appeared since the last one, across
truncation and rotation. ``Tail`` turns those lines into a run's events and
decides when the run ends (a line matching ``--until``, a timeout, a stop).
"""
from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

READ_CHUNK = 65_536
MAX_READ_PER_POLL = 1 << 20   # a huge backlog is read over several polls, so a stop is never delayed
MAX_LINE = 1 << 20            # a "line" longer than this (a file without newlines) goes out in pieces
OUTPUT_TEXT = 4096            # characters per output event (SPEC: chunks of at most 4 KB)


class LineFollower:
    """The complete lines appended to one path, polled (no inotify, so it works on any filesystem).

    - The path may not exist yet: it is opened when it appears, from its start.
    - A file that exists at the first poll is read from its end unless ``from_start``.
    - Truncation (the file got shorter than what was read) restarts at offset 0.
    - Rotation (the path now names another file): the old file is read to its end
      first, and left for the new one only once the new one has its first byte —
      a writer that has moved on to the new file is done with the old one, so no
      line is lost and the order is the writer's.
    A partial last line is held until its newline comes; it is given out as a line
    (a newline added) only when its file is truncated or replaced, or by ``flush()``.
    """

    def __init__(self, path: str, from_start: bool = False,
                 notice: Callable[[str], None] | None = None):
        self.path = path
        self.from_start = from_start
        self.notice = notice or (lambda message: None)
        self._file: BinaryIO | None = None
        self._key: tuple[int, int] | None = None
        self._partial = b""
        self._first_poll = True

    def start(self) -> None:
        """Open the path if it is there, so that what is appended from now on is what counts."""
        if self._first_poll:
            self._first_poll = False
            self._open(at_end=not self.from_start)

    def poll(self) -> list[bytes]:
        """Lines (each ending in b"\\n") that are complete now; never blocks. OSError other than
        "not there (yet)" propagates: an unreadable path is the caller's to report."""
        if self._file is None and not self._open(at_end=self._first_poll and not self.from_start):
            self._first_poll = False
            return []
        self._first_poll = False
        lines = self._check_truncated()
        lines += self._read()
        if self._replaced():
            lines += self._read()          # whatever the writer put in the old file before moving on
            lines += self.flush()
            self.notice(f"{self.path} was replaced; following the new file")
            self._close()
            if self._open(at_end=False):
                lines += self._read()
        return lines

    def flush(self) -> list[bytes]:
        """The held partial line, as a line (for the end of a file or of the tail)."""
        if not self._partial:
            return []
        line, self._partial = self._partial + b"\n", b""
        return [line]

    def close(self) -> None:
        self._close()

    # -- internals -----------------------------------------------------------------------
    def _open(self, at_end: bool) -> bool:
        try:
            f = open(self.path, "rb", buffering=0)
        except FileNotFoundError:
            return False
        st = os.fstat(f.fileno())
        self._file, self._key = f, (st.st_dev, st.st_ino)
        if at_end:
            f.seek(0, os.SEEK_END)
        return True

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._key = None, None

    def _check_truncated(self) -> list[bytes]:
        if os.fstat(self._file.fileno()).st_size >= self._file.tell():
            return []
        self.notice(f"{self.path} was truncated; reading it from the start")
        self._file.seek(0)
        return self.flush()

    def _read(self) -> list[bytes]:
        read = 0
        lines: list[bytes] = []
        while read < MAX_READ_PER_POLL:
            chunk = self._file.read(READ_CHUNK)
            if not chunk:
                break
            read += len(chunk)
            *complete, self._partial = (self._partial + chunk).split(b"\n")
            lines += [line + b"\n" for line in complete]
            while len(self._partial) > MAX_LINE:
                lines.append(self._partial[:MAX_LINE])
                self._partial = self._partial[MAX_LINE:]
        return lines

    def _replaced(self) -> bool:
        """True when the path names another file that already has content (see the class doc)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False                   # deleted: keep reading the old file; it may come back
        return (st.st_dev, st.st_ino) != self._key and st.st_size > 0


# -- loop tail ---------------------------------------------------------------------------

@dataclass
class TailOptions:
    path: str
    run_id: str
    name: str
    until: re.Pattern | None = None
    timeout: float | None = None
    from_start: bool = False
    interval: float = 0.05          # seconds between polls when nothing new came


@dataclass
class TailResult:
    code: int                       # 0 matched, 1 timed out or failed, 130 stopped
    lines: int = 0
    matched: str | None = None
    reason: str | None = None
    error_type: str | None = None   # set when it ended in error: reported as error_occurred


@dataclass
class Tail:
    """Follows one file for one run: task_started, output per line, then how it ended.

    ``emit`` takes one event dict (an Outbox's ``put``); ``echo`` gets every line's
    bytes (the CLI writes them to stdout). Stop from any thread with ``request_stop``.
    """

    options: TailOptions
    emit: Callable[[dict], None]
    echo: Callable[[bytes], None] = lambda line: None
    notice: Callable[[str], None] = lambda message: None
    stop_reason: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def request_stop(self, reason: str = "requested") -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    def request_pause(self, reason: str | None = None) -> None:
        """A file cannot be paused: the request is noted and ignored."""
        self.notice("pause is not supported by loop tail; ignored")

    def request_resume(self, reason: str | None = None) -> None:
        pass

    def _event(self, type_: str, **data) -> None:
        self.emit({"type": type_, "run": self.options.run_id, "ts": round(time.time(), 3), "data": data})

    def _output(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        for i in range(0, len(text), OUTPUT_TEXT):
            self._event("output", stream="stdout", text=text[i:i + OUTPUT_TEXT])

    def run(self) -> TailResult:
        o = self.options
        started = time.monotonic()
        deadline = started + o.timeout if o.timeout is not None else None
        follower = LineFollower(o.path, o.from_start, self.notice)
        failure = _attempt(follower.start)   # before task_started: a line appended after it is never skipped
        self._event("task_started", task_id="tail", task_name=o.name, story_count=None,
                    estimated_duration=None, path=os.path.abspath(o.path),
                    until=o.until.pattern if o.until else None)
        try:
            if failure:
                raise failure
            result = self._follow(follower, deadline)
        except OSError as e:
            result = TailResult(1, reason=f"cannot read {o.path}: {e.strerror or e}", error_type="tail_failed")
        finally:
            follower.close()
        self._finish(result, int((time.monotonic() - started) * 1000))
        return result

    def _follow(self, follower: LineFollower, deadline: float | None) -> TailResult:
        o = self.options
        count = 0
        while True:
            lines = follower.poll()
            for line in lines:
                count += 1
                self.echo(line)
                self._output(line)
                if o.until and o.until.search(line.decode("utf-8", "replace").rstrip("\n")):
                    return TailResult(0, count, matched=line.decode("utf-8", "replace").rstrip("\n"))
            if self._stop.is_set():
                return self._flush(follower, TailResult(130, count, reason=self.stop_reason), count)
            if deadline is not None and time.monotonic() >= deadline:
                reason = f"no line matched {o.until.pattern!r} within {o.timeout:g} s" if o.until else \
                    f"stopped following after {o.timeout:g} s (--timeout)"
                return self._flush(follower, TailResult(1, count, reason=reason, error_type="timeout"), count)
            if not lines:
                self._stop.wait(o.interval)

    def _flush(self, follower: LineFollower, result: TailResult, count: int) -> TailResult:
        """The partial last line still counts as output when the tail ends without its newline."""
        for line in follower.flush():
            self.echo(line)
            self._output(line)
            result.lines = count + 1
        return result

    def _finish(self, result: TailResult, duration_ms: int) -> None:
        summary = {"lines": result.lines, "duration_ms": duration_ms}
        if result.code == 130:
            self._event("task_stopped", reason=result.reason or "stopped", summary=summary, duration_ms=duration_ms)
            return
        if result.code == 1:
            self._event("error_occurred", error_type=result.error_type, error_message=result.reason,
                        retryable=False)
            self._event("task_completed", status="failed", reason=result.reason, summary=summary,
                        duration_ms=duration_ms)
            return
        self._event("task_completed", status="passed", matched=result.matched[:500] if result.matched else None,
                    summary=summary, duration_ms=duration_ms)


def _attempt(action: Callable[[], None]) -> OSError | None:
    """Run ``action``; its OSError is returned (to be reported in order), not raised."""
    try:
        action()
    except OSError as e:
        return e
    return None
