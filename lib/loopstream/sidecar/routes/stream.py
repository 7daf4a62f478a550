"""Events out: the SSE stream (GET /stream/progress) and polling (GET /api/events)."""
from __future__ import annotations

from flask import Blueprint, Response, request

from loopstream.core import events as ev
from loopstream.sidecar import worker_io
from loopstream.sidecar.routes.common import client_addr, hub, parse_cursor, parse_filter, parse_limit
from loopstream.sidecar.streams import Stream

bp = Blueprint("stream", __name__)


@bp.get("/stream/progress")
def stream() -> Response:
    # Everything the generator needs is read here: the request context is gone while it runs.
    h = hub()
    flt = parse_filter()
    query = parse_cursor("last_event_id", request.args.get("last_event_id"))
    header = request.headers.get("Last-Event-ID")
    # A browser resends whatever id it last saw: an unreadable one is a reset, not an error.
    cursor = (ev.parse_id(header) or (0, 0)) if header else query
    addr = client_addr()
    h.open_stream(addr)
    env = request.environ
    sub = Stream(flt, cursor, worker_io.request_socket(env), worker_io.chunked(env), addr)
    resp = Response(h.streams.body(sub), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    # A stream handed off (streams.py) is counted until its socket ends, not its request.
    resp.call_on_close(lambda: h.streams.request_closed(sub))
    return resp


@bp.get("/api/events")
def poll() -> Response:
    h = hub()
    flt = parse_filter()
    since = parse_cursor("since", request.args.get("since"))
    limit = parse_limit(request.args.get("limit", "1000"))
    return Response(h.poll(flt, since, limit), mimetype="application/json", headers={"Cache-Control": "no-cache"})
