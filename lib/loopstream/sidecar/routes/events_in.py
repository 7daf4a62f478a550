"""Events in: POST /api/events (and /emit, its short name).

``accept`` is the whole operation, shared with the worker's fast path (ingest.py),
so a POST is validated, admitted and published the same way whichever serves it.
"""
from __future__ import annotations

from flask import Blueprint, Response

from loopstream.core import events as ev
from loopstream.sidecar.hub import Hub
from loopstream.sidecar.routes.common import client_addr, hub, json_response, read_body

bp = Blueprint("events_in", __name__)


@bp.post("/api/events")
@bp.post("/emit")
def post_events() -> Response:
    h = hub()
    try:
        ids = accept(h, read_body(), client_addr())
    except ev.EventError as e:
        return invalid(h, e)
    return json_response({"ids": ids}, 201)


def accept(h: Hub, raw: bytes, addr: str) -> list[str]:
    """Parse, validate, admit (rate limits, live-run cap) and publish one body; the new ids.
    Raises EventError (a 400), Refused or BackendDown; nothing is stored unless it returns."""
    body = ev.loads(raw)
    drafts = ev.validate_body(body, h.config.default_run)
    charges = h.admit(drafts, names_run(body), addr)
    return [e.id for e in h.publish(drafts, charges)]


def invalid(h: Hub, e: ev.EventError) -> Response:
    h.metrics.reject("invalid")
    return Response(ev.dumps({**e.as_json(), "error": "bad_request"}), status=400, mimetype="application/json")


def names_run(body) -> list[bool]:
    """Does each event name its run (else it is charged to the client's address)? ``body`` is valid."""
    return [isinstance(e, dict) and "run" in e for e in (body if isinstance(body, list) else [body])]
