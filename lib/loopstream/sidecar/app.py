"""create_app(config): the sidecar's WSGI app, wired from the hub and the route blueprints.

Everything that decides lives elsewhere: the hub (hub.py) owns the broker,
history, fan-out, limiters, reaper, notifier and metrics and does every
operation; the blueprints (routes/) parse requests and write responses;
routes/middleware.py holds the request guards and error handlers. This file only
wires them. It runs under gunicorn's gevent worker (``loop serve``), where
``threading`` is monkey-patched, so waiting on a ``threading.Event`` parks one
greenlet, not the worker.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from flask import Flask

from loopstream.sidecar.config import Config
from loopstream.sidecar.guard import HostPolicy
from loopstream.sidecar.hub import Hub
from loopstream.sidecar.routes import BLUEPRINTS
from loopstream.sidecar.routes import middleware as hooks
from loopstream.sidecar.routes.common import MAX_BODY
from loopstream.sidecar.routes.dashboard import dashboard_dir

__all__ = ["Config", "create_app", "dashboard_dir", "MAX_BODY"]


def create_app(config: Config | None = None, clock: Callable[[], float] = time.time,
               monotonic: Callable[[], float] = time.monotonic) -> Flask:
    """The sidecar's WSGI app. ``clock`` stamps events; ``monotonic`` drives the rate limiter.
    The hub is ``app.extensions["loop"]``; the views reach it through ``current_app``."""
    cfg = config or Config()
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    hub = Hub(cfg, clock=clock, monotonic=monotonic)
    app.extensions["loop"] = hub
    hooks.install(app, HostPolicy(cfg.host, cfg.allowed_hosts, cfg.cors))
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    if cfg.master_pid is not None:   # under `loop serve` (launch.py), not in-process tests
        hub.start_housekeeping()
    return app
