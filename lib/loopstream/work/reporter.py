"""Report from Python: ``Reporter`` (a run's events from a with-block) and ``tqdm`` (a progress bar).

Every call only queues an event on an Outbox, whose thread delivers them in
order, retrying through rate limits and restarts: the caller never waits on
the sidecar and never sees an exception because of it. A mistake of the
caller's own (an invalid event type, a value JSON cannot carry) raises at
once, where it was made, instead of being refused later by the sidecar.

tqdm is an optional extra: this module imports it only when ``tqdm`` is used.
"""
from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import secrets
import threading
import time
from datetime import datetime
from typing import Any, Literal

from loopstream.client.defaults import DEFAULT_SERVER
from loopstream.core.events import OUTPUT_CHUNK, RUN_RE, STREAM_ONLY, TYPE_RE

log = logging.getLogger("loopstream")


_active: list[Reporter] = []      # the with-blocks open now, innermost last (what tqdm reports to)
_active_lock = threading.Lock()


def _new_run_id(name: str | None) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", name or "python")[:32].strip("-") or "python"
    return f"{stem}-{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _json_copy(data: dict) -> dict:
    """A copy the outbox thread can send later whatever the caller does to the original; raises
    ValueError for what JSON cannot carry (NaN, infinity, objects)."""
    try:
        return json.loads(json.dumps(data, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"event data must be JSON (finite numbers, text, lists, objects): {e}") from e


class Reporter:
    """A run reported from Python.

    >>> with Reporter(run="nightly", name="Nightly") as r:
    ...     r.progress(40, "compiling")
    ...     r.output("compiled 12 files\\n")
    ...     r.emit("custom", k=1)

    The with-block sends ``task_started`` on entry and ``task_completed`` on exit:
    ``passed``, or ``failed`` with the exception's message when one escapes (it
    still propagates; Ctrl-C gives ``task_stopped``). Without ``run=`` inside
    ``loop exec`` or ``loop run`` (``LOOP_RUN`` is set), it reports into that run
    and leaves the run's start and end to it. On exit it waits at most
    ``close_timeout`` seconds for delivery (less when the sidecar is down).
    A run of its own announces ``heartbeat_s`` and sends ``task_alive`` when it
    has been quiet that long, so a process killed outright leaves no ghost run.
    """

    def __init__(self, run: str | None = None, name: str | None = None, *, server: str | None = None,
                 token: str | None = None, close_timeout: float = 2.0, heartbeat_s: float | None = 10.0):
        from loopstream.client.outbox import Outbox

        if run is not None and not (isinstance(run, str) and RUN_RE.match(run)):
            raise ValueError(f"run must match [A-Za-z0-9._-]{{1,64}}, got {run!r}")
        inherited = os.environ.get("LOOP_RUN") if run is None else None
        self.owns_run = not (inherited and RUN_RE.match(inherited))
        self.run = run or (inherited if not self.owns_run else _new_run_id(name))
        self.name = name or self.run
        self.server = (server or os.environ.get("LOOP_SERVER") or DEFAULT_SERVER).rstrip("/")
        self.close_timeout = close_timeout
        self.heartbeat_s = heartbeat_s
        self._last_emit = time.monotonic()
        self._done = threading.Event()
        self._started: float | None = None
        self._finished = False
        self._closed = False
        self._warned = False
        self._outbox = Outbox(self.server, token if token is not None else os.environ.get("LOOP_TOKEN"),
                              on_status=self._on_status)
        atexit.register(self.close)     # events queued by a script that never closes still leave

    # -- what a caller reports -------------------------------------------------------------
    def start(self) -> Reporter:
        """Send ``task_started`` (once; the with-block does it)."""
        if self._started is None:
            self._started = time.monotonic()
            if self.owns_run:
                self.emit("task_started", task_id=self.name, task_name=self.name, story_count=None,
                          estimated_duration=None, source="python", heartbeat_s=self.heartbeat_s)
                if self.heartbeat_s:
                    threading.Thread(target=self._keep_alive, name="loop-alive", daemon=True).start()
        return self

    def progress(self, percent: float | None = None, message: str | None = None, *,
                 current: float | None = None, total: float | None = None) -> None:
        """A ``progress`` event: percent (0–100) and/or current of total, and a message."""
        data: dict[str, Any] = {k: v for k, v in (("percent", percent), ("current", current), ("total", total))
                                if v is not None}
        for key, value in data.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number, got {value!r}")
        if message is not None:
            data["message"] = str(message)
        self.emit("progress", **data)

    def output(self, text: str, stream: str = "stdout") -> None:
        """Output text, shown in the run's live output (sent in chunks of at most 4 KB)."""
        text = str(text)
        for i in range(0, len(text), OUTPUT_CHUNK):
            self.emit("output", stream=stream, text=text[i:i + OUTPUT_CHUNK])

    def emit(self, type_: str, **data: Any) -> None:
        """Any event: ``type_`` as in the SPEC (``[a-z][a-z0-9_.:-]{0,63}``), ``data`` JSON."""
        if not isinstance(type_, str) or not TYPE_RE.match(type_) or type_ in STREAM_ONLY:
            raise ValueError(f"event type must match [a-z][a-z0-9_.:-]{{0,63}} (not hello, heartbeat or "
                             f"reset), got {type_!r}")
        if self._closed:
            return
        self._last_emit = time.monotonic()
        self._outbox.put({"type": type_, "run": self.run, "ts": round(time.time(), 3), "data": _json_copy(data)})

    def finish(self, status: str = "passed", error: str | None = None) -> None:
        """Send how the run ended (once): ``task_completed`` with ``status`` passed or failed, after an
        ``error_occurred`` carrying ``error``; status ``stopped`` sends ``task_stopped``."""
        if self._finished or not self.owns_run:
            return
        self._finished = True
        self._done.set()
        duration_ms = int((time.monotonic() - (self._started or time.monotonic())) * 1000)
        if status == "stopped":
            self.emit("task_stopped", reason=error or "stopped", duration_ms=duration_ms)
            return
        if error:
            self.emit("error_occurred", error_type="exception", error_message=error, retryable=False)
        ending = {"reason": error} if error else {}
        self.emit("task_completed", status="failed" if status == "failed" else "passed", **ending,
                  summary={"duration_ms": duration_ms}, duration_ms=duration_ms)

    def close(self) -> bool:
        """Deliver what is queued, waiting at most ``close_timeout`` s; True when all of it left."""
        if self._closed:
            return True
        self._closed = True
        self._done.set()
        atexit.unregister(self.close)
        deadline = time.monotonic() + self.close_timeout
        while self._outbox.status.queued and not self._sidecar_failing() and time.monotonic() < deadline:
            time.sleep(0.01)     # delivering; a sidecar that refuses connections is not waited for
        delivered = self._outbox.close(timeout=0 if self._sidecar_failing() else
                                       max(0.0, deadline - time.monotonic()))
        if not delivered:
            log.warning("loopstream: %d events for run %s could not be delivered to %s (%s)",
                        self._outbox.status.dropped, self.run, self.server, self._outbox.status.last_error)
        return delivered

    # -- the with-block ---------------------------------------------------------------------
    def __enter__(self) -> Reporter:
        self.start()
        with _active_lock:
            _active.append(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> Literal[False]:
        with _active_lock:
            if self in _active:
                _active.remove(self)
        if exc_type is None:
            self.finish("passed")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("stopped", "interrupted (Ctrl-C)")
        else:
            self.finish("failed", f"{exc_type.__name__}: {exc}" if str(exc) else exc_type.__name__)
        self.close()
        return False

    def _keep_alive(self) -> None:
        """task_alive whenever heartbeat_s passed without another event: the sidecar finishes a run
        that announced heartbeat_s and went silent (its process killed) as interrupted."""
        assert self.heartbeat_s is not None  # started only for a run that announced one
        while not self._done.wait(min(1.0, self.heartbeat_s / 4)):
            if time.monotonic() - self._last_emit >= self.heartbeat_s:
                self.emit("task_alive")

    def _sidecar_failing(self) -> bool:
        return self._outbox.status.state in ("retrying", "error")

    def _on_status(self, status) -> None:
        if status.state in ("retrying", "error") and not self._warned:
            self._warned = True
            log.warning("loopstream: %s; carrying on, events are sent when it answers", status.last_error)


def active() -> Reporter | None:
    """The innermost ``with Reporter(...)`` block open now, if any."""
    with _active_lock:
        return _active[-1] if _active else None


# -- tqdm ---------------------------------------------------------------------------------------

_tqdm_class: type | None = None


def tqdm_class() -> type:
    """``loopstream.tqdm``: built on first use, so tqdm stays an optional extra."""
    global _tqdm_class
    if _tqdm_class is None:
        try:
            from tqdm.auto import tqdm as tqdm_auto
        except ImportError as e:
            raise ImportError("loopstream.tqdm needs tqdm: pip install 'loopstream[tqdm]'") from e
        _tqdm_class = _define_tqdm(tqdm_auto)
    return _tqdm_class


def _bar_reporter(reporter: Reporter | None, run: str | None, desc: str | None) -> tuple[Reporter, bool]:
    """Where a bar reports: the reporter given, else the innermost with-block, else a run of its own
    (or LOOP_RUN's, inside loop exec / loop run). True when the bar owns (and closes) it."""
    if reporter is not None:
        return reporter, False
    current = active()
    if current is not None and run is None:
        return current, False
    return Reporter(run=run, name=desc or "tqdm").start(), True


class ReportingBar:
    """The part of ``loopstream.tqdm`` that reports; mixed in before ``tqdm.auto.tqdm`` (whose
    methods ``super()`` reaches), so this module needs no tqdm until a bar is made.

    Sends ``progress`` at most once per ``interval`` seconds (default 1), from tqdm's own
    ``display`` calls (as tqdm.contrib.slack does), and a last one when the bar closes
    (100 % when it got to its total). Extra keyword arguments: ``reporter`` (a Reporter;
    default: the innermost ``with Reporter(...)`` block, else a run of the bar's own named
    after ``desc``), ``run`` (the run id for a bar of its own), ``interval``.
    """

    _loop_closing = True     # a bar whose __init__ failed has nothing to report
    # tqdm's own attributes, which this mixin reads (declared for the type checker; tqdm sets them).
    total: Any
    n: Any
    disable: bool
    format_dict: dict
    format_meter: Any

    def __init__(self, *args, reporter: Reporter | None = None, run: str | None = None,
                 interval: float = 1.0, **kwargs):
        self._loop_interval = interval
        self._loop_sent_at: float | None = None
        self._loop_target = (reporter, run, kwargs.get("desc"))
        self._loop_reporter: Reporter | None = None     # found at the first report: a disabled bar has none
        self._loop_owned = False
        self._loop_closing = False
        super().__init__(*args, **kwargs)

    def display(self, *args, **kwargs):
        shown = super().display(*args, **kwargs)
        if not self._loop_closing:
            self._loop_report(final=False)
        return shown

    def close(self) -> None:
        if self._loop_closing:
            return super().close()  # type: ignore[misc]  # tqdm's, after this mixin in the MRO
        self._loop_closing = True
        enabled = not self.disable
        super().close()  # type: ignore[misc]  # tqdm's: sets disable, its guard against closing twice
        if enabled and self._loop_reporter is not None:
            self._loop_report(final=True)
            if self._loop_owned:
                self._loop_finish()

    def _loop_finish(self) -> None:
        done = not self.total or self.n >= self.total
        assert self._loop_reporter is not None   # only a bar that reported finishes its run
        self._loop_reporter.finish("passed" if done else "failed",
                                   None if done else f"the bar ended at {self.n} of {self.total}")
        self._loop_reporter.close()

    def _loop_report(self, final: bool) -> None:
        now = time.monotonic()
        if not final and (self.disable or (self._loop_sent_at is not None
                                           and now - self._loop_sent_at < self._loop_interval)):
            return
        self._loop_sent_at = now
        if self._loop_reporter is None:
            self._loop_reporter, self._loop_owned = _bar_reporter(*self._loop_target)
        total = self.total if self.total and math.isfinite(self.total) else None
        percent = min(100.0, round(self.n * 100 / total, 2)) if total else None
        fmt = {**self.format_dict, "bar_format": "{l_bar}{n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"}
        self._loop_reporter.progress(percent, self.format_meter(**fmt).strip(), current=self.n, total=total)


def _define_tqdm(base: type) -> type:
    return type("tqdm", (ReportingBar, base), {"__doc__": ReportingBar.__doc__, "__module__": __name__})


def trange(*args, **kwargs):
    """``loopstream.tqdm(range(*args), **kwargs)``."""
    return tqdm_class()(range(*args), **kwargs)
