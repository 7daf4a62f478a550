"""Tell someone when a run finishes: one message per finished run to a webhook or an ntfy topic;
and when a Claude Code session starts waiting for its user (hook sessions: formats/hook_session.py), one
message per wait ("Claude needs you in PROJECT: MESSAGE"). A session that ends is not a run finishing.

``loop serve --notify URL`` builds a :class:`Notifier`. The sidecar calls
:meth:`Notifier.finished` when a publish finishes a run; that only builds the
message and puts it on a bounded queue, so a slow or dead receiver never delays
the stream. A background worker (a greenlet under gunicorn's gevent worker,
where ``threading`` is monkey-patched) sends it, retrying a few times with
backoff. When the queue is full the message is dropped and counted.

Formats:
- ``json`` (default): POST ``application/json`` with run, status, task, counts,
  percent, duration_s, stopped_at, url and a one-line ``text``.
- ``ntfy``: the URL is an ntfy topic (``https://ntfy.sh/mytopic``); the message
  goes to the server's root as ntfy's JSON publish format (topic, title,
  message, tags, click, priority), which carries UTF-8 titles safely.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("loopstream.notify")

FORMATS = ("json", "ntfy")
RETRY_DELAYS = (1.0, 2.0, 4.0)          # seconds before the 2nd, 3rd and 4th attempt
QUEUE_SIZE = 100
TIMEOUT = 5.0
FINISHED = ("passed", "failed", "stopped")
FINISHING = ("task_completed", "task_stopped")   # the event types that finish a run
TAGS = {"passed": ["white_check_mark"], "failed": ["x"], "stopped": ["octagonal_sign"], "waiting_for_input": ["bell"]}
WAITS_KEPT = 1000       # sessions whose last wait told is remembered (so each wait is told once)
WORDS = {"passed": "passed", "failed": "failed", "stopped": "was stopped"}


class NotifyError(ValueError):
    """A --notify option that cannot work (bad URL or format)."""


def check_target(url: str, fmt: str) -> None:
    """Raise NotifyError unless ``url`` is an http(s) URL usable with ``fmt``."""
    if fmt not in FORMATS:
        raise NotifyError(f"--notify-format {fmt!r}: use one of {', '.join(FORMATS)}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise NotifyError(f"--notify {url!r}: give an http:// or https:// URL")
    if fmt == "ntfy" and not parts.path.strip("/"):
        raise NotifyError(f"--notify {url!r}: with --notify-format ntfy give a topic URL like https://ntfy.sh/mytopic")


def run_link(dashboard_url: str | None, run: str) -> str | None:
    """The dashboard address that opens ``run``."""
    if not dashboard_url:
        return None
    return dashboard_url.rstrip("/") + "/?" + urllib.parse.urlencode({"run": run})


def message(snap: dict, dashboard_url: str | None = None) -> dict:
    """The JSON message for one finished run, copied out of its snapshot (which keeps changing)."""
    counts = dict(snap.get("counts") or {})
    status: Any = snap.get("status")
    name = snap.get("task_name") or snap.get("run")
    duration = snap.get("elapsed_s")
    total = counts.get("total") or 0
    done = f"{counts.get('completed', 0)}/{total} stories passed" if total else f"{snap.get('percent', 0):.0f}%"
    text = f"{name} {WORDS.get(status, status)}: {done}"
    if snap.get("stopped_at"):
        text += f", stopped at {snap['stopped_at']}"
    if isinstance(duration, (int, float)):
        text += f", in {_duration(duration)}"
    return {"run": snap.get("run"), "status": status, "task_name": snap.get("task_name"), "counts": counts,
            "percent": snap.get("percent"), "duration_s": duration, "stopped_at": snap.get("stopped_at"),
            "started_at": snap.get("started_at"), "finished_at": snap.get("finished_at"),
            "url": run_link(dashboard_url, str(snap.get("run"))), "text": text}


def wait_message(snap: dict, dashboard_url: str | None = None) -> dict:
    """The JSON message for a Claude Code session that started waiting for its user."""
    session = snap.get("session") or {}
    project = session.get("project") or snap.get("task_name") or snap.get("run")
    waiting_for = session.get("waiting_for") or "it is waiting for you"
    return {"run": snap.get("run"), "status": "waiting_for_input", "task_name": project, "project": project,
            "waiting_for": waiting_for, "since": session.get("since"), "cwd": session.get("cwd"),
            "url": run_link(dashboard_url, str(snap.get("run"))), "title": f"Claude needs you in {project}",
            "text": f"Claude needs you in {project}: {waiting_for}"}


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {(s % 3600) // 60:02d}m"


def ntfy_request(topic_url: str, msg: dict) -> tuple[str, dict]:
    """ntfy's JSON publish: POST to the server root with the topic in the body."""
    parts = urllib.parse.urlsplit(topic_url)
    base, _, topic = parts.path.rstrip("/").rpartition("/")
    root = urllib.parse.urlunsplit((parts.scheme, parts.netloc, base + "/", "", ""))
    body = {"topic": topic, "title": msg.get("title") or f"loop: {msg['task_name'] or msg['run']} {msg['status']}",
            "message": msg["text"], "tags": TAGS.get(msg["status"], ["loop"]),
            "priority": 3 if msg["status"] == "passed" else 4}
    if msg["url"]:
        body["click"] = msg["url"]
    return root, body


