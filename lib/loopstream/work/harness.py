"""Around a run (`loop run`, `loop exec`, `loop tail`): its name, its sidecar, its ETA, the control
listener (stop/pause/resume from the dashboard or `loop stop`), signal handling, and what to tell
the user about delivery. The commands in cli/ parse, call these, and print.

No Click here: whatever is said to the user goes through a ``say(line)`` callback.
"""
from __future__ import annotations

import re
import secrets
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

CLOSE_BUDGET = 2.5   # seconds a run gives its outbox after the last story: lifecycle first, output elided

Say = Callable[[str], None]

STOP_SIGNALS = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)",
                signal.SIGHUP: "hangup (SIGHUP)"}


class Controllable(Protocol):
    """What the control listener and the signal handlers drive: a Runner, an Exec, a Tail."""

    def request_stop(self, reason: str) -> None: ...
    def request_pause(self, reason: str | None) -> None: ...
    def request_resume(self, reason: str | None) -> None: ...
    def force_kill(self) -> None: ...


def new_run_id(source: str) -> str:
    """A run name from a file or command name, the time and 4 random hex digits."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", Path(source).stem)[:32] or "run"
    return f"{stem}-{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def estimate(server: str | None, token: str | None, task_id: str, stories: int) -> float | None:
    """The ETA rule: seconds the stories took in this PRD's latest finished run, scaled to this run."""
    if not server or not stories:
        return None
    from loopstream.client.http import SidecarError, list_runs

    try:
        runs = list_runs(server, token, timeout=1)
    except SidecarError:
        return None
    for r in runs:
        c = r.get("counts") or {}
        decided = c.get("completed", 0) + c.get("failed", 0)
        if r.get("task_id") == task_id and r.get("status") in ("passed", "failed") and decided:
            return round(r["elapsed_s"] / decided * stories, 1)
    return None


@dataclass
class RunSidecar:
    """The sidecar a run reports to: ``url``, or None and ``absent``, what the live view's Sidecar
    line says instead (``not running (see LOG)``)."""

    url: str | None
    absent: str = "off"

    def connection(self, state: str) -> str:
        """The live view's Sidecar line: the outbox's ``state`` and the URL, or why there is none."""
        return f"{state} {self.url}" if self.url else self.absent


def sidecar_for_run(server: str, no_embed: bool, say: Say) -> RunSidecar:
    """The sidecar this run reports to: the one at ``server``, one left by an earlier run, or a new
    detached one (it outlives the run; `loop serve --idle-exit`); or none, and why."""
    from loopstream.client.http import healthy
    from loopstream.work.embedded import EmbeddedSidecar, SidecarStartError

    if healthy(server):
        return RunSidecar(server)
    if no_embed:
        say(f"loop: no sidecar at {server}; running without one (--no-embed)")
        return RunSidecar(None, "not running (--no-embed)")
    try:
        embedded = EmbeddedSidecar.find_or_start(server)
    except SidecarStartError as e:
        say(f"loop: no sidecar at {server}, and the one started for this run failed: {e.cause} "
            f"(log: {e.log}); running without one")
        return RunSidecar(None, f"not running (see {e.log})")
    how = "reusing the sidecar an earlier run started" if embedded.reused else "started a sidecar"
    say(f"loop: {how} at {embedded.url} (pid {embedded.pid}, log {embedded.log_path}); it keeps serving "
        "after the run until idle (--idle-exit)")
    return RunSidecar(embedded.url)


# -- control: the sidecar's stop/pause/resume, and signals ------------------------------------------

def apply_control_snapshot(runs: list | None, run_id: str, target: Controllable) -> None:
    """A stop or pause already requested when the listener (re)connects, from the run's snapshot."""
    for s in runs or []:
        if s.get("run") != run_id:
            continue
        c = s.get("control") or {}
        if c.get("stop_requested"):
            target.request_stop(c["stop_requested"])
        elif c.get("pause_requested"):
            target.request_pause("requested")


def apply_control_event(name: str, data: dict, run_id: str, target: Controllable) -> None:
    """One frame of the control stream: a hello/reset snapshot or a *_requested event."""
    if name in ("hello", "reset"):
        apply_control_snapshot(data.get("runs"), run_id, target)
        return
    reason = (data.get("data") or {}).get("reason")
    if name == "stop_requested":
        target.request_stop(reason or "stop requested")
    elif name == "pause_requested":
        target.request_pause(reason)
    elif name == "resume_requested":
        target.request_resume(reason)


