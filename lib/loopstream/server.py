"""create_app(config): the HTTP routes, glue between Flask and the broker.

Everything that decides (validation, ids, buffer, cursors, state, rate
limits, framing) lives in the pure modules; this file only parses requests,
calls them and writes responses. It runs under gunicorn's gevent worker
(``loop serve``), where ``threading`` is monkey-patched, so waiting on a
``threading.Event`` parks one greenlet, not the worker.
"""
from __future__ import annotations

import hmac
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from flask import Flask, Response, request, send_from_directory
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import __version__, sse, state
from . import events as ev
from .broker import BackendDown, Filter, MemoryBroker
from .config import Config
from .fanout import Fanout, Subscriber
from .history import History
from .guard import HostPolicy, is_json_content_type
from .ratelimit import Budget, TokenBuckets
from .reaper import interrupted, silent_runs

MAX_BODY = 64 * 1024
LIMIT_RE = re.compile(r"[0-9]{1,4}\Z")
API_PREFIXES = ("/api/", "/stream/", "/emit", "/metrics", "/healthz")
CONTROL_ACTIONS = {"stop": "stop_requested", "pause": "pause_requested", "resume": "resume_requested"}


class Metrics:
    def __init__(self):
        self.accepted = 0
        self.rejected: dict[str, int] = {}
        self.rate_limited = 0
        self.resets = 0
        self.subscribers = 0
        self.streams_by_client: dict[str, int] = {}
        self.last_activity = time.monotonic()   # the last request or stream end (for --idle-exit)
        self.reaped = 0

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


