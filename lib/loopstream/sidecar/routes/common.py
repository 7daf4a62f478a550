"""What every blueprint shares: the hub, JSON answers, and parsing of query parameters and bodies."""
from __future__ import annotations

import re

from flask import Response, current_app, request
from gunicorn.http.errors import ParseException

from loopstream.core import events as ev
from loopstream.sidecar.brokers.memory import Cursor, Filter
from loopstream.sidecar.hub import Hub, Refused

MAX_BODY = 64 * 1024
LIMIT_RE = re.compile(r"[0-9]{1,4}\Z")
DRAIN_MAX = 1 << 20


class BadParam(Refused):
    """A query parameter or body the request got wrong (400, counted as ``bad_param``)."""

    def __init__(self, field_name: str, message: str):
        super().__init__(400, "bad_request", message, field_name)


def hub() -> Hub:
    """The hub of the app handling this request (create_app puts it there)."""
    return current_app.extensions["loop"]


def error(status: int, code: str, message: str, field: str | None = None, headers=None,
          details: dict | None = None) -> Response:
    body = {"error": code, "message": message, **(details or {})}
    if field:
        body["field"] = field
    return Response(ev.dumps(body), status=status, mimetype="application/json", headers=headers or {})


def json_response(obj, status: int = 200) -> Response:
    return Response(ev.dumps(obj), status=status, mimetype="application/json")


def client_addr() -> str:
    """The request's client address (the hub resolves a trusted proxy's forwarded headers), worked out
    once per request; gunicorn's access log prints it (environ ``loop.client``)."""
    env = request.environ
    addr = env.get("loop.client")
    if addr is None:
        addr = env["loop.client"] = hub().client(request.remote_addr or "?", env.get("HTTP_X_FORWARDED_FOR"),
                                                 env.get("HTTP_X_REAL_IP"))
    return addr


def split_args(name: str) -> list[str]:
    """``?run=a,b&run=c`` -> ["a", "b", "c"]."""
    return [x for v in request.args.getlist(name) for x in v.split(",") if x]


def parse_filter() -> Filter:
    runs, types = split_args("run"), split_args("types")
    for r in runs:
        if not ev.RUN_RE.match(r):
            raise BadParam("run", f"'{r[:70]}' is not a run name ([A-Za-z0-9._-]{{1,64}})")
    for t in types:
        if not ev.TYPE_RE.match(t):
            raise BadParam("types", f"'{t[:70]}' is not an event type")
    return Filter(frozenset(runs) or None, frozenset(types) or None)


def parse_cursor(name: str, value: str | None) -> Cursor | None:
    if value is None or value == "":
        return None
    cur = ev.parse_id(value)
    if cur is None:
        raise BadParam(name, "must be an event id like 1700000000000-42")
    return cur


def parse_limit(raw: str) -> int:
    if not LIMIT_RE.match(raw) or not 1 <= int(raw) <= 1000:
        raise BadParam("limit", "must be a whole number from 1 to 1000")
    return int(raw)


def check_run(run: str) -> None:
    if not ev.RUN_RE.match(run):
        raise BadParam("run", "must match [A-Za-z0-9._-]{1,64}")


def read_body(limit: int = MAX_BODY) -> bytes:
    """The whole body, at most ``limit`` bytes: a longer one is refused (413), never cut and
    parsed; a broken chunked encoding is a 400; a body not sent within --header-timeout is a 408
    (a stalled client must not hold a worker's slot for ever)."""
    import gevent

    stream = request.environ["wsgi.input"]
    try:
        with gevent.Timeout(hub().config.header_timeout) as timer:
            return _read_within(stream, limit)
    except gevent.Timeout as t:
        if t is not timer:
            raise
        hub().metrics.reject("request_timeout")
        raise Refused(408, "request_timeout", f"the body did not arrive within {hub().config.header_timeout:g}s "
                                              "(--header-timeout); send it whole, at once", "body") from None


def _read_within(stream, limit: int) -> bytes:
    length = request.content_length or 0
    if length > limit:
        if length <= DRAIN_MAX:
            drain(stream)
        raise too_large(limit)
    try:
        data = read_at_most(stream, limit + 1)
    except (ParseException, OSError, ValueError) as e:
        raise BadParam("body", f"the body could not be read ({type(e).__name__}); "
                               "send it with Content-Length or valid chunked encoding") from e
    if len(data) > limit:
        drain(stream)
        raise too_large(limit)
    return data


def too_large(limit: int) -> Refused:
    hub().metrics.reject("too_large")
    size = f"{limit >> 20} MB" if limit >= 1 << 20 else f"{limit >> 10} KB"
    return Refused(413, "too_large", f"the body is larger than {size}; send fewer events per request", "body",
                   headers={"Connection": "close"})


def read_at_most(stream, limit: int) -> bytes:
    chunks, size = [], 0
    while size < limit:
        chunk = stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def drain(stream, limit: int = DRAIN_MAX) -> None:
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
