"""OpenTelemetry in: POST /v1/logs (Claude Code's cost and tokens, otlp/logs_in.py) and POST /v1/metrics.

OTLP/HTTP, ``application/json`` or ``application/x-protobuf`` (neither is a type a cross-site form
can send), maybe ``Content-Encoding: gzip``; the Host, Origin and token rules apply as everywhere.
A body that is not OTLP logs is a 400 that changes nothing; what it holds is published all or
nothing. Metrics are read and answered (2xx), so an exporter set for both does not complain.
"""
from __future__ import annotations

from flask import Blueprint, Response, request

from loopstream.core import events as ev
from loopstream.sidecar.otlp.logs_in import OtlpError, decode_logs, empty_response, gunzip, is_protobuf, session_usage
from loopstream.sidecar.routes.common import client_addr, error, hub, read_body

bp = Blueprint("otlp", __name__)

MAX_OTLP_BODY = 4 << 20     # bytes as sent: an exporter's batch of 512 records is well under 1 MB


@bp.post("/v1/logs")
def post_logs() -> Response:
    h = hub()
    try:
        usage = off_the_loop(read_logs, otlp_body(), request.headers.get("Content-Type"))
        drafts = [ev.validate_one({"type": t, "run": run, "data": data}) for run, t, data in usage.events]
    except (OtlpError, ev.EventError) as e:
        h.metrics.reject("invalid")
        return error(400, "bad_request", str(e), "body")
    if drafts:
        h.publish(drafts, h.admit(drafts, True, client_addr()))
    return answer()


@bp.post("/v1/metrics")
def post_metrics() -> Response:
    try:
        otlp_body()
    except OtlpError as e:
        hub().metrics.reject("invalid")
        return error(400, "bad_request", str(e), "body")
    return answer()


def read_logs(body: bytes, content_type: str | None):
    return session_usage(decode_logs(body, content_type))


def off_the_loop(fn, *args):
    """``fn(*args)`` in gevent's thread pool under `loop serve` (protobuf's JSON parser is pure Python:
    a large body must not stall every stream and POST of the worker); directly elsewhere."""
    from gevent.monkey import is_module_patched

    if not is_module_patched("threading"):
        return fn(*args)
    import gevent

    return gevent.get_hub().threadpool.apply(fn, args)


def answer() -> Response:
    body, mimetype = empty_response(is_protobuf(request.headers.get("Content-Type")))
    return Response(body, status=200, mimetype=mimetype)


def otlp_body() -> bytes:
    """The body, inflated when gzipped: a 413 past MAX_OTLP_BODY, a 400 (OtlpError) for a bad gzip."""
    data = read_body(MAX_OTLP_BODY)
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding == "gzip":
        return gunzip(data)
    if encoding != "identity":
        raise OtlpError(f"Content-Encoding {encoding[:40]!r} is not supported (gzip or none)")
    return data