@dataclass
class Notifier:
    """Sends one message per finished run, off the request path, with retries."""

    url: str
    fmt: str = "json"
    min_duration: float = 0.0
    dashboard_url: str | None = None
    retry_delays: tuple[float, ...] = RETRY_DELAYS
    sleep: Callable[[float], None] = time.sleep
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    skipped: int = 0
    _queue: queue.Queue = field(default_factory=lambda: queue.Queue(QUEUE_SIZE))
    _worker: threading.Thread | None = None
    _waits: dict = field(default_factory=dict)     # run -> the ``since`` of the last wait told

    def __post_init__(self) -> None:
        check_target(self.url, self.fmt)

    def published(self, broker, result) -> None:
        """After a publish, queue a message for every run it finished. The memory broker names
        them and its snapshots are current; a Redis broker's replica folds the events a moment
        later, so for those the worker reads the snapshot once the replica has caught up."""
        waits = {e.run for e in result.events if e.type == "session_state"}
        if broker.fans_out_on_publish:
            for run in result.finished:
                self.finished(result.finished_snapshots.get(run) or broker.snapshot(run))
            for run in waits:
                msg = self._wait(broker.snapshot(run))
                if msg is not None:
                    self._put(msg, run)
            return
        for e in result.events:
            if e.type in FINISHING:
                self._put(lambda run=e.run: self._finished(_caught_up_snapshot(broker, run)), e.run)
        for run in waits:
            self._put(lambda run=run: self._wait(_caught_up_snapshot(broker, run)), run)

    def finished(self, snap: dict | None) -> bool:
        """Queue the message for a run that just finished; False when skipped or the queue is full."""
        if snap is None or not self._wanted(snap):
            return False
        return self._put(message(snap, self.dashboard_url), snap.get("run"))

    def _finished(self, snap: dict | None) -> dict | None:
        return message(snap, self.dashboard_url) if snap is not None and self._wanted(snap) else None

    def _wait(self, snap: dict | None) -> dict | None:
        """The message for a session that is waiting for its user, once per wait (a wait is known by
        its ``since``); None otherwise."""
        session = snap.get("session") if snap else None
        if not isinstance(session, dict) or session.get("state") != "waiting_for_input":
            return None
        run = snap.get("run") if snap else None
        if self._waits.get(run) == session.get("since"):
            return None
        self._waits.pop(run, None)
        self._waits[run] = session.get("since")
        while len(self._waits) > WAITS_KEPT:
            self._waits.pop(next(iter(self._waits)))
        return wait_message(snap, self.dashboard_url) if snap else None

    def _wanted(self, snap: dict | None) -> bool:
        if not snap or snap.get("status") not in FINISHED or snap.get("session") is not None:
            return False
        duration = snap.get("elapsed_s")
        if self.min_duration and isinstance(duration, (int, float)) and duration < self.min_duration:
            self.skipped += 1
            return False
        return True

    def _put(self, item, run) -> bool:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            log.warning("notify queue full: dropped the message for run %s", run)
            return False
        self._ensure_worker()
        return True

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._drain, name="loop-notify", daemon=True)
            self._worker.start()

    def _drain(self) -> None:
        while True:
            msg = self._queue.get()
            if msg is None:
                return
            if callable(msg):   # a snapshot still to be read (Redis): its message, or None
                msg = msg()
                if msg is None:
                    continue
            if self.deliver(msg):
                self.sent += 1
            else:
                self.failed += 1

    def deliver(self, msg: dict) -> bool:
        """POST one message, retrying on connection errors, 429 and 5xx; True once accepted."""
        url, body = (self.url, msg) if self.fmt == "json" else ntfy_request(self.url, msg)
        data = json.dumps(body, ensure_ascii=False).encode()
        for attempt in range(len(self.retry_delays) + 1):
            if attempt:
                self.sleep(self.retry_delays[attempt - 1])
            outcome = _post(url, data)
            if outcome == "ok":
                return True
            if outcome == "fatal":
                break
        log.warning("could not notify %s about run %s", url, msg.get("run"))
        return False

    def close(self, timeout: float = 2.0) -> None:
        """Let queued messages go out for up to ``timeout`` seconds, then stop the worker."""
        if self._worker is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._worker.join(timeout)


def _caught_up_snapshot(broker, run: str) -> dict | None:
    """The run's snapshot once this worker's replica holds every event accepted so far."""
    from loopstream.sidecar.brokers.memory import BackendDown

    try:
        broker.catch_up()
        return broker.snapshot(run)
    except BackendDown as e:  # Redis is away: nothing to tell, and the worker goes on
        log.warning("could not read run %s to notify about it: %s", run, e)
        return None


def _post(url: str, data: bytes) -> str:
    """"ok", "retry" (network error, 408, 429, 5xx) or "fatal" (any other refusal)."""
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "loop-notify"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            response.read(1024)
        return "ok"
    except urllib.error.HTTPError as e:
        return "retry" if e.code in (408, 429) or e.code >= 500 else "fatal"
    except (OSError, ValueError):
        return "retry"
