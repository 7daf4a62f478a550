"""The hub: the one object a sidecar worker's routes talk to (no Flask here).

It owns the broker (memory or Redis), the history, the open streams, the
rate limiters, the reaper, the notifier, the trace export and the metrics,
all built from a ``Config`` (hub_parts.py); the operations the HTTP routes expose
are its methods: publish, admit a batch (rate limits, live-run cap), open a
stream, the frames a stream is given (hello, events, reset, heartbeat),
polling, control, the run list, health and metrics. It decides what a stream
gets; streams.py carries a stream's life out (in its request, handed off,
catching up, gone). A method that turns a request down raises ``Refused``
(an HTTP status, a code and a message that says what to do); the blueprints
in routes/ only parse requests, call these and write responses.

As datasette hands one ``Datasette`` object to every view and Mercure's
handlers are methods of its ``Hub``, this keeps every decision importable
and testable without a server (tests/test_hub.py).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence

from loopstream import __version__
from loopstream.core import events as ev
from loopstream.core import sse, state
from loopstream.sidecar.brokers.memory import BackendDown, Cursor, Filter, OverBudget, StoreRefused
from loopstream.sidecar.config import Config
from loopstream.sidecar.fleet import Fleet
from loopstream.sidecar.forwarded import Trusted
from loopstream.sidecar.hub_parts import make_notifier, make_traces, memory_parts, recorded_between, redis_parts
from loopstream.sidecar.metrics import Metrics, metric_lines, worker_lines
from loopstream.sidecar.ratelimit import Budget, Charge
from loopstream.sidecar.reaper import abandoned, ghost_runs, gone_sessions, interrupted, silent_runs
from loopstream.sidecar.streams import Stream, Streams

CONTROL_ACTIONS = {"stop": "stop_requested", "pause": "pause_requested", "resume": "resume_requested"}
READ_BATCH = 500          # events a stream reads from the buffer at a time
STORE_ERROR_S = 60.0      # /healthz reports a failed publish this long (unless one succeeds meanwhile)

log = logging.getLogger("loopstream.server")


class Refused(Exception):
    """A request the hub turns down: the HTTP status, an error code, a message that says how to
    do better, the field at fault and headers (Retry-After) for the answer."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None, details: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}
        self.details = details or {}     # more fields for the JSON answer (a 429's rate, burst, wait)


# The events a Claude Code hook session's run is made of (formats/hook_session.py).
SESSION_EVENTS = frozenset({"session_started", "session_state", "session_subagent", "session_ended"})


class Owners:
    """Which client address started which live run, for --max-live-runs-per-client. Each worker
    knows the runs started through it (with Redis and several workers the cap holds per worker)."""

    def __init__(self) -> None:
        self.owner: dict[str, str] = {}          # run -> the client address that started it
        self.runs: dict[str, set[str]] = {}      # client address -> the runs it started

    def own(self, addr: str, runs: set[str]) -> None:
        for run in runs:
            before = self.owner.get(run)
            if before is not None and before != addr:
                self.runs[before].discard(run)
            self.owner[run] = addr
        if runs:
            self.runs.setdefault(addr, set()).update(runs)

    def live_count(self, addr: str, is_live: Callable[[str], bool]) -> int:
        """How many of the runs ``addr`` started are live; the others are forgotten."""
        runs = self.runs.get(addr, set())
        for run in [r for r in runs if not is_live(r)]:
            runs.discard(run)
            del self.owner[run]
        if not runs:
            self.runs.pop(addr, None)
        return len(runs)

    def prune(self, is_live: Callable[[str], bool]) -> None:
        """Forget the runs that are over (housekeeping: a client that never comes back)."""
        for addr in list(self.runs):
            self.live_count(addr, is_live)


def cursor_id(cur: Cursor | None) -> str:
    assert cur is not None, "a subscriber at a position has a cursor"
    return f"{cur[0]}-{cur[1]}"


def with_runs(obj: dict, runs_json: str) -> str:
    """``obj`` as JSON with a ``runs`` member spliced in already serialised."""
    return ev.dumps(obj)[:-1] + ',"runs":' + runs_json + "}"


