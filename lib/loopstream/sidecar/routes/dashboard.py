"""The dashboard: its static files, from a checkout's dashboard/ or where a wheel installed them."""
from __future__ import annotations

from flask import Blueprint, Response, send_from_directory

from loopstream.installed import dashboard_dir
from loopstream.sidecar.routes.common import error

bp = Blueprint("dashboard", __name__)

STATIC_ROOT = dashboard_dir()


@bp.get("/")
def index() -> Response:
    return send_from_directory(STATIC_ROOT, "index.html", max_age=0)


@bp.get("/<path:name>")
def static_file(name: str) -> Response:
    try:
        return send_from_directory(STATIC_ROOT, name, max_age=0)
    except (ValueError, OSError):   # a NUL byte or a name too long for the file system
        return error(404, "not_found", "no such file", "path")
