"""Runs and control: the run list, one run's state and transcript, stop/pause/resume."""
from __future__ import annotations

from flask import Blueprint, Response

from loopstream.core import events as ev
from loopstream.sidecar.routes.common import check_run, client_addr, error, hub, json_response, read_body

bp = Blueprint("runs", __name__)


@bp.get("/api/runs")
def runs() -> Response:
    return json_response({"runs": hub().run_list()})


@bp.get("/api/runs/<run>")
def run_state(run: str) -> Response:
    check_run(run)
    return json_response(hub().run_state(run))


@bp.get("/api/runs/<run>/transcript")
def transcript(run: str) -> Response:
    check_run(run)
    return json_response(hub().transcript(run))


@bp.post("/api/runs/<run>/<action>")
def control(run: str, action: str) -> Response:
    check_run(run)
    h = hub()
    h.check_action(action)
    try:
        raw = read_body()
        body = ev.loads(raw) if raw.strip() else {}
    except ev.EventError as e:
        return error(400, "bad_request", e.message, "body")
    if not isinstance(body, dict) or not isinstance(body.get("reason", ""), str):
        return error(400, "bad_request", 'send {"reason": "text"} or nothing', "reason")
    try:
        ev.check_value(body.get("reason", ""), "reason")   # valid Unicode, as event text must be
    except ev.EventError as e:
        return error(400, "bad_request", e.message, e.field)
    return json_response(h.control(run, action, body.get("reason") or "", client_addr()), 202)
