"""Operations: /healthz (200 while the backend answers, else 503) and /metrics (Prometheus)."""
from __future__ import annotations

from flask import Blueprint, Response

from loopstream.sidecar.routes.common import hub, json_response

bp = Blueprint("operations", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    health = hub().health()
    return json_response(health, 200 if health["ok"] else 503)


@bp.get("/metrics")
def prometheus() -> Response:
    return Response(hub().metrics_text(), mimetype="text/plain; version=0.0.4")
