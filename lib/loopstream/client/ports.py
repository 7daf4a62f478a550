"""Ports on this machine a sidecar could listen on: whether one can be bound (as gunicorn binds), and a free one.

`loop serve` asks before it starts gunicorn, and `loop run` before it starts a sidecar of its own. No
requests here: `loop serve` imports this before gunicorn's workers monkey-patch.
"""
from __future__ import annotations

import socket


def bind_error(host: str, port: int) -> OSError | None:
    """Why nothing could listen on ``host``:``port`` (errno EADDRINUSE: something holds it), or None when it can.

    SO_REUSEADDR as gunicorn binds: a port whose last connections wait in TIME_WAIT is no obstacle.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            return e
    return None


def free_port(host: str) -> int:
    """A port on ``host`` (an IPv4 address) that nothing listens on now: the system's pick."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
