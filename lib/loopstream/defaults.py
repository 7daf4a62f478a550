"""Client-side defaults, written once: where a sidecar is looked for, and how long a stop waits.

The sidecar's own defaults (buffer, rates, heartbeat, limits) live in config.Config's fields;
`loop serve` shows and uses those (``SIDECAR``), so no default is written twice.
"""
from __future__ import annotations

from .config import Config

SIDECAR = Config()                                    # the sidecar's defaults, read from Config's fields
DEFAULT_PORT = 8765
DEFAULT_SERVER = f"http://{SIDECAR.host}:{DEFAULT_PORT}"   # bin/loop-emit and loop-progress.sh say it too
GRACE = 5.0            # seconds between SIGINT and SIGKILL when a run, story or command is stopped
