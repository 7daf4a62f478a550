"""Client-side defaults, written once: where a sidecar is looked for, and how long a stop waits.

The sidecar's own defaults (buffer, rates, heartbeat, limits) live in sidecar.config.Config's fields; `loop serve`
shows and uses those, so no default is written twice. The sidecar's default host is this module's DEFAULT_HOST.
"""
from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_SERVER = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"   # bin/loop-emit and loop-progress.sh say it too
GRACE = 5.0            # seconds between SIGINT and SIGKILL when a run, story or command is stopped
