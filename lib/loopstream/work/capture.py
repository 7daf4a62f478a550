"""Capture work that is not a PRD: wrap a command (``loop exec``), follow a log file (``loop tail``).

``Exec`` runs one command in its own process group, passes its stdout and
stderr through byte for byte, keeps all of it in a log file and streams it as
``output`` events; a stop goes through the same grace path as `loop run`.
``LineFollower`` is the file-following logic with no clock and no events: each
``poll()`` returns the complete lines that appeared since the last one, across
truncation and rotation. ``Tail`` turns those lines into a run's events and
decides when the run ends (a line matching ``--until``, a timeout, a stop).
"""
from __future__ import annotations

import codecs
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from loopstream.client.defaults import GRACE
from loopstream.core.events import OUTPUT_CHUNK
from loopstream.core.exitstatus import ExitStatus
from loopstream.work.processes import kill_after_grace

READ_CHUNK = 65_536
MAX_READ_PER_POLL = 1 << 20   # a huge backlog is read over several polls, so a stop is never delayed
MAX_LINE = 1 << 20            # a "line" longer than this (a file without newlines) goes out in pieces


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
            while more := self._read():    # the old file to its end: what the writer put there before moving on
                lines += more
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
        assert self._file is not None        # called while a file is open
        if os.fstat(self._file.fileno()).st_size >= self._file.tell():
            return []
        self.notice(f"{self.path} was truncated; reading it from the start")
        self._file.seek(0)
        return self.flush()

    def _read(self) -> list[bytes]:
        read = 0
        lines: list[bytes] = []
        assert self._file is not None        # called while a file is open
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


# -- loop exec ---------------------------------------------------------------------------

class OutputLog(Protocol):
    """Where the complete output goes (runner.StoryLog): raw bytes, counted, never failing the work."""

    output_bytes: int

    @property
    def path(self) -> object: ...

    def write(self, chunk: bytes) -> None: ...

    def close(self) -> None: ...


@dataclass
class ExecOptions:
    argv: list[str]
    run_id: str
    name: str | None = None
    grace: float = GRACE            # seconds between SIGINT and SIGKILL when stopping
    server: str | None = None       # given to the command as LOOP_SERVER
    heartbeat_s: float = 10.0       # task_alive after this many quiet seconds (announced in task_started)


@dataclass
class ExecResult:
    code: int                       # what `loop exec` exits with: the child's, 128+N for signal N, 130 stopped
    exit_code: int | None           # the child's own (128+N for signal N); None when it could not start
    duration_ms: int = 0
    stop_reason: str | None = None


def exit_status(returncode: int) -> int:
    """A Popen returncode as a shell reports it: -N (killed by signal N) becomes 128+N."""
    return 128 - returncode if returncode < 0 else returncode


