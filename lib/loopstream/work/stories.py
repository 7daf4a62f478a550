"""The story loop: run a PRD's stories as children in their own process groups.

The runner reports through ``emit`` (a callable taking one event dict) and
never waits on the sidecar: delivery is the outbox's business. Control
(stop, pause, resume) arrives through ``request_*`` from any thread: the
CLI's signal handlers or the listener on the sidecar's stream.

Everything a story prints is kept whole in its log file on this machine
(``story_log_dir()``); the stream gets it as ``output`` events, which the
outbox may elide when they come faster than the sidecar takes them. While
the run has nothing else to say it sends ``task_alive`` every
``heartbeat_s`` seconds (announced in ``task_started``), so the sidecar can
tell a quiet run from a dead one.
"""
from __future__ import annotations

import codecs
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from loopstream.client.defaults import GRACE
from loopstream.core.exitstatus import ExitStatus
from loopstream.work.prd import Prd, Story, mark_passed
from loopstream.work.processes import kill_after_grace

ERROR_TAIL = 600  # characters of a failing command's output kept in the error
DEFAULT_HEARTBEAT = 10.0  # seconds between task_alive events while the run is otherwise quiet
HOOK_PATIENCE = 1.0       # seconds a finished story waits for the events its hooks queued to be delivered


def story_log_dir() -> Path:
    """Where story logs go: $LOOP_LOG_DIR, else $XDG_STATE_HOME/loop/logs (~/.local/state/loop/logs)."""
    if os.environ.get("LOOP_LOG_DIR"):
        return Path(os.environ["LOOP_LOG_DIR"])
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "loop" / "logs"


class StoryLog:
    """The complete output of one story (every attempt, stdout and stderr as they came), on disk.

    A write that fails (a full disk, a removed directory) is reported once
    through ``warn`` and the story goes on: the log is a record, not the work.
    ``output_bytes`` counts everything the story printed, written or not.
    """

    def __init__(self, path: Path, warn: Callable[[str], None]):
        self.path = path
        self.output_bytes = 0
        self._warn = warn
        self._file: IO[bytes] | None = None
        self._failed = False
        self._closed = False   # the story is over: a background process's late output is not its output
        self._lock = threading.Lock()

    def write(self, chunk: bytes) -> None:
        with self._lock:
            self.output_bytes += len(chunk)
            self._write(chunk)

    def begin_attempt(self, attempt: int) -> None:
        """Retries are appended after a line of loop's own (not counted as the story's output)."""
        if attempt > 1:
            with self._lock:
                self._write(f"--- loop: attempt {attempt} ---\n".encode())

    def _write(self, data: bytes) -> None:
        if self._failed or self._closed:
            return
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "ab", buffering=0)
            self._file.write(data)
        except OSError as e:
            self._failed = True
            self._warn(f"could not write the story log {self.path}: {e.strerror or e}; "
                       "the story goes on, its output is no longer kept on disk")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._file is not None:
                try:
                    self._file.close()
                except OSError:
                    pass
                self._file = None


def _has_lines(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80].lstrip(".") or "story"


@dataclass
class RunOptions:
    run_id: str
    server: str | None = None
    max_attempts: int = 1
    jobs: int = 1
    grace: float = GRACE
    update: bool = True
    cwd: str | None = None
    estimated_duration: float | None = None
    heartbeat_s: float = DEFAULT_HEARTBEAT
    log_dir: Path | None = None   # default: story_log_dir()


@dataclass
class StoryResult:
    status: str           # passed | failed | skipped | cancelled
    attempts: int
    duration_ms: int


