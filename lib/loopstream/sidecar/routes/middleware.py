"""Request guards, CORS headers and error handlers, registered on the app in one place.

Every request passes the guards in order (guard.py decides, this applies):
the Host header (DNS rebinding), the Origin (cross-site pages; an OPTIONS
preflight is answered here), the token, and a JSON Content-Type on POSTs.
Static dashboard files are exempt from the Origin and token checks (the
page must load to ask for a token), /healthz from the token.
"""
from __future__ import annotations

import time

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from loopstream.sidecar.brokers.memory import BackendDown
from loopstream.sidecar.guard import (
    HostPolicy,
    is_json_content_type,
    is_otlp_content_type,
    session_cookie_name,
    session_ok,
    token_ok,
)
from loopstream.sidecar.hub import Hub, Refused
from loopstream.sidecar.routes.common import MAX_BODY, BadParam, client_addr, error, hub

API_PREFIXES = ("/api/", "/stream/", "/emit", "/metrics", "/healthz", "/v1/")
OPEN_PATHS = ("/healthz",)


def install(app: Flask, policy: HostPolicy) -> None:
    """Register the guards, the CORS headers and the error handlers on ``app``."""

    @app.before_request
    def guard():
        h = hub()
        h.touch()
        client_addr()      # resolved first, so the access log and every limit see the same address
        is_static = request.method in ("GET", "HEAD") and not request.path.startswith(API_PREFIXES)
        return (forbidden_host(h, policy) or forbidden_origin(h, policy, is_static)
                or unauthorized(h, is_static) or not_json(h))

    app.after_request(cors)
    app.register_error_handler(BadParam, bad_param)
    app.register_error_handler(Refused, refused)
    app.register_error_handler(BackendDown, backend_down)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected)


def forbidden_host(h: Hub, policy: HostPolicy) -> Response | None:
    host = request.environ.get("HTTP_HOST")
    if policy.host_ok(host):
        return None
    h.metrics.reject("forbidden_host")
    return error(403, "forbidden_host", f"this server does not answer to the name {(host or '')[:100]!r}; "
                                        "start it with --allowed-host NAME to allow it", "host")


def forbidden_origin(h: Hub, policy: HostPolicy, is_static: bool) -> Response | None:
    origin = request.headers.get("Origin")
    if request.method == "OPTIONS":
        if origin and origin in h.config.cors:
            return Response(status=204)
        return error(403, "cors", "this origin is not allowed (see --cors)", "origin")
    if is_static or policy.origin_ok(origin, request.environ.get("HTTP_HOST")):
        return None
    h.metrics.reject("forbidden_origin")
    return error(403, "forbidden_origin", f"requests from the origin {(origin or '')[:100]!r} are not allowed; "
                                          "start the server with --cors ORIGIN to allow it", "origin")


def unauthorized(h: Hub, is_static: bool) -> Response | None:
    if is_static or request.path in OPEN_PATHS or authorized(h.config.token):
        return None
    h.metrics.reject("unauthorized")
    return error(401, "unauthorized", "a token is required: send 'Authorization: Bearer TOKEN' (the dashboard: "
                                      "open it with #token=TOKEN)", headers={"WWW-Authenticate": "Bearer"})


def authorized(token: str | None) -> bool:
    """The bearer token (a header; ``?token=`` on GETs for older clients), or the dashboard's session cookie."""
    query = request.args.get("token") if request.method == "GET" else None
    if token_ok(token, request.headers.get("Authorization", ""), query):
        return True
    assert token is not None, "token_ok passes every request when no token is set"
    return session_ok(token, request.cookies.get(session_cookie_name(token)), time.time())


def not_json(h: Hub) -> Response | None:
    ctype = request.headers.get("Content-Type")
    if request.method != "POST" or is_json_content_type(ctype) or is_otlp_content_type(request.path, ctype):
        return None
    h.metrics.reject("content_type")
    return error(415, "unsupported_media_type", "send the body as JSON with the header "
                                                "'Content-Type: application/json' (curl: -H 'Content-Type: "
                                                "application/json')", "content-type")


def cors(resp: Response) -> Response:
    origin = request.headers.get("Origin")
    if origin and origin in hub().config.cors:
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Vary"] = "Origin"
        resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Last-Event-ID"
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
    return resp


def bad_param(e: BadParam) -> Response:
    hub().metrics.reject("bad_param")
    return refused(e)


def refused(e: Refused) -> Response:
    return error(e.status, e.code, e.message, e.field, headers=e.headers, details=e.details)


def backend_down(e: BackendDown) -> Response:
    hub().metrics.reject("backend_unavailable")
    return error(503, "backend_unavailable", f"the shared store is unreachable ({e}); nothing was stored, "
                                             "retry shortly", headers={"Retry-After": "1"})


def http_error(e: HTTPException) -> Response:
    if e.code == 413:
        hub().metrics.reject("too_large")
        return error(413, "too_large", f"the body is larger than {MAX_BODY // 1024} KB; "
                                       "send fewer events per request", "body", headers={"Connection": "close"})
    return error(e.code or 500, (e.name or "error").lower().replace(" ", "_"), e.description or "")


def unexpected(e: Exception) -> Response:
    """A bug, never a user's fault: say so without a traceback (it goes to the log)."""
    current_app.logger.exception("unexpected error")
    return error(500, "internal", f"internal error ({type(e).__name__}); the event was not stored")