def listen_for_control(server: str, token: str | None, run_id: str, target: Controllable,
                       done: threading.Event, say: Say) -> None:
    """Act on stop/pause/resume requests for this run, from its snapshot and live events, until ``done``."""
    from loopstream.client.http import SidecarError
    from loopstream.client.stream import stream

    try:
        for _, name, data in stream(server, token, runs=[run_id], stop=done,
                                    types=["stop_requested", "pause_requested", "resume_requested"]):
            apply_control_event(name, data, run_id, target)
    except SidecarError as e:
        say(f"loop: control from the sidecar is off: {e}")


def stop_on_signals(target: Controllable) -> dict:
    """SIGINT, SIGTERM and SIGHUP all stop the run the same way (grace, then SIGKILL); a second one
    kills the children at once. Returns the previous handlers."""
    received: list[int] = []

    def handler(signum, frame) -> None:
        received.append(signum)
        if len(received) == 1:
            target.request_stop(STOP_SIGNALS[signum])
        else:
            target.force_kill()

    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}


def restore_signals(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextmanager
def supervised(target: Controllable, server: str | None, token: str | None, run_id: str, outbox: Any,
               say: Say) -> Iterator[None]:
    """While the body runs: the control listener (with a sidecar) and the stop signals; afterwards
    the handlers are restored and the outbox gets CLOSE_BUDGET seconds to deliver."""
    done = threading.Event()
    if server:
        threading.Thread(target=listen_for_control, args=(server, token, run_id, target, done, say),
                         daemon=True).start()
    previous = stop_on_signals(target)
    try:
        yield
    finally:
        done.set()
        restore_signals(previous)
        outbox.close(timeout=CLOSE_BUDGET)


# -- what the user is told ---------------------------------------------------------------------------

class EventFeed:
    """Where a run's events go: the outbox, a snapshot folded as the dashboard folds it (for the live
    view), and, when ``print_line`` is given, one plain line per event (empty output left out)."""

    def __init__(self, outbox: Any, print_line: Say | None = None, fold: bool = True):
        self.outbox, self.print_line, self.fold = outbox, print_line, fold
        self.snapshot: dict | None = None
        self._lock = threading.Lock()

    def __call__(self, event: dict) -> None:
        from loopstream.core import state
        from loopstream.view import plain_line

        self.outbox.put(event)
        if not self.fold or event["type"] == "task_alive":
            return
        with self._lock:
            self.snapshot = state.apply(self.snapshot, event)
        if self.print_line and not (event["type"] == "output" and not event["data"].get("text")):
            self.print_line(plain_line(event))

    def log_warning(self, run_id: str, say: Say) -> Say:
        """A log file's warn callback: one line for the user and an error_occurred (a warning) in the run."""
        def warn(message: str) -> None:
            say(f"loop: {message}")
            self({"type": "error_occurred", "run": run_id, "data": {
                "error_type": "log_write_failed", "error_message": message, "retryable": False,
                "severity": "warning"}})
        return warn

    def connection(self, sidecar: RunSidecar) -> str:
        """The live view's connection line: the outbox's state, and its queue when one builds up."""
        st = self.outbox.status
        return sidecar.connection(st.state) + (f" ({st.queued} queued)" if sidecar.url and st.queued > 1 else "")


def delivery_report(status: Any, server: str | None, spool: Path | None = None) -> list[str]:
    """Lines about what did not reach the sidecar as sent: refused (by reason), undelivered (and where
    it waits to be delivered, when handed to the hooks' ``spool``), elided."""
    lines = []
    if status.refused:
        total = sum(status.refused.values())
        why = "; ".join(f"{n} × {reason}" for reason, n in status.refused.items())
        lines.append(f"loop: {total} event{'s' * (total > 1)} refused by the sidecar at {server}: {why}")
    if status.undelivered and spool:
        lines.append(f"loop: {status.undelivered} events not delivered to {server} within {CLOSE_BUDGET:g} s "
                     f"({status.last_error or 'no answer'}); queued in {spool}, a shipper delivers them in order "
                     "when the sidecar answers")
    elif status.undelivered:
        lines.append(f"loop: {status.undelivered} events not delivered to {server} within {CLOSE_BUDGET:g} s "
                     f"({status.last_error or 'no answer'}); the sidecar will mark the run interrupted")
    if status.elided_bytes:
        lines.append(f"loop: {status.elided_bytes} bytes of output were elided from the stream (faster than the "
                     "sidecar's rate limit); every story's log file has all of it")
    return lines


def hand_over_leftovers(server: str | None, run_id: str, outbox: Any, token: str | None) -> Path | None:
    """What the outbox could not deliver in time goes to the hooks' spool (a shipper delivers it later)."""
    from loopstream.client.spool import hand_to_spool

    if not server or not outbox.leftovers:
        return None
    return hand_to_spool(server, run_id, outbox.leftovers, token)