class Hub:
    """One worker's sidecar: its parts and every operation the routes expose."""

    def __init__(self, config: Config | None = None, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.config = cfg = config or Config()
        self.clock, self.monotonic = clock, monotonic
        self.streams = Streams(self)
        self.traces = make_traces(cfg, self._recorded)
        parts = redis_parts(cfg, clock, self.streams, self._took_in, self.traces) if cfg.backend \
            else memory_parts(cfg, clock, monotonic)
        self.broker, self.limiter, self.history = parts.broker, parts.limiter, parts.history
        self.metrics = Metrics(monotonic())
        self.run_budget = Budget(cfg.rate, cfg.burst)
        # --rate 0 turns rate limiting off altogether; --client-rate 0 only the per-client budget.
        self.client_budget = Budget(cfg.client_rate if cfg.rate > 0 else 0, cfg.client_burst)
        self.notifier = make_notifier(cfg)
        self.owners = Owners()
        self._asking: set[tuple[str, str]] = set()   # (run, action) controls this worker is publishing
        self.trusted = Trusted.parse(cfg.forwarded_allow_ips)
        self._fleet_reported_at = float("-inf")
        self.fleet = Fleet(self.broker.client, self.broker.prefix, clock) if cfg.backend else None  # type: ignore[attr-defined]
        self._publish_lock = threading.Lock()
        self.store_error: tuple[str, float] | None = None   # the last publish's store failure, and when
        self._snapshot_cache: dict = {}
        self.broker.start()
        if self.traces is not None and cfg.backend:   # one worker of the fleet sends the traces
            self.traces.use_lease(self._trace_lease())

    def _took_in(self, events: list[ev.Event], before: Cursor, after: Cursor) -> None:
        """Redis: this worker's replica took in events (any worker's; the head moved from ``before`` to
        ``after``): to the streams, then the traces. (Memory: publish does both itself.)"""
        self.streams.publish(events, before, after)
        if self.traces is not None:
            self.traces.observe(events)

    def _recorded(self, run: str, after: Cursor, before: Cursor | None) -> list[dict]:
        """A run's recorded events between two ids (the traces fold a run they did not see begin)."""
        return recorded_between(self.history, self.broker, run, after, before)

    def _trace_lease(self):
        from loopstream.sidecar.otlp.traces_out import RedisLease

        return RedisLease(self.broker.client, self.broker.prefix, self.fleet.name if self.fleet else str(os.getpid()))

    # -- who is asking ---------------------------------------------------------------
    def client(self, peer: str, forwarded_for: str | None = None, real_ip: str | None = None) -> str:
        """The address every per-client limit, log line and metric counts a request by: the peer's,
        or, from a --forwarded-allow-ips proxy, the client it names (forwarded.py)."""
        if not self.trusted:
            return peer
        addr, malformed = self.trusted.client(peer, forwarded_for, real_ip)
        if malformed:
            self.metrics.forwarded_malformed += 1
        return addr

    # -- events in -----------------------------------------------------------------
    def publish(self, drafts: list[ev.Draft], charges: Sequence[Charge] = ()) -> list[ev.Event]:
        """Validated drafts -> events. The batch is folded on copies of the snapshots first:
        a reducer bug raises here, before anything is journalled, buffered or streamed. ``charges``:
        what admit() or charge() left to take (with Redis, taken by the publish script: a 429 here)."""
        broker, history = self.broker, self.history
        ticket = 0
        with self._publish_lock:
            staged = broker.stage(drafts)
            if broker.fans_out_on_publish:     # memory: journal, then make visible
                if history:
                    ticket = self._journal(history, staged.events)
                result = broker.commit(staged)
                if self.traces is not None:   # in id order: the next batch waits for this lock
                    self.traces.observe(result.events)
            else:                              # Redis: one Lua script charges and makes the batch visible
                try:
                    result = broker.publish(drafts, charges)
                except OverBudget as e:
                    raise self.rate_limited(e.wait, e.refused_by) from None
                except StoreRefused as e:      # answered, but every write fails: /healthz must say so
                    self.store_failed(str(e))
                    raise
            self.store_error = None
        not_durable = self._settle(history, ticket, result) if history else None
        self.metrics.accepted += len(result.events)
        if broker.fans_out_on_publish and result.before is not None and result.after is not None:
            self.streams.publish(result.events, result.before, result.after)
        if self.notifier:
            self.notifier.published(broker, result)
        if not_durable is not None:
            raise self._not_durable(not_durable)
        return result.events

    def _settle(self, history, ticket: int, result) -> OSError | None:
        """--fsync always: wait for the batch's fsync (grouped), and say if it failed; then list the
        runs the batch finished."""
        failed: OSError | None = None
        try:
            history.durable(ticket)
        except OSError as e:
            failed = e
        for run in result.finished:
            snap = result.finished_snapshots.get(run) or self.broker.snapshot(run)
            if snap is not None:
                history.finished(snap, self.broker.is_live_run)
        return failed

    def _not_durable(self, e: OSError) -> Refused:
        """--fsync always, and the batch's fsync failed: the events are in (streamed, journalled as far
        as the OS knows), but a 201 would promise a disk that failed. A 503, and /healthz says so."""
        self.store_failed(f"the journal could not be put on disk: {e}")
        log.error("loop: the journal's fsync failed (%s); the batch was answered 503", e)
        self.metrics.reject("journal_not_durable")
        return Refused(503, "journal_not_durable", f"the events were accepted, but the fsync of the journal failed "
                       f"({e}): they may not survive a power cut; check the disk (a retry stores them again)",
                       None, headers={"Retry-After": "5"})

    def _journal(self, history, events: list[ev.Event]) -> int:
        """Write the batch ahead of making it visible; a disk that fails is a 503 the client retries."""
        try:
            return history.record(events)
        except OSError as e:
            self.store_failed(f"the journal could not be written: {e}")
            log.error("loop: the journal could not be written (%s); the batch was refused", e)
            self.metrics.reject("journal_unavailable")
            raise Refused(503, "journal_unavailable", f"the sidecar could not write its journal ({e}); "
                          "nothing was stored, retry later", None, headers={"Retry-After": "5"}) from e

    def admit(self, drafts: list[ev.Draft], explicit_run: bool | Sequence[bool], addr: str) -> list[Charge]:
        """Raise Refused when the batch would start too many live runs (the server's, or this client's)
        or is over an in-process rate limit; else the client owns the runs it starts. Returns the charges
        left for publish() to take (with Redis, all of them: its publish script takes them)."""
        self.check_live_runs(drafts, addr)   # read-only: a batch it refuses has spent no budget
        charges = self.charge(drafts, explicit_run, addr)
        new = self.check_live_runs(drafts, addr)   # again: were charge() to wait, runs started meanwhile count
        self.owners.own(addr, new)
        return charges

    def charge(self, drafts: list[ev.Draft], explicit_run: bool | Sequence[bool], addr: str) -> list[Charge]:
        """Take each event from its run's budget (the run as named, else the client's address) and
        every event from the client address's own, which no choice of run names dodges: a 429 when
        any is spent, charging none. ``explicit_run``: whether each event named its run (or one for all).
        Without an in-process limiter (Redis) nothing is taken here: the charges are returned for the
        publish, whose script takes them and appends the batch in one round trip."""
        named = [explicit_run] * len(drafts) if isinstance(explicit_run, bool) else explicit_run
        costs: dict[str, int] = {}
        for d, is_named in zip(drafts, named, strict=True):
            key = f"run:{d.run}" if is_named else f"addr:{addr}"
            costs[key] = costs.get(key, 0) + 1
        charges: list[Charge] = [(k, self.run_budget, n) for k, n in costs.items()]
        charges.append((f"client:{addr}", self.client_budget, len(drafts)))
        if self.limiter is None:
            return charges
        wait, refused_by = self.limiter.take_all(charges)
        if wait:
            raise self.rate_limited(wait, refused_by)
        return []

    def rate_limited(self, wait: float, refused_by: str | None) -> Refused:
        """The 429 for a batch a budget refused (``refused_by``, its bucket), counted."""
        self.metrics.rate_limited += 1
        self.metrics.reject("rate_limited")
        budget = self.client_budget if (refused_by or "").startswith("client:") else self.run_budget
        flag = "--client-rate" if budget is self.client_budget else "--rate"
        return Refused(429, "rate_limited", f"over {budget.rate:g} events/s (burst {budget.burst}, {flag}) for "
                                            f"{refused_by}; retry after {wait:.2f}s",
                       headers={"Retry-After": str(max(1, int(wait + 0.999)))},
                       details={"rate": budget.rate, "burst": budget.burst, "retry_after": round(wait, 3)})

    def check_live_runs(self, drafts: list[ev.Draft], addr: str) -> set[str]:
        """The runs the batch would start that count for this client (not Claude Code sessions); refused,
        not half-taken, when they are past
        --max-live-runs-per-client for this client (429) or --max-live-runs for the server (503)."""
        broker, cfg = self.broker, self.config
        new = {d.run for d in drafts if not broker.is_live_run(d.run)}
        if not new:
            return new
        # A Claude Code session is the user's, not the client's: it counts against --max-live-runs only,
        # so sessions on a machine never shut out that machine's own `loop run`s.
        counted = new - {d.run for d in drafts if d.type in SESSION_EVENTS}
        per_client = cfg.max_live_runs_per_client
        if per_client and counted and self.owners.live_count(addr, broker.is_live_run) + len(counted) > per_client:
            self.metrics.reject("too_many_live_runs")
            raise Refused(429, "too_many_live_runs", f"this client already holds {per_client} live runs "
                                                     "(--max-live-runs-per-client); finish some, or retry later",
                          "run", headers={"Retry-After": "5"})
        cap = cfg.max_live_runs
        if broker.live_count() + len(new) > cap:
            self.metrics.reject("too_many_live_runs")
            raise Refused(503, "too_many_live_runs", f"the server already holds {cap} live runs "
                                                     "(--max-live-runs); finish some, or retry later", "run",
                          headers={"Retry-After": "5"})
        return counted

    # -- snapshots -------------------------------------------------------------------
    def snapshots_json(self, flt: Filter) -> str:
        """The snapshots as JSON, made once per head position and run filter: a thousand
        subscribers connecting after one event share one serialisation, not a thousand."""
        head, cache = self.broker.head, self._snapshot_cache
        key = (head, flt.runs)
        text = cache.get(key)
        if text is None:
            if len(cache) > 64 or any(k[0] != head for k in cache):
                cache.clear()
            text = cache[key] = ev.dumps(self.broker.snapshots(flt))
        return text

    def hello(self, sub: Stream) -> bytes:
        """The hello frame; a stream that does not resume gets the snapshots and starts at the head."""
        broker = self.broker
        payload = {"epoch": broker.epoch, "version": __version__, "heartbeat": self.config.heartbeat,
                   "buffer": broker.capacity, "resumed": sub.pos is not None}
        if sub.pos is not None:
            payload["cursor"] = cursor_id(sub.pos)
            return sse.frame(cursor_id(sub.pos), "hello", ev.dumps(payload))
        sub.pos = broker.head
        payload["cursor"] = cursor_id(sub.pos)
        return sse.frame(cursor_id(sub.pos), "hello", with_runs(payload, self.snapshots_json(sub.flt)))

    def reset(self, sub: Stream, cursor: Cursor, reason: str) -> bytes:
        """The reset frame for a subscriber whose cursor cannot be read: snapshots, from ``cursor`` on."""
        self.metrics.resets += 1
        sub.pos = cursor
        data = {"epoch": self.broker.epoch, "cursor": cursor_id(cursor), "reason": reason}
        return sse.frame(cursor_id(cursor), "reset", with_runs(data, self.snapshots_json(sub.flt)))

    # -- events out: SSE ---------------------------------------------------------------
    def open_stream(self, addr: str) -> None:
        """Count a new stream from ``addr``, or raise Refused (too many) / BackendDown."""
        cfg, metrics, broker = self.config, self.metrics, self.broker
        if not broker.healthy:
            raise BackendDown("the stream is not available")
        broker.catch_up()   # the hello holds every event accepted before this request, on any worker
        # from here to the counting no I/O, so no other open (catch_up yields on Redis) slips between
        if metrics.streams_by_client.get(addr, 0) >= cfg.max_streams_per_client:
            metrics.reject("too_many_streams")
            raise Refused(429, "too_many_streams",
                          f"this client ({addr}) already holds {cfg.max_streams_per_client} streams, the most "
                          "one client may (--max-streams-per-client); close other dashboard tabs or watchers, "
                          "or start the sidecar with a higher --max-streams-per-client",
                          headers={"Retry-After": "5"}, details={"cap": cfg.max_streams_per_client})
        if metrics.subscribers >= cfg.max_streams:
            metrics.reject("server_full")
            raise Refused(503, "server_full", f"the server holds {cfg.max_streams} streams already",
                          headers={"Retry-After": "5"})
        metrics.subscribers += 1
        metrics.streams_by_client[addr] = metrics.streams_by_client.get(addr, 0) + 1

    def close_stream(self, addr: str) -> None:
        """A stream from ``addr`` ended (its response was closed)."""
        metrics = self.metrics
        metrics.subscribers -= 1
        metrics.last_activity = self.monotonic()
        n = metrics.streams_by_client.get(addr, 1) - 1
        if n:
            metrics.streams_by_client[addr] = n
        else:
            metrics.streams_by_client.pop(addr, None)

    def next_frames(self, sub: Stream) -> bytes | None:
        """What a stream catching up is given next from the buffer: events, or a reset when its cursor
        cannot be read; None when it is at the head."""
        res = self.broker.read(sub.pos, sub.flt, limit=READ_BATCH)
        if res.reset:
            return self.reset(sub, res.cursor, res.reason)
        sub.pos = res.cursor
        if res.events:
            return b"".join(e.frame for e in res.events)
        return None

    def heartbeat_frame(self, pos: Cursor | None) -> bytes:
        """The named heartbeat of a stream idle at ``pos`` (it carries the cursor)."""
        return sse.frame(cursor_id(pos), "heartbeat", ev.dumps({"ts": round(self.clock(), 3)}))

    # -- events out: polling -------------------------------------------------------------
    def poll(self, flt: Filter, since: Cursor | None, limit: int) -> str:
        """The JSON body of GET /api/events: events after ``since`` (or the whole buffer), or a reset."""
        broker = self.broker
        if not broker.healthy:
            raise BackendDown("the event log is not available")
        broker.catch_up()
        res = broker.read(since if since is not None else broker.tail, flt, limit)
        head = (f'{{"epoch":{broker.epoch},"cursor":"{cursor_id(res.cursor)}",'
                f'"reset":{"true" if res.reset else "false"}')
        if res.reset:
            self.metrics.resets += 1
            head += ',"runs":' + self.snapshots_json(flt)
        return head + ',"events":[' + ",".join(e.json for e in res.events) + "]}"

    # -- runs and control --------------------------------------------------------------------
    def run_list(self) -> list[dict]:
        """Every run's summary (live, recent and from history), the most recently updated first."""
        rows = self.broker.summaries()
        if self.history:
            for r, summary in self.history.index.items():
                rows.setdefault(r, summary)
        return sorted(rows.values(), key=lambda s: s.get("updated_at") or 0, reverse=True)

    def run_state(self, run: str) -> dict:
        snap = self.broker.snapshot(run) or (self.history.snapshot(run) if self.history else None)
        if snap is None:
            raise Refused(404, "not_found", f"no run named '{run}'", "run")
        return snap

    def transcript(self, run: str) -> dict:
        events, complete = self.history.transcript(run) if self.history else self.broker.transcript(run)
        if not events:
            raise Refused(404, "not_found", f"no recorded events for run '{run}'", "run")
        return {"run": run, "complete": complete, "events": events}

    @staticmethod
    def check_action(action: str) -> None:
        if action not in CONTROL_ACTIONS:
            raise Refused(404, "not_found", f"unknown action '{action}'; use stop, pause or resume", "action")

    def control(self, run: str, action: str, reason: str = "", addr: str = "?") -> dict:
        """Ask a live run to stop, pause or resume: an event its runner acts on, charged to the run's
        and the client's budgets. Idempotent: asking again for what is already asked (or already so)
        publishes nothing, charges nothing and says so."""
        self.check_action(action)
        self.broker.catch_up()
        snap = self.broker.snapshot(run)
        if snap is None:
            raise Refused(404, "not_found", f"no live run named '{run}'", "run")
        asking = (run, action)
        if already_so(snap, action) or asking in self._asking:   # no yield from the check to the add
            return {"run": run, "action": action, "requested": False, "status": snap["status"]}
        draft = ev.Draft(CONTROL_ACTIONS[action], run, {"reason": reason[:500]} if reason else {})
        self._asking.add(asking)   # publish yields on Redis: the same ask meanwhile is a no-op
        try:
            charges = self.charge([draft], True, addr)   # a control event costs what any event of the run costs
            (e,) = self.publish([draft], charges)
        finally:
            self._asking.discard(asking)
        return {"run": run, "action": action, "requested": True, "id": e.id}

    # -- operations ------------------------------------------------------------------------
    def store_failed(self, error: str) -> None:
        """A publish found the store unusable (a journal write, or Redis refusing the script):
        /healthz says 503 until a publish succeeds, or STORE_ERROR_S pass with no failing one."""
        self.store_error = (error, self.monotonic())

    def _store_failing(self) -> str | None:
        if self.store_error is None or self.monotonic() - self.store_error[1] > STORE_ERROR_S:
            return None
        return self.store_error[0]

    def health(self) -> dict:
        broker = self.broker
        failing = self._store_failing()
        extra: dict = {"error": f"the last publish failed: {failing}"} if failing else {}
        subscribers = self.metrics.subscribers
        if self.fleet is not None and broker.healthy:
            try:
                _, gauges, workers = self.fleet_numbers(report=False)   # unauthenticated: no write
                subscribers = gauges["subscribers"]
                extra["workers"] = len(workers)   # that answered (reported) in the last fleet.WORKER_TTL s
                extra["worker"] = self.fleet.name
            except Exception as e:      # noqa: BLE001 — the broker's own health says whether Redis is there
                log.warning("loop: the fleet's numbers could not be read (%s)", e)
        return {"ok": broker.healthy and not failing, **extra, "version": __version__, "epoch": broker.epoch,
                "pid": self.config.master_pid or os.getpid(),
                "backend": "redis" if self.config.backend else "memory",
                "subscribers": subscribers, "buffered": len(broker.buffer)}

    def worker_numbers(self) -> tuple[dict[str, int], dict[str, int]]:
        """This worker's counters and gauges, by the names fleet.py reports them under."""
        m, streams = self.metrics, self.streams
        counters = {"accepted": m.accepted, "rate_limited": m.rate_limited, "resets": m.resets,
                    "fanout_direct": streams.direct, "fanout_woken": streams.woken, "reaped": m.reaped,
                    "forwarded_malformed": m.forwarded_malformed,
                    **(self.traces.numbers() if self.traces is not None else {}),
                    **{f"rejected:{r}": n for r, n in m.rejected.items()}}
        return counters, {"subscribers": m.subscribers, "stream_clients": len(m.streams_by_client)}

    def fleet_numbers(self, report: bool = True) -> tuple[dict[str, int], dict[str, int], dict[str, dict]]:
        """(counters, gauges, each worker's own numbers): the fleet's with Redis (this worker's own
        current; with ``report`` it reports first, so the totals hold its counters too), else this worker's."""
        counters, gauges = self.worker_numbers()
        if self.fleet is None:
            return counters, gauges, {}
        if report:
            self.fleet.report(counters, gauges)
        totals, workers = self.fleet.gather()
        workers[self.fleet.name] = {"counters": counters, "gauges": gauges}
        summed = {k: sum(w["gauges"].get(k, 0) for w in workers.values()) for k in gauges}
        return totals, summed, workers

    def report_fleet(self) -> None:
        """Tell the fleet this worker's numbers (housekeeping, at most once a second, with Redis)."""
        now = self.monotonic()
        if self.fleet is not None and self.broker.healthy and now - self._fleet_reported_at >= 1.0:
            self._fleet_reported_at = now
            self.fleet.report(*self.worker_numbers())

    def metrics_text(self) -> str:
        """The Prometheus text exposition: the whole fleet's numbers, and with Redis each worker's."""
        broker = self.broker
        try:
            counters, gauges, workers = self.fleet_numbers()
        except Exception as e:      # noqa: BLE001 — Redis away: this worker's own numbers, and say so
            log.warning("loop: the fleet's numbers could not be read (%s); /metrics shows this worker's", e)
            (counters, gauges), workers = self.worker_numbers(), {}
        lines = metric_lines(counters, gauges)
        lines += [
            "# TYPE loop_buffer_events gauge", f"loop_buffer_events {len(broker.buffer)}",
            "# TYPE loop_buffer_capacity gauge", f"loop_buffer_capacity {broker.capacity}",
            "# TYPE loop_runs_live gauge", f"loop_runs_live {sum(state.is_live(s) for s in broker.runs.values())}",
        ]
        if self.fleet is not None:
            lines += ["# TYPE loop_workers gauge", f"loop_workers {len(workers)}"]
            lines += worker_lines(workers)
        if self.history:
            lines += ["# TYPE loop_history_write_errors_total counter",
                      f"loop_history_write_errors_total {self.history.write_errors + self.history.sync_errors}",
                      "# TYPE loop_journal_fsyncs_total counter",
                      f"loop_journal_fsyncs_total {self.history.fsyncs}"]
        return "\n".join(lines) + "\n"

    def touch(self) -> None:
        """A request came in (for --idle-exit)."""
        self.metrics.last_activity = self.monotonic()

    # -- housekeeping: stale runs and --idle-exit ------------------------------------------------
    def reap(self) -> int:
        """Finish as interrupted every live run that announced heartbeat_s and went silent, and
        every run only ever named in one request and silent for --ghost-after since;
        how many this worker finished (one reap per silence, whichever worker sees it first)."""
        broker = self.broker
        if not broker.healthy:
            return 0
        try:
            broker.catch_up()   # with Redis: judge silence on every event accepted so far, on any worker
        except BackendDown:
            return 0
        reaped, now, cfg = 0, self.clock(), self.config
        stale = [(run, last_id, interrupted(run, silent))
                 for run, silent, last_id in silent_runs(broker.runs.values(), now, cfg.stale_after)]
        ghosts = [(run, last_id, abandoned(run, silent))
                  for run, silent, last_id in ghost_runs(broker.runs.values(), now, cfg.ghost_after)]
        gone = [(run, last_id, interrupted(run, silent))
                for run, silent, last_id in gone_sessions(broker.runs.values(), now)]
        for run, last_id, draft in stale + ghosts + gone:
            if broker.claim_reap(run, last_id):
                self.publish([draft])
                self.metrics.reaped += 1
                reaped += 1
        self.owners.prune(broker.is_live_run)
        return reaped

    def idle(self) -> bool:
        """No request and no stream for --idle-exit seconds."""
        cfg, m = self.config, self.metrics
        return bool(cfg.idle_exit) and m.subscribers == 0 and self.monotonic() - m.last_activity >= cfg.idle_exit

    def housekeeping(self) -> None:
        """Reap now and then; stop the server (signal its master) once idle for --idle-exit."""
        cfg = self.config
        tick = max(0.05, min(1.0, *((x or 4.0) / 4 for x in (cfg.stale_after, cfg.idle_exit, cfg.ghost_after))))
        while True:
            time.sleep(tick)
            try:
                self.reap()
            except Exception:   # a bug here must not stop the reaper for good
                log.exception("reaping stale runs failed")
            try:
                self.report_fleet()
            except Exception as e:  # noqa: BLE001 — Redis away: reported again on the next tick
                log.debug("loop: the fleet report failed: %s", e)
            if self.idle():
                log.warning("no request or stream for %gs (--idle-exit): exiting", cfg.idle_exit)
                os.kill(cfg.master_pid or os.getpid(), signal.SIGTERM)
                return

    def start_housekeeping(self) -> None:
        threading.Thread(target=self.housekeeping, name="loop-housekeeping", daemon=True).start()

    def close(self) -> None:
        """End the held streams, flush the history and let go of the backend (a worker exits)."""
        self.streams.end_all()
        if self.traces is not None:
            self.traces.close()
        if self.history:
            self.history.close()
        self.broker.close()


def already_so(snap: dict, action: str) -> bool:
    """Is what ``action`` asks for already asked for, or already the case (or the run is over)?"""
    if not state.is_live(snap):
        return True
    c = snap["control"]
    if action == "stop":
        return c["stop_requested"] is not None
    paused = bool(c["pause_requested"]) or snap["status"] == "paused"
    return paused if action == "pause" else not c["pause_requested"] and snap["status"] != "paused"
