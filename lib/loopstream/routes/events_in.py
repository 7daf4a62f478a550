"""Events in: POST /api/events (and /emit, its short name)."""
from __future__ import annotations

from flask import Blueprint, Response

from .. import events as ev
from .common import client_addr, hub, json_response, read_body

bp = Blueprint("events_in", __name__)


@bp.post("/api/events")
@bp.post("/emit")
def post_events() -> Response:
    h = hub()
    try:
        body = ev.loads(read_body())
        drafts = ev.validate_body(body, h.config.default_run)
    except ev.EventError as e:
        h.metrics.reject("invalid")
        return Response(ev.dumps({**e.as_json(), "error": "bad_request"}), status=400, mimetype="application/json")
    h.admit(drafts, names_run(body), client_addr())
    published = h.publish(drafts)
    return json_response({"ids": [e.id for e in published]}, 201)


def names_run(body) -> bool:
    """Does the batch name its run (else it is charged to the client's address)?"""
    return isinstance(body, dict) and "run" in body or isinstance(body, list) and "run" in body[0]