def dashboard_dir() -> Path:
    """dashboard/ beside lib/ in a checkout, or share/loop/dashboard where a wheel put it."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent.parent / "dashboard", Path(sys.prefix) / "share" / "loop" / "dashboard"):
        if (candidate / "index.html").exists():
            return candidate
    return here.parent.parent / "dashboard"


def error(status: int, code: str, message: str, field: str | None = None, headers=None) -> Response:
    body = {"error": code, "message": message}
    if field:
        body["field"] = field
    return Response(ev.dumps(body), status=status, mimetype="application/json", headers=headers or {})


def json_response(obj, status: int = 200) -> Response:
    return Response(ev.dumps(obj), status=status, mimetype="application/json")


def create_app(config: Config | None = None, clock=time.time, monotonic=time.monotonic) -> Flask:
    """The sidecar's WSGI app. ``clock`` stamps events; ``monotonic`` drives the rate limiter."""
    cfg = config or Config()
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    fanout = Fanout()
    history = None
    if cfg.backend:  # Redis keeps the stream, the snapshots, the history and the rate limit
        from .redis_broker import RedisBroker, RedisBuckets

        broker = RedisBroker(cfg.backend, cfg.buffer, clock=clock)
        broker.on_events, broker.on_down, broker.on_resync = fanout.publish, fanout.end_all, fanout.wake_all
        limiter = RedisBuckets(broker.client, broker.prefix, cfg.rate, cfg.burst)
    else:
        history = History(cfg.db) if cfg.db else None
        epoch = int(clock() * 1000)
        restored: list[dict] = []
        if history:
            floor, restored = history.open()
            epoch = max(epoch, floor + 1)
            history.save_epoch(epoch)
            history.start_writer()
        broker = MemoryBroker(cfg.buffer, epoch=epoch, clock=clock)
        for snap in restored:
            broker.restore(snap)
        limiter = TokenBuckets(cfg.rate, cfg.burst, clock=monotonic)
    metrics = Metrics()
    policy = HostPolicy(cfg.host, cfg.allowed_hosts, cfg.cors)
    run_budget = Budget(cfg.rate, cfg.burst)
    # --rate 0 turns rate limiting off altogether; --client-rate 0 only the per-client budget.
    client_budget = Budget(cfg.client_rate if cfg.rate > 0 else 0, cfg.client_burst)
    publish_lock = threading.Lock()
    notifier = None
    if cfg.notify:  # told of each finished run off the request path (notify.py)
        from .notify import Notifier

        notifier = Notifier(cfg.notify, cfg.notify_format, cfg.notify_min_duration, cfg.dashboard_url)
    app.extensions["loop"] = {"broker": broker, "history": history, "metrics": metrics, "config": cfg,
                              "notifier": notifier}
    static_root = dashboard_dir()

    # -- helpers ---------------------------------------------------------------
    def client_addr() -> str:
        return request.remote_addr or "?"

    def authorized() -> bool:
        if not cfg.token:
            return True
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else None
        if given is None and request.method == "GET":
            given = request.args.get("token")
        return given is not None and hmac.compare_digest(given.encode(), cfg.token.encode())

    def parse_filter() -> Filter:
        runs = [r for v in request.args.getlist("run") for r in v.split(",") if r]
        types = [t for v in request.args.getlist("types") for t in v.split(",") if t]
        for r in runs:
            if not ev.RUN_RE.match(r):
                raise BadParam("run", f"'{r[:70]}' is not a run name ([A-Za-z0-9._-]{{1,64}})")
        for t in types:
            if not ev.TYPE_RE.match(t):
                raise BadParam("types", f"'{t[:70]}' is not an event type")
        return Filter(frozenset(runs) or None, frozenset(types) or None)

    def parse_cursor(name: str, value: str | None):
        if value is None or value == "":
            return None
        cur = ev.parse_id(value)
        if cur is None:
            raise BadParam(name, "must be an event id like 1700000000000-42")
        return cur

    def publish(drafts: list[ev.Draft]) -> list[ev.Event]:
        """Validated drafts -> events. The batch is folded on copies of the snapshots first:
        a reducer bug raises here, before anything is journalled, buffered or streamed."""
        with publish_lock:
            staged = broker.stage(drafts)
            if broker.fans_out_on_publish:     # memory: journal, then make visible
                if history:
                    history.record(staged.events)
                result = broker.commit(staged)
            else:                              # Redis: one Lua script makes the batch visible
                result = broker.publish(drafts)
        if history:
            for run in result.finished:
                history.finished(broker.snapshot(run))
        metrics.accepted += len(result.events)
        if broker.fans_out_on_publish:
            fanout.publish(result.events, result.before, result.after)
        if notifier:
            notifier.published(broker, result)
        return result.events

    def cursor_id(cur) -> str:
        return f"{cur[0]}-{cur[1]}"

    snapshot_cache: dict = {}

    def snapshots_json(flt: Filter) -> str:
        """The snapshots as JSON, made once per head position and run filter: a thousand
        subscribers connecting after one event share one serialisation, not a thousand."""
        key = (broker.head, flt.runs)
        text = snapshot_cache.get(key)
        if text is None:
            if len(snapshot_cache) > 64 or any(k[0] != broker.head for k in snapshot_cache):
                snapshot_cache.clear()
            text = snapshot_cache[key] = ev.dumps(broker.snapshots(flt))
        return text

    def with_runs(obj: dict, runs_json: str) -> str:
        return ev.dumps(obj)[:-1] + ',"runs":' + runs_json + "}"

    # -- errors, auth, CORS --------------------------------------------------------
    class BadParam(Exception):
        def __init__(self, field_name: str, message: str):
            self.field, self.message = field_name, message

    def read_body() -> bytes:
        """The whole body, at most MAX_BODY bytes: a longer one is refused (413), never cut and
        parsed; a broken chunked encoding is a 400."""
        if (request.content_length or 0) > MAX_BODY:
            if request.content_length <= 1 << 20:
                drain(request.environ["wsgi.input"])
            raise RequestEntityTooLarge()
        stream = request.environ["wsgi.input"]
        chunks, size = [], 0
        try:
            while size <= MAX_BODY:
                chunk = stream.read(MAX_BODY + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except (ParseException, OSError, ValueError) as e:
            raise BadParam("body", f"the body could not be read ({type(e).__name__}); "
                                   "send it with Content-Length or valid chunked encoding") from e
        if size > MAX_BODY:
            drain(stream)
            raise RequestEntityTooLarge()
        return b"".join(chunks)

    def drain(stream, limit: int = 1 << 20) -> None:
        """Read (and drop) up to ``limit`` more bytes of a refused body, so the client reads the 413
        instead of a connection reset; past that the connection is closed anyway."""
        try:
            while limit > 0:
                chunk = stream.read(min(limit, 65536))
                if not chunk:
                    return
                limit -= len(chunk)
        except (ParseException, OSError, ValueError):
            return

    @app.errorhandler(BadParam)
    def bad_param(e: BadParam):
        metrics.reject("bad_param")
        return error(400, "bad_request", e.message, e.field)

    @app.errorhandler(BackendDown)
    def backend_down(e: BackendDown):
        metrics.reject("backend_unavailable")
        return error(503, "backend_unavailable", f"the shared store is unreachable ({e}); nothing was stored, "
                                                 "retry shortly", headers={"Retry-After": "1"})

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        if e.code == 413:
            metrics.reject("too_large")
            return error(413, "too_large", f"the body is larger than {MAX_BODY // 1024} KB; "
                                           "send fewer events per request", "body", headers={"Connection": "close"})
        return error(e.code or 500, (e.name or "error").lower().replace(" ", "_"), e.description or "")

    @app.errorhandler(Exception)
    def unexpected(e: Exception):  # a bug, never a user's fault: say so without a traceback
        app.logger.exception("unexpected error")
        return error(500, "internal", f"internal error ({type(e).__name__}); the event was not stored")

    open_paths = ("/healthz",)

    def forbidden_host():
        host = request.environ.get("HTTP_HOST")
        if policy.host_ok(host):
            return None
        metrics.reject("forbidden_host")
        return error(403, "forbidden_host", f"this server does not answer to the name {host[:100]!r}; "
                                            "start it with --allowed-host NAME to allow it", "host")

    def forbidden_origin(is_static: bool):
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS":
            if origin and origin in cfg.cors:
                return Response(status=204)
            return error(403, "cors", "this origin is not allowed (see --cors)", "origin")
        if is_static or policy.origin_ok(origin, request.environ.get("HTTP_HOST")):
            return None
        metrics.reject("forbidden_origin")
        return error(403, "forbidden_origin", f"requests from the origin {origin[:100]!r} are not allowed; "
                                              "start the server with --cors ORIGIN to allow it", "origin")

    def unauthorized(is_static: bool):
        if is_static or request.path in open_paths or authorized():
            return None
        metrics.reject("unauthorized")
        return error(401, "unauthorized", "a token is required: send 'Authorization: Bearer TOKEN'"
                                          " (or ?token= on GET)", headers={"WWW-Authenticate": "Bearer"})

    def not_json():
        if request.method != "POST" or is_json_content_type(request.headers.get("Content-Type")):
            return None
        metrics.reject("content_type")
        return error(415, "unsupported_media_type", "send the body as JSON with the header "
                                                    "'Content-Type: application/json' (curl: -H 'Content-Type: "
                                                    "application/json')", "content-type")

    @app.before_request
    def guard():
        metrics.last_activity = monotonic()
        is_static = request.method in ("GET", "HEAD") and not request.path.startswith(API_PREFIXES)
        return (forbidden_host() or forbidden_origin(is_static) or unauthorized(is_static) or not_json())

    @app.after_request
    def cors(resp: Response):
        origin = request.headers.get("Origin")
        if origin and origin in cfg.cors:
            resp.headers["Access-Control-Allow-Origin"] = origin
            resp.headers["Vary"] = "Origin"
            resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Last-Event-ID"
            resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        return resp

    # -- events in -------------------------------------------------------------------
    @app.post("/api/events")
    @app.post("/emit")
    def post_events():
        try:
            body = ev.loads(read_body())
            drafts = ev.validate_body(body, cfg.default_run)
        except ev.EventError as e:
            metrics.reject("invalid")
            return Response(ev.dumps({**e.as_json(), "error": "bad_request"}), status=400,
                            mimetype="application/json")
        explicit_run = isinstance(body, dict) and "run" in body or isinstance(body, list) and "run" in body[0]
        refused = rate_limited(drafts, explicit_run) or too_many_live_runs(drafts)
        if refused:
            return refused
        published = publish(drafts)
        return json_response({"ids": [e.id for e in published]}, 201)

    def rate_limited(drafts: list[ev.Draft], explicit_run: bool):
        """The run's budget (as named, else the client's address) and the client address's own,
        which no choice of run names dodges: a 429 when either is spent, charging neither."""
        addr = client_addr()
        key = f"run:{drafts[0].run}" if explicit_run else f"addr:{addr}"
        wait, refused_by = limiter.take_all([(key, run_budget), (f"client:{addr}", client_budget)], len(drafts))
        if not wait:
            return None
        metrics.rate_limited += 1
        metrics.reject("rate_limited")
        budget = client_budget if refused_by.startswith("client:") else run_budget
        flag = "--client-rate" if budget is client_budget else "--rate"
        return error(429, "rate_limited", f"over {budget.rate:g} events/s (burst {budget.burst}, {flag}) for "
                                          f"{refused_by}; retry after {wait:.2f}s",
                     headers={"Retry-After": str(max(1, int(wait + 0.999)))})

    def too_many_live_runs(drafts: list[ev.Draft]):
        """A batch that would start runs past --max-live-runs is refused (503), not half-taken."""
        new = {d.run for d in drafts if not broker.is_live_run(d.run)}
        if not new or broker.live_count() + len(new) <= cfg.max_live_runs:
            return None
        metrics.reject("too_many_live_runs")
        return error(503, "too_many_live_runs", f"the server already holds {cfg.max_live_runs} live runs "
                                                "(--max-live-runs); finish some, or retry later", "run",
                     headers={"Retry-After": "5"})

    # -- events out: SSE ------------------------------------------------------------------
    @app.get("/stream/progress")
    def stream():
        flt = parse_filter()
        q = parse_cursor("last_event_id", request.args.get("last_event_id"))
        header = request.headers.get("Last-Event-ID")
        # A browser resends whatever id it last saw: an unreadable one is a reset, not an error.
        cursor = (ev.parse_id(header) or (0, 0)) if header else q
        addr = client_addr()
        if metrics.streams_by_client.get(addr, 0) >= cfg.max_streams_per_client:
            metrics.reject("too_many_streams")
            return error(429, "too_many_streams", f"at most {cfg.max_streams_per_client} streams per client",
                         headers={"Retry-After": "5"})
        if not broker.healthy:
            raise BackendDown("the stream is not available")
        broker.catch_up()   # the hello holds every event accepted before this request, on any worker
        if metrics.subscribers >= cfg.max_streams:
            metrics.reject("server_full")
            return error(503, "server_full", f"the server holds {cfg.max_streams} streams already",
                         headers={"Retry-After": "5"})
        metrics.subscribers += 1
        metrics.streams_by_client[addr] = metrics.streams_by_client.get(addr, 0) + 1

        def release():
            metrics.subscribers -= 1
            metrics.last_activity = monotonic()
            n = metrics.streams_by_client.get(addr, 1) - 1
            if n:
                metrics.streams_by_client[addr] = n
            else:
                metrics.streams_by_client.pop(addr, None)

        gsock = request.environ.get("gunicorn.socket")
        chunked = request.environ.get("SERVER_PROTOCOL", "HTTP/1.0") >= "HTTP/1.1" and gsock is not None
        sub = Subscriber(flt, cursor, gsock, chunked)

        def frames():
            fanout.add(sub)
            try:
                yield sse.retry(cfg.retry_ms)
                hello = {"epoch": broker.epoch, "version": __version__, "heartbeat": cfg.heartbeat,
                         "buffer": broker.capacity, "resumed": sub.pos is not None}
                if sub.pos is None:
                    sub.pos = broker.head
                    hello["cursor"] = cursor_id(sub.pos)
                    yield sse.frame(cursor_id(sub.pos), "hello", with_runs(hello, snapshots_json(flt)))
                else:
                    hello["cursor"] = cursor_id(sub.pos)
                    yield sse.frame(cursor_id(sub.pos), "hello", ev.dumps(hello))
                while not sub.gone:
                    if sub.pending is not None:
                        sub.flush_pending()
                    res = broker.read(sub.pos, flt, limit=500)
                    if res.reset:
                        metrics.resets += 1
                        sub.pos = res.cursor
                        data = {"epoch": broker.epoch, "cursor": cursor_id(sub.pos), "reason": res.reason}
                        yield sse.frame(cursor_id(sub.pos), "reset", with_runs(data, snapshots_json(flt)))
                        continue
                    sub.pos = res.cursor
                    if res.events:
                        yield b"".join(e.frame for e in res.events)
                        continue
                    # Parked at the head: publishes write to this socket directly (fanout.py),
                    # and wake it only when it has to catch up itself.
                    sub.wake.clear()
                    sub.parked = True
                    try:
                        woken = sub.wake.wait(cfg.heartbeat)
                    finally:
                        sub.parked = False
                    if sub.gone:
                        return
                    if not woken:
                        yield sse.frame(cursor_id(sub.pos), "heartbeat", ev.dumps({"ts": round(clock(), 3)}))
            finally:
                fanout.discard(sub)

        resp = Response(frames(), mimetype="text/event-stream", headers={
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        resp.call_on_close(release)
        return resp

    # -- events out: polling ---------------------------------------------------------------
    @app.get("/api/events")
    def poll():
        flt = parse_filter()
        since = parse_cursor("since", request.args.get("since"))
        raw_limit = request.args.get("limit", "1000")
        if not LIMIT_RE.match(raw_limit) or not 1 <= int(raw_limit) <= 1000:
            raise BadParam("limit", "must be a whole number from 1 to 1000")
        if not broker.healthy:
            raise BackendDown("the event log is not available")
        broker.catch_up()
        res = broker.read(since if since is not None else broker.tail, flt, int(raw_limit))
        head = f'{{"epoch":{broker.epoch},"cursor":"{cursor_id(res.cursor)}","reset":{"true" if res.reset else "false"}'
        if res.reset:
            metrics.resets += 1
            head += ',"runs":' + snapshots_json(flt)
        body = head + ',"events":[' + ",".join(e.json for e in res.events) + "]}"
        return Response(body, mimetype="application/json", headers={"Cache-Control": "no-cache"})

    # -- runs -------------------------------------------------------------------------------
    def check_run(run: str) -> None:
        if not ev.RUN_RE.match(run):
            raise BadParam("run", "must match [A-Za-z0-9._-]{1,64}")

    @app.get("/api/runs")
    def runs():
        rows = broker.summaries()
        if history:
            for r, summary in history.index.items():
                rows.setdefault(r, summary)
        ordered = sorted(rows.values(), key=lambda s: s.get("updated_at") or 0, reverse=True)
        return json_response({"runs": ordered})

    @app.get("/api/runs/<run>")
    def run_state(run: str):
        check_run(run)
        snap = broker.snapshot(run) or (history.snapshot(run) if history else None)
        if snap is None:
            return error(404, "not_found", f"no run named '{run}'", "run")
        return json_response(snap)

    @app.get("/api/runs/<run>/transcript")
    def transcript(run: str):
        check_run(run)
        events, complete = history.transcript(run) if history else broker.transcript(run)
        if not events:
            return error(404, "not_found", f"no recorded events for run '{run}'", "run")
        return json_response({"run": run, "complete": complete, "events": events})

    @app.post("/api/runs/<run>/<action>")
    def control(run: str, action: str):
        check_run(run)
        if action not in CONTROL_ACTIONS:
            return error(404, "not_found", f"unknown action '{action}'; use stop, pause or resume", "action")
        try:
            raw = read_body()
            body = ev.loads(raw) if raw.strip() else {}
        except ev.EventError as e:
            return error(400, "bad_request", e.message, "body")
        if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str):
            return error(400, "bad_request", 'send {"reason": "text"} or nothing', "reason")
        broker.catch_up()
        snap = broker.snapshot(run)
        if snap is None:
            return error(404, "not_found", f"no live run named '{run}'", "run")
        c = snap["control"]
        already = (not state.is_live(snap)
                   or action == "stop" and c["stop_requested"] is not None
                   or action == "pause" and (c["pause_requested"] or snap["status"] == "paused")
                   or action == "resume" and not c["pause_requested"] and snap["status"] != "paused")
        if already:
            return json_response({"run": run, "action": action, "requested": False, "status": snap["status"]}, 202)
        data = {"reason": body["reason"][:500]} if body.get("reason") else {}
        (e,) = publish([ev.Draft(CONTROL_ACTIONS[action], run, data)])
        return json_response({"run": run, "action": action, "requested": True, "id": e.id}, 202)

    # -- operations ---------------------------------------------------------------------------
    @app.get("/healthz")
    def healthz():
        return json_response({"ok": broker.healthy, "version": __version__, "epoch": broker.epoch,
                              "pid": cfg.master_pid or os.getpid(),
                              "backend": "redis" if cfg.backend else "memory",
                              "subscribers": metrics.subscribers, "buffered": len(broker.buffer)},
                             200 if broker.healthy else 503)

    @app.get("/metrics")
    def prometheus():
        lines = [
            "# TYPE loop_events_accepted_total counter", f"loop_events_accepted_total {metrics.accepted}",
            "# TYPE loop_events_rejected_total counter",
            *[f'loop_events_rejected_total{{reason="{r}"}} {n}' for r, n in sorted(metrics.rejected.items())],
            "# TYPE loop_rate_limited_total counter", f"loop_rate_limited_total {metrics.rate_limited}",
            "# TYPE loop_resets_total counter", f"loop_resets_total {metrics.resets}",
            "# TYPE loop_subscribers gauge", f"loop_subscribers {metrics.subscribers}",
            "# TYPE loop_buffer_events gauge", f"loop_buffer_events {len(broker.buffer)}",
            "# TYPE loop_buffer_capacity gauge", f"loop_buffer_capacity {broker.capacity}",
            "# TYPE loop_fanout_direct_total counter", f"loop_fanout_direct_total {fanout.direct}",
            "# TYPE loop_fanout_woken_total counter", f"loop_fanout_woken_total {fanout.woken}",
            "# TYPE loop_runs_live gauge", f"loop_runs_live {sum(state.is_live(s) for s in broker.runs.values())}",
            "# TYPE loop_runs_reaped_total counter", f"loop_runs_reaped_total {metrics.reaped}",
        ]
        if history:
            lines += ["# TYPE loop_history_write_errors_total counter",
                      f"loop_history_write_errors_total {history.write_errors}"]
        return Response("\n".join(lines) + "\n", mimetype="text/plain; version=0.0.4")

    # -- the dashboard -----------------------------------------------------------------------------
    @app.get("/")
    def index():
        return send_from_directory(static_root, "index.html", max_age=0)

    @app.get("/<path:name>")
    def static_file(name: str):
        try:
            return send_from_directory(static_root, name, max_age=0)
        except (ValueError, OSError):   # a NUL byte or a name too long for the file system
            return error(404, "not_found", "no such file", "path")

    # -- housekeeping: stale runs and --idle-exit --------------------------------------------------
    def claim(run: str, last_event_id: str | None) -> bool:
        """One reap per silence, whichever worker sees it first (with Redis: a SET NX key)."""
        if not cfg.backend:
            return True
        from redis.exceptions import RedisError

        try:
            return bool(broker.client.set(f"{broker.prefix}reaped:{run}:{last_event_id}", 1, nx=True, ex=86400))
        except RedisError:
            return False

    def reap() -> None:
        """Finish as interrupted every live run that announced heartbeat_s and went silent."""
        if not broker.healthy:
            return
        try:
            broker.catch_up()   # with Redis: judge silence on every event accepted so far, on any worker
        except BackendDown:
            return
        for run, silent, last_id in silent_runs(broker.runs.values(), clock(), cfg.stale_after):
            if claim(run, last_id):
                publish([interrupted(run, silent)])
                metrics.reaped += 1

    def idle() -> bool:
        return bool(cfg.idle_exit) and metrics.subscribers == 0 and \
            monotonic() - metrics.last_activity >= cfg.idle_exit

    def housekeeping() -> None:
        tick = max(0.05, min(1.0, (cfg.stale_after or 4.0) / 4, (cfg.idle_exit or 4.0) / 4))
        while True:
            time.sleep(tick)
            try:
                reap()
            except Exception:   # a bug here must not stop the reaper for good
                app.logger.exception("reaping stale runs failed")
            if idle():
                app.logger.warning("no request or stream for %gs (--idle-exit): exiting", cfg.idle_exit)
                os.kill(cfg.master_pid or os.getpid(), signal.SIGTERM)
                return

    if cfg.master_pid is not None:   # under `loop serve` (serving.py), not in-process tests
        threading.Thread(target=housekeeping, name="loop-housekeeping", daemon=True).start()

    return app
