"""POST /api/session: the dashboard trades its bearer token for a session cookie.

An EventSource cannot send an ``Authorization`` header, and a token in a URL
(``?token=``) ends up in every proxy's access and error log. So the page opened
with ``#token=TOKEN`` (a fragment never leaves the browser) POSTs once with
``Authorization: Bearer TOKEN`` and gets an ``HttpOnly; SameSite=Strict``
cookie (guard.make_session: stateless, any worker accepts it); the stream, the
polls and the controls then carry the cookie. ``HttpOnly``: a script injected
into the page cannot read it; ``SameSite=Strict``: no other site's page makes
the browser send it (and a POST also passes the Origin and JSON checks).
"""
from __future__ import annotations

import time

from flask import Blueprint, Response, request

from loopstream.sidecar.guard import SESSION_TTL, make_session, session_cookie_name, token_ok
from loopstream.sidecar.routes.common import error, hub

bp = Blueprint("session", __name__)


@bp.post("/api/session")
def start_session() -> Response:
    token = hub().config.token
    if not token:
        return error(404, "no_token", "this sidecar has no token: nothing to trade", "token")
    if not token_ok(token, request.headers.get("Authorization", "")):
        # the guard also passes the session cookie: a cookie must not buy itself a new expiry
        return error(401, "unauthorized", "a session is bought with the bearer token: send "
                                          "'Authorization: Bearer TOKEN'", headers={"WWW-Authenticate": "Bearer"})
    resp = Response(status=204)
    resp.set_cookie(session_cookie_name(token), make_session(token, time.time()), max_age=int(SESSION_TTL),
                    path="/", httponly=True, samesite="Strict", secure=request.is_secure)
    resp.headers["Cache-Control"] = "no-store"
    return resp