class Exec:
    """One command for one run: task_started, its output, then task_completed (or task_stopped).

    ``passthrough`` maps "stdout"/"stderr" to the file descriptors the child's
    bytes are copied to unchanged (empty: nothing is copied, as with --stream).
    A reader whose destination is a closed pipe stops reading, so the child
    gets SIGPIPE as it would without `loop exec` in the pipeline.
    """

    def __init__(self, options: ExecOptions, emit: Callable[[dict], None], log: OutputLog | None = None,
                 passthrough: dict[str, int] | None = None, notice: Callable[[str], None] = lambda m: None):
        self.options = options
        self._emit = emit
        self.log = log
        self.passthrough = {"stdout": 1, "stderr": 2} if passthrough is None else passthrough
        self.notice = notice
        self.stop_reason: str | None = None
        self.proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._last_emit = time.monotonic()

    # -- control (any thread, or a signal handler) ---------------------------------------------
    def request_stop(self, reason: str = "requested") -> None:
        """SIGINT to the command's process group now, SIGKILL after the grace period."""
        if self._stop.is_set():
            return
        self.stop_reason = reason
        self._stop.set()
        self._signal(signal.SIGINT)

    def force_kill(self) -> None:
        self._signal(signal.SIGKILL)

    def request_pause(self, reason: str | None = None) -> None:
        self.notice("pause is not supported by loop exec; ignored")

    def request_resume(self, reason: str | None = None) -> None:
        pass

    def _signal(self, sig: int) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    # -- events ----------------------------------------------------------------------------
    def emit(self, type_: str, **data) -> None:
        self._last_emit = time.monotonic()
        self._emit({"type": type_, "run": self.options.run_id, "ts": round(time.time(), 3), "data": data})

    def _keep_alive(self) -> None:
        every = self.options.heartbeat_s
        while not self._done.wait(min(1.0, every / 4)):
            if time.monotonic() - self._last_emit >= every:
                self.emit("task_alive")

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> ExecResult:
        o = self.options
        command = shlex.join(o.argv)
        started = time.monotonic()
        self.emit("task_started", task_id="exec", task_name=o.name or command, story_count=None,
                  estimated_duration=None, command=command, heartbeat_s=o.heartbeat_s,
                  log=str(self.log.path) if self.log else None)
        threading.Thread(target=self._keep_alive, name="loop-alive", daemon=True).start()
        try:
            result = self._run_child(started)
        finally:
            self._done.set()
            if self.log:
                self.log.close()
        self._finish(result)
        return result

    def _run_child(self, started: float) -> ExecResult:
        env = {**os.environ, "LOOP_RUN": self.options.run_id}
        if self.options.server:
            env["LOOP_SERVER"] = self.options.server
        try:
            # Its own session and process group: the terminal's Ctrl-C reaches loop, which stops the
            # whole group through the grace path; stdin is loop's own, so pipelines work.
            self.proc = subprocess.Popen(self.options.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         env=env, start_new_session=True)
        except OSError as e:
            return self._not_started(e, started)
        if self._stop.is_set():     # a stop that came while it was starting
            self._signal(signal.SIGINT)
        readers = [threading.Thread(target=self._pump, args=(pipe, name), daemon=True)
                   for pipe, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr"))]
        for t in readers:
            t.start()
        threading.Thread(target=self._kill_after_grace, daemon=True).start()
        returncode = self.proc.wait()
        if self._stop.is_set():
            self._signal(signal.SIGKILL)     # whatever of the group outlived its leader
        for t in readers:
            t.join(2)   # a grandchild holding the pipes open must not hold the exit
        code = exit_status(returncode)
        duration_ms = int((time.monotonic() - started) * 1000)
        if self._stop.is_set():
            return ExecResult(ExitStatus.INTERRUPTED, code, duration_ms, self.stop_reason)
        return ExecResult(code, code, duration_ms)

    def _not_started(self, e: OSError, started: float) -> ExecResult:
        code = 127 if isinstance(e, FileNotFoundError) else 126
        message = f"{self.options.argv[0]}: " + ("command not found" if code == 127 else (e.strerror or str(e)))
        self.notice(message)
        self.emit("error_occurred", error_type="command_not_started", error_message=message, retryable=False)
        return ExecResult(code, code, int((time.monotonic() - started) * 1000))

    def _kill_after_grace(self) -> None:
        assert self.proc is not None         # started once the command is
        kill_after_grace(self.proc, self._stop, self.options.grace, lambda: self._signal(signal.SIGKILL))

    def _pump(self, pipe, stream: str) -> None:
        """Copy one pipe: to loop's own fd unchanged, to the log, and as output events."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        fd = pipe.fileno()
        dest = self.passthrough.get(stream)
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if chunk and dest is not None and not _write_all(dest, chunk):
                break   # our reader went away: close the pipe, so the command sees it too (SIGPIPE)
            if chunk and self.log:
                self.log.write(chunk)
            text = decoder.decode(chunk, final=not chunk)
            for i in range(0, len(text), OUTPUT_CHUNK):
                self.emit("output", stream=stream, text=text[i:i + OUTPUT_CHUNK])
            if not chunk:
                break
        pipe.close()

    def _finish(self, result: ExecResult) -> None:
        log = {"output_bytes": self.log.output_bytes if self.log else None,
               "log": str(self.log.path) if self.log and os.path.exists(str(self.log.path)) else None}
        summary = {"exit_code": result.exit_code, "duration_ms": result.duration_ms}
        if result.stop_reason is not None:
            self.emit("task_stopped", reason=result.stop_reason, exit_code=result.exit_code,
                      duration_ms=result.duration_ms, summary=summary, **log)
            return
        self.emit("task_completed", status="passed" if result.exit_code == 0 else "failed",
                  exit_code=result.exit_code, duration_ms=result.duration_ms, summary=summary, **log)


def _write_all(fd: int, data: bytes) -> bool:
    """Write every byte (a pipe may take part of it); False when the reader is gone."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except InterruptedError:
            continue
        except OSError:         # EPIPE: the reader is gone; EIO: the terminal hung up
            return False
    return True


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

    def force_kill(self) -> None:
        """A second Ctrl-C: the tail has nothing to kill; it is stopping already."""
        self.request_stop("interrupted twice")

    def request_pause(self, reason: str | None = None) -> None:
        """A file cannot be paused: the request is noted and ignored."""
        self.notice("pause is not supported by loop tail; ignored")

    def request_resume(self, reason: str | None = None) -> None:
        pass

    def _event(self, type_: str, **data) -> None:
        self.emit({"type": type_, "run": self.options.run_id, "ts": round(time.time(), 3), "data": data})

    def _output(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        for i in range(0, len(text), OUTPUT_CHUNK):
            self._event("output", stream="stdout", text=text[i:i + OUTPUT_CHUNK])

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
            result = TailResult(ExitStatus.FAILURE, reason=f"cannot read {o.path}: {e.strerror or e}",
                                error_type="tail_failed")
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
                    return TailResult(ExitStatus.OK, count, matched=line.decode("utf-8", "replace").rstrip("\n"))
            if self._stop.is_set():
                return self._flush(follower, TailResult(ExitStatus.INTERRUPTED, count, reason=self.stop_reason), count)
            if deadline is not None and time.monotonic() >= deadline:
                reason = f"no line matched {o.until.pattern!r} within {o.timeout:g} s" if o.until else \
                    f"stopped following after {o.timeout:g} s (--timeout)"
                timed_out = TailResult(ExitStatus.FAILURE, count, reason=reason, error_type="timeout")
                return self._flush(follower, timed_out, count)
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
        if result.code == ExitStatus.INTERRUPTED:
            self._event("task_stopped", reason=result.reason or "stopped", summary=summary, duration_ms=duration_ms)
            return
        if result.code == ExitStatus.FAILURE:
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
