"""OpenTelemetry traces out: every run exported as one trace over OTLP/HTTP, live, off the request path.

``loop serve --otlp-endpoint URL`` (or the standard ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``)
makes the hub hand every event it publishes to ``TraceExport.observe``: an append to a bounded
queue, nothing more, so a slow or dead backend never delays a POST or a stream. A thread (a
greenlet under the gevent worker) maps the events to spans (otlp/trace_map.py: pure, with
deterministic ids) and hands each span, as it ends, to the OpenTelemetry SDK's
``BatchSpanProcessor`` and OTLP/HTTP exporter (the ``loopstream[otel]`` extra, imported only here
and only when configured). The worker yields every PACE events or spans (under gevent the SDK's
export greenlet runs meanwhile), and when the SDK's queue is full it waits for the exporter to take
spans (it is off the request path). What cannot be sent is dropped and counted
(``loop_otlp_spans_dropped_total{reason}``): ``span_queue_full``, a span queue that stays full
because the exporter is failing or stuck; ``export_failed``, a batch the backend refused or never
answered (the exporter's own retries first); ``event_queue_full``, whole events (not spans) the
full event queue turned away before they were mapped. Logged at most once a minute.

A run this process has not seen from its start (the sidecar restarted, or another worker owned
it) is first folded from its transcript up to the event met, without sending, so its trace goes on
with the same ids (a run met at its task_started or session_started needs no read). A transcript
that cannot be read (Redis away a moment) holds the run's events and is tried again, FOLD_TRIES
times, before its trace starts where it was met. With Redis, when the replica is loaded again (a
gap, a new epoch, Redis back), each run being traced is read again after its last event mapped.
With Redis every worker maps every event, and one worker, holding a lease in Redis, sends: the
holder notes in Redis the last event it sent spans for, and a worker that takes the lease over
sends what it mapped after that mark.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from loopstream import __version__
from loopstream.core import events as ev
from loopstream.core.formats.common import ANSI
from loopstream.sidecar.otlp.trace_map import Mapper, SpanRecord

QUEUE = 20_000            # events waiting to be mapped; beyond this they are dropped (counted)
SPAN_QUEUE = 4096         # spans handed to the SDK and not yet taken by its exporter
BATCH = 512               # spans in one OTLP request at most
DELAY_MS = 500            # the batch processor sends at least this often: a live run shows while it runs
EXPORT_TIMEOUT_S = 5.0    # one OTLP request, its retries included
WARN_EVERY_S = 60.0       # one log line a minute at most about failing exports
LEASE_S = 10              # the Redis exporter's lease; renewed every TICK_S
TICK_S = 1.0
KEPT = 5000               # spans a worker that does not export keeps, to send them if it takes over
PACE = 200                # events mapped or spans handed over between two yields (gevent: the SDK's turn)
PACE_S = 0.0005           # the yield: more than 0, which under gevent would not let timers and I/O run
FOLD_TRIES = 5            # reads of a run's transcript (1, 2, 4, 8 s apart) before its trace starts where met
STARTS = ("task_started", "session_started")   # a run met at its start: no transcript to read
STUCK_S = EXPORT_TIMEOUT_S + 2   # a full span queue waits this long for the exporter to take spans
DEFAULT_SERVICE = "loop"

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")   # C0 and C1 controls, DEL
log = logging.getLogger("loopstream.otlp_out")
SDK_LOGGERS = ("opentelemetry.exporter.otlp.proto.http", "opentelemetry.sdk._shared_internal",
               "opentelemetry.sdk.trace.export")


def sdk_installed() -> bool:
    """Are the OpenTelemetry SDK and its OTLP/HTTP exporter installed (the otel extra)? Asked of the
    installed distributions, importing nothing: `loop serve`'s master must not import requests or ssl
    before the gevent workers patch them."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return all(version(d) for d in ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"))
    except PackageNotFoundError:
        return False


class _LastMessage(logging.Handler):
    """Keeps what the SDK's exporter said last (a status code, a refused connection), for our own
    once-a-minute line, instead of letting it log every failed batch."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            said = record.getMessage()
        except Exception:   # noqa: BLE001 — a message that cannot be formatted is no reason to fail
            said = str(record.msg)
        self.message = plain(said)


def plain(said: str) -> str:
    """What a backend or the SDK said, safe for our log line: its first line, without terminal escapes
    or control characters (a backend's answer could move the cursor or forge a log line), cut to 300."""
    lines = said.splitlines() or [""]
    return CONTROL.sub("", ANSI.sub("", lines[0]))[:300]


class Counting:
    """The OTLP exporter, counting what it sent and what it dropped; it never raises."""

    def __init__(self, inner: Any, owner: TraceExport):
        self.inner, self.owner = inner, owner

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        owner = self.owner
        owner.taken += len(spans)
        owner.last_taken = time.monotonic()
        try:
            result = self.inner.export(spans)
        except Exception as e:  # noqa: BLE001 — an exporter's bug must not end the processor's thread
            owner.said.message = plain(f"{type(e).__name__}: {e}")
            result = SpanExportResult.FAILURE
        owner.failing = result != SpanExportResult.SUCCESS
        if not owner.failing:
            owner.exported += len(spans)
        else:
            owner.drop("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


@dataclass
class Held:
    """A run whose transcript could not be read (the store away): its events wait for the next try."""

    tries: int
    due: float
    events: list[ev.Event]


class RedisLease:
    """One exporter among a fleet's workers: a lease key in Redis, renewed by its holder, who also
    notes the last event it sent spans for."""

    SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3]) end
  return {1, ''}
