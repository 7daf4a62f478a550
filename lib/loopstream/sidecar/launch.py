"""Run the sidecar under gunicorn with gevent workers, in-process.

The memory broker lives in one process: a second worker would split the
buffer and the stream, so ``workers`` other than 1 is refused here unless the
stream lives in Redis, where every worker follows the same one.
"""
from __future__ import annotations

import os
import resource

from gunicorn.app.base import BaseApplication

from loopstream.sidecar.config import Config


class WorkerCountError(ValueError):
    pass


def raise_fd_limit() -> int:
    """Allow as many open sockets as the hard limit permits (one per subscriber)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            pass
    return soft


class Sidecar(BaseApplication):
    def __init__(self, config: Config, host: str = "127.0.0.1", port: int = 8765,
                 workers: int = 1, log_level: str = "warning", access_log: bool = False):
        if workers != 1 and not config.backend:
            raise WorkerCountError(
                f"--workers {workers}: the memory backend keeps the buffer in one process, so a second "
                "worker would split the stream. Use 1 worker (one gevent worker holds thousands of "
                "streams), or the Redis backend for several.")
        if config.idle_exit and workers != 1:
            raise WorkerCountError(
                f"--idle-exit with --workers {workers}: each worker sees only its own requests, so one "
                "could stop the server while another serves. Use --idle-exit with 1 worker.")
        config.host = host
        config.master_pid = os.getpid()   # the process to signal: this one becomes gunicorn's master
        self.config = config
        self.workers = workers
        self.bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.log_level = log_level
        self.access_log = access_log
        self.app = None
        super().__init__()

    def load_config(self) -> None:
        fds = raise_fd_limit()
        settings = {
            "bind": [self.bind],
            "workers": self.workers,
            "worker_class": "loopstream.sidecar.ingest.IngestWorker",   # gevent, with the event-POST fast path
            "worker_connections": max(1000, min(fds - 64, self.config.max_streams + 256)),
            "graceful_timeout": 1,
            "timeout": 30,
            "keepalive": 75,
            "loglevel": self.log_level,
            "accesslog": "-" if self.access_log else None,
            # the client as the limits see it (forwarded.py), and the path without its query string
            "access_log_format": '%({loop.client}e)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss',
            "proc_name": "loop-sidecar",
            "control_socket_disable": True,   # gunicorn >= 24 opens a control socket otherwise
            "worker_exit": self._worker_exit,
        }
        if self.config.forwarded_allow_ips:   # gunicorn believes X-Forwarded-Proto from the same proxies
            settings["forwarded_allow_ips"] = ",".join(self.config.forwarded_allow_ips)
        for key, value in settings.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self):
        from loopstream.sidecar.app import create_app  # in the worker, after gevent has patched

        self.app = create_app(self.config)
        return self.app

    def _worker_exit(self, server, worker) -> None:
        if self.app is not None:
            self.app.extensions["loop"].close()   # the hub: flush the history, let go of the backend