class Child:
    """A shell command in its own process group; output is handed on as it comes.

    ``on_output(stream, text, raw)`` gets each chunk decoded (UTF-8, invalid
    bytes replaced) and as the bytes that came.
    """

    def __init__(self, command: str, stdin: str, env: dict, cwd: str | None,
                 on_output: Callable[[str, str, bytes], None] | None):
        self.on_output = on_output
        self.captured: list[str] = []
        self.story_id = env.get("LOOP_STORY")   # whose child this is (a story timeout stops only its own)
        self.proc = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=cwd, env=env, start_new_session=True)
        self.pgid = self.proc.pid
        self._readers = [threading.Thread(target=self._read, args=(pipe, name), daemon=True)
                         for pipe, name in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr"))]
        for t in self._readers:
            t.start()
        threading.Thread(target=self._write, args=(stdin,), daemon=True).start()

    def _write(self, text: str) -> None:
        stdin = self.proc.stdin
        assert stdin is not None             # started with stdin=PIPE
        try:
            stdin.write(text.encode())
            stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass

    def _read(self, pipe, name: str) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        fd = pipe.fileno()
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            text = decoder.decode(chunk, final=not chunk)
            if text:
                self.captured.append(text)
                if len(self.captured) > 64:
                    self.captured[:] = ["".join(self.captured)[-ERROR_TAIL:]]
            if self.on_output and (text or chunk):   # a chunk may end inside a character: no text yet
                self.on_output(name, text, chunk)
            if not chunk:
                break
        pipe.close()

    def wait(self) -> int:
        code = self.proc.wait()
        for t in self._readers:
            t.join(2)   # a grandchild holding the pipe open must not hang the run
        return code

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def tail(self) -> str:
        return "".join(self.captured)[-ERROR_TAIL:].strip()


class Runner:
    def __init__(self, prd: Prd, options: RunOptions, emit: Callable[[dict], None]):
        self.prd = prd
        self.opts = options
        self._emit = emit
        self.stop_reason: str | None = None
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._wake = threading.Condition()
        self._children: set[Child] = set()
        self._children_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._finished = threading.Event()
        self._last_emit = time.monotonic()
        self.results: dict[str, StoryResult] = {}

    # -- events ----------------------------------------------------------------
    def emit(self, type_: str, **data) -> None:
        self._last_emit = time.monotonic()
        self._emit({"type": type_, "run": self.opts.run_id, "ts": round(time.time(), 3), "data": data})

    def output_events(self, story_id: str, stream: str, text: str) -> list[tuple[str, dict]]:
        """The events one chunk of a story's output becomes, as (type, data) pairs.

        The one path every story's output takes to the stream (its log file
        gets the raw bytes before this): wrap or override it to turn an
        agent's output into richer events.
        """
        return [("output", {"story_id": story_id, "stream": stream, "text": text})]

    def _output_sink(self, story: Story, log: StoryLog) -> Callable[[str, str, bytes], None]:
        """Where a story's output goes: every byte to its log, the text through ``output_events``."""
        def on_output(stream: str, text: str, raw: bytes) -> None:
            log.write(raw)
            if text:
                for type_, data in self.output_events(story.id, stream, text):
                    self.emit(type_, **data)
        return on_output

    def _let_hooks_land(self, patience: float = HOOK_PATIENCE) -> None:
        """Events the story sent with the shell hooks wait in their spool until its shipper delivers them:
        give it a moment (at most ``patience`` s) so they reach the sidecar before the story's end does."""
        if not self.opts.server:
            return
        from loopstream.client.spool import spool_path

        spool = spool_path(self.opts.server, self.opts.run_id)
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline and _has_lines(spool):
            time.sleep(0.02)

    def _keep_alive(self) -> None:
        """task_alive whenever heartbeat_s passed without any other event, until the run ends."""
        every = self.opts.heartbeat_s
        while not self._finished.wait(min(1.0, every / 4)):
            if time.monotonic() - self._last_emit >= every:
                self.emit("task_alive")

    # -- control (any thread) ----------------------------------------------------
    def request_stop(self, reason: str = "requested") -> None:
        if self._stop.is_set():
            return
        self.stop_reason = reason
        self._stop.set()
        with self._children_lock:
            children = list(self._children)
        for c in children:
            c.signal_group(signal.SIGINT)
        with self._wake:
            self._wake.notify_all()

    def force_kill(self) -> None:
        with self._children_lock:
            for c in self._children:
                c.signal_group(signal.SIGKILL)

    def request_pause(self, reason: str | None = None) -> None:
        if self._paused.is_set() or self._stop.is_set():
            return
        self._paused.set()
        self.emit("task_paused", reason=reason or "requested")

    def request_resume(self, reason: str | None = None) -> None:
        if not self._paused.is_set():
            return
        self._paused.clear()
        self.emit("task_resumed", reason=reason or "requested")
        with self._wake:
            self._wake.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- the loop --------------------------------------------------------------------
    def run(self) -> int:
        started = time.monotonic()
        todo = [s for s in self.prd.stories if not s.passes]
        todo.sort(key=lambda s: (s.priority, s.index))
        passed_before = {s.id for s in self.prd.stories if s.passes}
        self.emit("task_started", task_id=self.prd.path.stem, task_name=self.prd.project,
                  story_count=len(todo), estimated_duration=self.opts.estimated_duration,
                  prd=str(self.prd.path), jobs=self.opts.jobs, heartbeat_s=self.opts.heartbeat_s,
                  log_dir=str(self._log_dir()),
                  stories=[{"id": s.id, "title": s.title, "priority": s.priority} for s in todo])
        threading.Thread(target=self._keep_alive, name="loop-alive", daemon=True).start()
        running: dict[str, threading.Thread] = {}
        pending = list(todo)
        while pending or running:
            with self._wake:
                for sid in [sid for sid, t in running.items() if not t.is_alive()]:
                    del running[sid]
                if self._stop.is_set():
                    if not running:
                        break
                    self._wake.wait(0.1)
                    continue
                if self._start_ready(pending, running, passed_before):
                    continue
                if pending and not running and not self._paused.is_set():
                    # Nothing runs and nothing can start: dependencies wait on skipped stories.
                    for s in pending:
                        self._skip(s)
                    pending.clear()
                    continue
                self._wake.wait(0.1)
        for s in pending:
            self._finish_story(s, "cancelled", attempts=0, duration_ms=0)
        duration_ms = int((time.monotonic() - started) * 1000)
        counts = {k: sum(1 for r in self.results.values() if r.status == k)
                  for k in ("passed", "failed", "skipped", "cancelled")}
        self._finished.set()
        if self._stop.is_set():
            self.emit("task_stopped", reason=self.stop_reason, summary=counts, duration_ms=duration_ms)
            return ExitStatus.INTERRUPTED
        self.emit("task_completed", summary={**counts, "duration_ms": duration_ms}, duration_ms=duration_ms)
        return ExitStatus.FAILURE if counts["failed"] or counts["skipped"] else ExitStatus.OK

    def _start_ready(self, pending: list[Story], running: dict[str, threading.Thread],
                     passed_before: set[str]) -> bool:
        """Start (up to --jobs) the pending stories whose dependencies passed, skip the blocked ones;
        True when any was started or skipped. Nothing starts while paused."""
        if self._paused.is_set():
            return False
        changed = False
        for s in list(pending):
            if len(running) >= self.opts.jobs:
                break
            state = self._dependency_state(s, passed_before)
            if state == "blocked":
                pending.remove(s)
                self._skip(s)
                changed = True
            elif state == "ready":
                pending.remove(s)
                t = threading.Thread(target=self._story_thread, args=(s,), daemon=True)
                running[s.id] = t
                t.start()
                changed = True
        return changed

    def _dependency_state(self, story: Story, passed_before: set[str]) -> str:
        for d in story.dependencies:
            if d in passed_before:
                continue
            r = self.results.get(d)
            if r is None:
                return "waiting"
            if r.status != "passed":
                return "blocked"
        return "ready"

    def _skip(self, story: Story) -> None:
        self._finish_story(story, "skipped", attempts=0, duration_ms=0)

    def _finish_story(self, story: Story, status: str, attempts: int, duration_ms: int,
                      log: StoryLog | None = None) -> None:
        self.results[story.id] = StoryResult(status, attempts, duration_ms)
        if log is not None:
            log.close()
        self.emit("story_completed", story_id=story.id, status=status, duration_ms=duration_ms, attempts=attempts,
                  output_bytes=log.output_bytes if log else 0,
                  log=str(log.path) if log and log.path.exists() else None)

    def _log_dir(self) -> Path:
        return (self.opts.log_dir or story_log_dir()) / _file_name(self.opts.run_id)

    def _story_log(self, story: Story) -> StoryLog:
        def warn(message: str) -> None:
            self.emit("error_occurred", story_id=story.id, error_type="log_write_failed", error_message=message,
                      retryable=False, severity="warning")
        return StoryLog(self._log_dir() / f"{_file_name(story.id)}.log", warn)

    def _story_thread(self, story: Story) -> None:
        t0 = time.monotonic()
        status, attempt = "failed", 0
        log = self._story_log(story)
        try:
            for attempt in range(1, self.opts.max_attempts + 1):
                if self._stop.is_set():
                    status = "cancelled"
                    break
                log.begin_attempt(attempt)
                status = self._attempt(story, attempt, log)
                if status != "failed":
                    break
                if attempt < self.opts.max_attempts:
                    self.emit("error_occurred", story_id=story.id, error_type="attempt_failed",
                              error_message=f"attempt {attempt} of {self.opts.max_attempts} failed; retrying",
                              retryable=True)
        except Exception as e:  # a bug in the runner must not leave the story hanging
            self.emit("error_occurred", story_id=story.id, error_type="runner_error",
                      error_message=f"{type(e).__name__}: {e}", retryable=False)
            status = "failed"
        if status == "passed" and self.opts.update:
            try:
                with self._write_lock:
                    mark_passed(self.prd.path, story.id)
            except (OSError, ValueError) as e:
                self.emit("error_occurred", story_id=story.id, error_type="prd_write_failed",
                          error_message=f"could not write passes: true to {self.prd.path}: {e}", retryable=False)
        self._finish_story(story, status, attempts=attempt, duration_ms=int((time.monotonic() - t0) * 1000),
                           log=log)
        with self._wake:
            self._wake.notify_all()

    def _env(self, story: Story) -> dict:
        env = dict(os.environ)
        env.update(LOOP_RUN=self.opts.run_id, LOOP_STORY=story.id, LOOP_PRD=str(self.prd.path))
        if self.opts.server:
            env["LOOP_SERVER"] = self.opts.server
        return env

    def _spawn(self, command: str, stdin: str, env: dict, on_output=None) -> tuple[int, Child]:
        child = Child(command, stdin, env, self.opts.cwd, on_output)
        with self._children_lock:
            self._children.add(child)
        if self._stop.is_set():
            child.signal_group(signal.SIGINT)
        killer = threading.Thread(target=self._reap_after_grace, args=(child,), daemon=True)
        killer.start()
        try:
            code = child.wait()
        finally:
            with self._children_lock:
                self._children.discard(child)
        if self._stop.is_set():
            child.signal_group(signal.SIGKILL)   # whatever of the group outlived its leader
        return code, child

    def _reap_after_grace(self, child: Child) -> None:
        """Once a stop is asked for: SIGINT went out; SIGKILL the group after the grace period."""
        kill_after_grace(child.proc, self._stop, self.opts.grace, lambda: child.signal_group(signal.SIGKILL))

    def _check_criteria(self, story: Story, env: dict) -> str:
        """Run the story's acceptance checks, one event each: "passed", "failed" or "cancelled" (a stop)."""
        ok = True
        for index, criterion in enumerate(story.criteria):
            if criterion.check is None:
                continue
            t0 = time.monotonic()
            ccode, cchild = self._spawn(criterion.check, "", env)
            if self._stop.is_set():
                return "cancelled"
            if ccode == 0:
                self.emit("ac_completed", story_id=story.id, ac_index=index, ac_text=criterion.text,
                          duration_ms=int((time.monotonic() - t0) * 1000))
            else:
                ok = False
                self.emit("ac_failed", story_id=story.id, ac_index=index, ac_text=criterion.text, exit_code=ccode,
                          error=f"check exited {ccode}" + (f": {cchild.tail()}" if cchild.tail() else ""))
        return "passed" if ok else "failed"

    def _verify(self, story: Story, env: dict) -> str:
        """Run the PRD's verification commands: "passed", "failed" or "cancelled" (a stop)."""
        ok = True
        for name, command in self.prd.verification.items():
            t0 = time.monotonic()
            vcode, vchild = self._spawn(command, "", env)
            if self._stop.is_set():
                return "cancelled"
            status = "passed" if vcode == 0 else "failed"
            self.emit("verification_completed", story_id=story.id, name=name, command=command[:500], status=status,
                      exit_code=vcode, duration_ms=int((time.monotonic() - t0) * 1000),
                      message=f"{story.id} verification {name} {status} (exit {vcode})")
            if vcode != 0:
                ok = False
                self.emit("error_occurred", story_id=story.id, error_type="verification_failed",
                          error_message=f"{name} ({command}) exited {vcode}: {vchild.tail()}", retryable=False)
        return "passed" if ok else "failed"

    def _command_for(self, story: Story, prompt_file: str) -> str:
        if story.command:
            return story.command
        assert self.prd.agent is not None    # prd.validate: a story without a command needs the agent template
        return self.prd.agent.format(prompt_file=prompt_file, story_id=story.id, title=story.title,
                                     prd=str(self.prd.path))

    def _attempt(self, story: Story, attempt: int, log: StoryLog) -> str:
        self.emit("story_started", story_id=story.id, title=story.title,
                  acceptance_criteria=[c.text for c in story.criteria], priority=story.priority,
                  attempt=attempt, description=story.description)
        env = self._env(story)
        prompt = story.prompt(self.prd)
        with tempfile.NamedTemporaryFile("w", prefix=f"loop-{story.id}-", suffix=".md", delete=False) as f:
            f.write(prompt)
            prompt_file = f.name
        try:
            try:
                command = self._command_for(story, prompt_file)
            except (KeyError, IndexError, ValueError) as e:
                self.emit("error_occurred", story_id=story.id, error_type="bad_agent_template",
                          error_message=f"the agent template has an unknown placeholder: {e}", retryable=False)
                return "failed"

            on_output = self._output_sink(story, log)
            stdin = json.dumps({**story.as_json(), "prompt": prompt, "run": self.opts.run_id})
            code, child = self._spawn(command, stdin, env, on_output)
        finally:
            os.unlink(prompt_file)
        self._let_hooks_land()
        self.emit("output", story_id=story.id, stream="stdout", text="", final=True, exit_code=code)
        if self._stop.is_set():
            return "cancelled"
        ok = code == 0
        if not ok:
            self.emit("error_occurred", story_id=story.id, error_type="command_failed",
                      error_message=f"exit {code}: {child.tail()}", retryable=attempt < self.opts.max_attempts)
        checks = self._check_criteria(story, env)
        if checks == "cancelled":
            return "cancelled"
        verified = self._verify(story, env)
        if verified == "cancelled":
            return "cancelled"
        ok = ok and checks == "passed" and verified == "passed"
        return "passed" if ok else "failed"