end
if holder then return {0, ''} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {2, redis.call('GET', KEYS[2]) or ''}
"""
    RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"

    def __init__(self, client: Any, prefix: str, me: str):
        self.client, self.me = client, me
        self.keys = [f"{prefix}otlp:exporter", f"{prefix}otlp:sent"]
        self._renew = client.register_script(self.SCRIPT)
        self._release = client.register_script(self.RELEASE)

    def renew(self, mark: str) -> tuple[int, str]:
        """(1 holding, 0 another worker holds it, 2 just taken: then the holder's last mark)."""
        got, previous = self._renew(keys=self.keys, args=[self.me, LEASE_S, mark])
        return int(got), previous.decode() if isinstance(previous, bytes) else str(previous or "")

    def release(self, mark: str) -> None:
        if mark:
            self._renew(keys=self.keys, args=[self.me, LEASE_S, mark])
        self._release(keys=self.keys[:1], args=[self.me])


class TraceExport:
    """Events in (``observe``, from the publishing path), spans out (the SDK), counters for /metrics."""

    def __init__(self, endpoint: str, recorded: Callable[[str, tuple[int, int], tuple[int, int] | None], list[dict]],
                 lease: RedisLease | None = None, exporter: Any = None):
        """``recorded(run, after, before)`` gives a run's recorded events between two ids (to fold a run
        this process did not see begin);
        ``exporter`` replaces the OTLP exporter (tests); ``lease`` (Redis) says whether this worker sends."""
        self.endpoint = endpoint
        self.recorded = recorded
        self.lease = lease
        self.leading = lease is None
        self.mapper = Mapper()
        self.queue: deque[ev.Event] = deque()
        self.held: dict[str, Held] = {}    # runs whose transcript could not be read yet, with their events
        self.held_events = 0
        self._fold_error: Exception | None = None
        self._resync = False
        self.kept: deque[SpanRecord] = deque(maxlen=KEPT)
        self.handed = self.taken = self.exported = 0
        self.failing = False                 # the exporter's last batch failed
        self.last_taken = time.monotonic()   # when the exporter last took a batch
        self._paced = 0
        self._gave_up = -1.0                 # last_taken when a full queue was last given up on
        self.dropped: dict[str, int] = {}
        self.sent_mark: tuple[int, int] = (0, 0)
        self._written_mark = ""
        self._wake = threading.Event()
        self._closed = False
        self._warned_at = float("-inf")
        self.said = _LastMessage()
        self.processor = self._processor(exporter)
        self._thread = threading.Thread(target=self._work, name="loop-otlp-out", daemon=True)
        self._thread.start()

    def use_lease(self, lease: RedisLease) -> None:
        """Send only while holding ``lease`` (Redis: one worker of the fleet sends); until then keep."""
        self.leading = False
        self.lease = lease
        self._wake.set()

    # -- the SDK ------------------------------------------------------------------------------
    def _processor(self, exporter: Any) -> Any:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        for name in SDK_LOGGERS:     # their failures are counted and said once a minute, by us
            sdk_log = logging.getLogger(name)
            sdk_log.addHandler(self.said)
            sdk_log.propagate = False
        attrs: dict[str, Any] = {"service.version": __version__}
        if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in os.environ.get(
                "OTEL_RESOURCE_ATTRIBUTES", ""):
            attrs["service.name"] = DEFAULT_SERVICE
        self.resource = Resource.create(attrs)
        self.scope = InstrumentationScope("loopstream", __version__)
        inner = exporter if exporter is not None else OTLPSpanExporter(endpoint=self.endpoint,
                                                                       timeout=EXPORT_TIMEOUT_S)
        counting: Any = Counting(inner, self)
        return BatchSpanProcessor(counting, max_queue_size=SPAN_QUEUE, schedule_delay_millis=DELAY_MS,
                                  max_export_batch_size=BATCH)

    def readable(self, rec: SpanRecord) -> Any:
        """A span record as the SDK's ReadableSpan: our ids, the events' times, the status."""
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        flags = TraceFlags(TraceFlags.SAMPLED)
        ctx = SpanContext(rec.trace_id, rec.span_id, False, flags)
        parent = SpanContext(rec.trace_id, rec.parent_id, False, flags) if rec.parent_id else None
        status = Status(StatusCode.ERROR, rec.error) if rec.error else Status(StatusCode.OK)
        return ReadableSpan(name=rec.name, context=ctx, parent=parent, resource=self.resource,
                            attributes=rec.attributes, kind=SpanKind.INTERNAL, status=status,
                            start_time=rec.start_ns, end_time=rec.end_ns, instrumentation_scope=self.scope)

    # -- events in: the publishing path ---------------------------------------------------------
    def observe(self, events: Iterable[ev.Event]) -> None:
        """Queue published events for mapping (never blocks; a full queue drops them, counted)."""
        events = list(events)
        if len(self.queue) + len(events) > QUEUE:
            self.drop("event_queue_full", len(events))
            return
        self.queue.extend(events)
        self._wake.set()

    def drop(self, reason: str, n: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n
        self._warn()

    def numbers(self) -> dict[str, int]:
        """For /metrics: spans exported, and what was dropped by reason (``otlp_dropped:REASON``: spans,
        except ``event_queue_full``, which counts whole events dropped before they were mapped)."""
        return {"otlp_exported": self.exported, **{f"otlp_dropped:{r}": n for r, n in self.dropped.items()}}

    # -- the worker thread ----------------------------------------------------------------------
    def _work(self) -> None:
        next_tick = 0.0
        while not self._closed:
            self._wake.wait(TICK_S)
            self._wake.clear()
            try:
                self.drain()
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + TICK_S
                    self.tick()
            except Exception:   # a bug must not end the export for good
                log.exception("loop: exporting traces failed")

    def resynced(self) -> None:
        """Redis: the replica was loaded again (a gap, a new epoch, Redis back): events published
        meanwhile never came through ``observe``; each run being traced is read again after its last
        event fed, before what is queued from now on."""
        self._resync = True
        self._wake.set()

    def _read_again(self) -> None:
        self._resync = False
        for run, tr in list(self.mapper.traces.items()):
            if tr.ended or run in self.held:
                continue
            try:
                missed = self.recorded(run, tr.last, None)
            except Exception as e:  # noqa: BLE001 — Redis away again: the next resync reads them
                log.warning("loop: traces: the transcript of %s could not be read again (%s)", run, e)
                continue
            for event in missed:
                self._pace()
                self.send(self.mapper.feed(event))

    def drain(self) -> None:
        """Map every queued event (in id order) and send the spans it ended; then try again the runs
        whose transcript could not be read."""
        if self._resync:
            self._read_again()
        batch: list[ev.Event] = []
        while self.queue:
            batch.append(self.queue.popleft())
        batch.sort(key=lambda e: e.key)
        for e in batch:
            self._pace()
            held = self.held.get(e.run)
            if held is not None:
                self._hold(held, e)
            elif self.mapper.known(e.run) or e.type in STARTS or self._fold_recorded(e.run, e.key):
                self.send(self.mapper.feed(e.as_dict()))
            else:                # the store away (a Redis blip): the run waits, its ids must not change
                log.warning("loop: traces: the transcript of %s could not be read (%s); tried again for a while",
                            e.run, self._fold_error)
                self.held[e.run] = Held(1, time.monotonic() + TICK_S, [])
                self._hold(self.held[e.run], e)
        if self.held:
            self._retry_held()

    def _hold(self, held: Held, e: ev.Event) -> None:
        if self.held_events >= QUEUE:
            self.drop("event_queue_full", 1)
            return
        held.events.append(e)
        self.held_events += 1

    def _retry_held(self) -> None:
        """Fold again each held run whose time has come; after FOLD_TRIES reads that failed, its trace
        starts where it was met (a new trace id: what was sent before is a trace of its own)."""
        now = time.monotonic()
        for run, held in list(self.held.items()):
            if now < held.due:
                continue
            if not self._fold_recorded(run, held.events[0].key):
                held.tries += 1
                if held.tries < FOLD_TRIES:
                    held.due = now + TICK_S * 2 ** (held.tries - 1)
                    continue
                log.warning("loop: traces: the transcript of %s could not be read %d times (%s); its trace starts "
                            "here", run, held.tries, self._fold_error)
            del self.held[run]
            self.held_events -= len(held.events)
            for e in held.events:
                self._pace()
                self.send(self.mapper.feed(e.as_dict()))

    def _fold_recorded(self, run: str, before: tuple[int, int]) -> bool:
        """A run met mid-way: fold what was recorded of it before ``before``, sending nothing. False
        when its transcript could not be read."""
        try:
            recorded = self.recorded(run, (0, 0), before)
        except Exception as e:  # noqa: BLE001 — the store away (Redis BackendDown, a disk error): held, tried again
            self._fold_error = e
            return False
        for event in recorded:
            self._pace()         # under gevent: let the worker serve meanwhile
            self.mapper.feed(event)
        return True

    def send(self, spans: list[SpanRecord]) -> None:
        if not spans:
            return
        if not self.leading:
            self.kept.extend(spans)
            return
        for rec in spans:
            self._pace()
            if not self._room():
                self.drop("span_queue_full", 1)
                continue
            self.processor.on_end(self.readable(rec))
            self.handed += 1
            self.sent_mark = max(self.sent_mark, rec.end_key)

    def _pace(self) -> None:
        """Yield every PACE events or spans: under gevent, the SDK's export greenlet (and every
        request of the worker) gets its turn while a burst is mapped and handed over."""
        self._paced += 1
        if self._paced >= PACE:
            self._paced = 0
            time.sleep(PACE_S)

    def _room(self) -> bool:
        """Is there room in the SDK's queue for one more span? When it is full, wait for the exporter
        to take a batch, unless its last batch failed, the worker exits, or it took none for STUCK_S
        (then no more waiting until it takes one): then the span is dropped."""
        since = None
        while self.handed - self.taken >= SPAN_QUEUE:
            now = time.monotonic()
            since = since or now
            if self.failing or self._closed or self._gave_up == self.last_taken:
                return False
            if now - max(since, self.last_taken) > STUCK_S:
                self._gave_up = self.last_taken
                return False
            time.sleep(0.005)
        return True

    def tick(self) -> None:
        """Once a second: the lease (Redis), and the once-a-minute word about failures."""
        if self.lease is not None:
            self._hold_lease()
        self._warn()

    def _hold_lease(self) -> None:
        assert self.lease is not None
        mark = f"{self.sent_mark[0]}-{self.sent_mark[1]}" if self.sent_mark != (0, 0) else ""
        try:
            got, previous = self.lease.renew(mark if mark != self._written_mark else "")
        except Exception as e:  # noqa: BLE001 — Redis away: keep the role we had; the lease expires
            log.debug("loop: traces: the exporter lease could not be renewed: %s", e)
            return
        self._written_mark = mark if got == 1 else self._written_mark
        was = self.leading
        self.leading = got in (1, 2)
        if got == 2 and not was:   # taken over: what the last holder had not sent yet
            after = ev.parse_id(previous) or (0, 0)
            kept, self.kept = [s for s in self.kept if s.end_key > after], deque(maxlen=KEPT)
            self.send(kept)
        elif not self.leading:
            self.kept = deque((s for s in self.kept if s.end_key > self.sent_mark), maxlen=KEPT)

    def _warn(self) -> None:
        dropped = sum(self.dropped.values())
        now = time.monotonic()
        if not dropped or now - self._warned_at < WARN_EVERY_S or dropped == getattr(self, "_warned_dropped", 0):
            return
        self._warned_at, self._warned_dropped = now, dropped
        events = self.dropped.get("event_queue_full", 0)
        spans = {r: n for r, n in self.dropped.items() if r != "event_queue_full"}
        why = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(spans.items()))
        lost = f" and {events} events before they were mapped (event queue full)" if events else ""
        said = f" (last: {self.said.message})" if self.said.message else ""
        log.warning("loop: traces to %s: %d spans dropped so far (%s)%s%s; the sidecar goes on", self.endpoint,
                    sum(spans.values()), why or "none", lost, said)

    def flush(self, timeout_s: float = 5.0) -> None:
        """Map what is queued and send every span handed over (tests, and a worker that exits)."""
        self.drain()
        self.processor.force_flush(int(timeout_s * 1000))

    def close(self, timeout_s: float = 0.8) -> None:
        """A worker exits: send what is queued, within ``timeout_s`` (gunicorn allows a second)."""
        self._closed = True
        self._wake.set()
        try:
            self.drain()
        except Exception as e:  # noqa: BLE001 — leaving anyway
            log.debug("loop: traces: closing the exporter: %s", e)
        closing = threading.Thread(target=self.processor.shutdown, name="loop-otlp-close", daemon=True)
        closing.start()          # it sends what it holds; a dead backend must not hold the exit
        closing.join(timeout_s)
        for name in SDK_LOGGERS:
            logging.getLogger(name).removeHandler(self.said)
        if self.lease is not None and self.leading:
            try:
                self.lease.release(f"{self.sent_mark[0]}-{self.sent_mark[1]}")
            except Exception as e:  # noqa: BLE001 — the lease expires by itself
                log.debug("loop: traces: releasing the exporter lease: %s", e)
