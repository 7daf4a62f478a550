"""The dashboard: its static files, from a checkout's dashboard/ or where a wheel installed them."""
from __future__ import annotations

import sys
from pathlib import Path

from flask import Blueprint, Response, send_from_directory

from .common import error

bp = Blueprint("dashboard", __name__)


def dashboard_dir() -> Path:
    """dashboard/ beside lib/ in a checkout, or share/loop/dashboard where a wheel put it."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent.parent / "dashboard", Path(sys.prefix) / "share" / "loop" / "dashboard"):
        if (candidate / "index.html").exists():
            return candidate
    return here.parent.parent / "dashboard"


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
