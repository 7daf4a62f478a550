"""The sidecar's configuration, and the checks `loop serve` makes before starting.

Light on purpose: gunicorn's master process imports this, not Flask or TinyDB
(the worker loads the app), so the master stays small.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from loopstream.client.defaults import DEFAULT_HOST
from loopstream.core.events import DEFAULT_RUN

# When the journal is fsynced (memory backend with history), and what a 201 then survives:
FSYNC_MODES = {
    "always": "before the 201 (commits grouped across concurrent POSTs): a power cut loses no acknowledged event",
    "everysec": "by a background thread about once a second: a power cut may lose the last second or so",
    "never": "left to the OS (Linux writes dirty pages back within ~30 s): a power cut may lose that much",
}


@dataclass
class Config:
    buffer: int = 100
    rate: float = 10.0
    burst: int = 20
    heartbeat: float = 15.0
    db: str | None = None              # history file; None = no history
    fsync: str = "everysec"            # when journals reach the disk: see FSYNC_MODES
    token: str | None = None
    cors: list[str] = field(default_factory=list)
    max_streams_per_client: int = 32
    max_streams: int = 20_000
    retry_ms: int = 2000
    default_run: str = DEFAULT_RUN
    backend: str | None = None         # a Redis URL; None = the memory backend
    host: str = DEFAULT_HOST            # the bind address (a Host header naming it is accepted)
    allowed_hosts: list[str] = field(default_factory=list)   # more Host names; "*" = any
    client_rate: float = 100.0         # events/s per client address, above the per-run budget; 0 = off
    client_burst: int = 1000
    max_live_runs: int = 1000          # live runs held at once; a new one past it gets 503
    max_live_runs_per_client: int = 100   # live runs one client address started; past it 429; 0 = off
    ghost_after: float = 300.0         # a live run only ever named in one request is finished after this; 0 = never
    header_timeout: float = 10.0       # seconds a request has to send its whole head (nginx's client_header_timeout)
    max_connections_per_client: int = 64   # open connections per client address that are not streams
    fast_path: bool = True             # the worker answers plain event POSTs itself (ingest.py); False: Flask does
    forwarded_allow_ips: list[str] = field(default_factory=list)   # proxies whose X-Forwarded-For is believed
    stale_after: float | None = None   # seconds of silence that end a run with heartbeat_s (None: 3 x it)
    idle_exit: float = 0.0             # exit after this many seconds without a request or stream; 0 = never
    master_pid: int | None = None      # gunicorn's master (the process to signal), set by launch.py
    notify: str | None = None          # webhook or ntfy topic URL told of every finished run
    notify_format: str = "json"        # "json" or "ntfy"
    notify_min_duration: float = 0.0  # runs shorter than this (s) are not notified
    dashboard_url: str | None = None   # the link notifications carry
    otlp_endpoint: str | None = None   # OTLP/HTTP traces URL every run is exported to (otlp/traces_out.py); None = off


def default_db_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "loop" / "history.json"


def check_history(path: str | Path) -> None:
    """Fail early, with a message, when the history folder cannot be used (before forking workers).
    A damaged history file is not an error here: history/ moves it aside and serves the rest."""
    path = Path(path)
    try:
        (path.parent / "runs").mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(13, "the folder is not writable")
    except OSError as e:
        raise OSError(f"cannot use the history at {path}: {e.strerror}; pass another --db") from e


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def backend_url(value: str | None) -> str | None:
    """``None``/"memory" -> None (the memory backend); a Redis URL as it is; anything else: an error."""
    if not value or value == "memory":
        return None
    if value.startswith(("redis://", "rediss://", "unix://")):
        return value
    raise ValueError(f"--backend {value!r}: use 'memory' or a Redis URL like redis://127.0.0.1:6379/0")


OTLP_TRACES_PATH = "/v1/traces"


def otlp_traces_url(option: str | None, environ: dict[str, str] | None = None) -> tuple[str | None, str]:
    """(the OTLP/HTTP URL traces go to, what named it): ``--otlp-endpoint`` or
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` are the collector's base URL (``/v1/traces`` is added, as the
    OpenTelemetry SDKs do); ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is the whole URL. (None, "") when
    none is set; ValueError, naming the setting, when it is not an http(s) URL."""
    from urllib.parse import urlsplit

    env = os.environ if environ is None else environ
    traces, base = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
    for source, value, whole in (("--otlp-endpoint", option, False), (traces, env.get(traces), True),
                                 (base, env.get(base), False)):
        if value is None or not value.strip():
            continue
        value = value.strip()
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
        except ValueError:
            ok = False
        if not ok or any(c.isspace() for c in value):
            raise ValueError(f"{source} {value[:200]!r} is not an http(s) URL; give the collector's address, "
                             "e.g. http://127.0.0.1:4318 (Phoenix: http://127.0.0.1:6006)")
        if whole or value.rstrip("/").endswith(OTLP_TRACES_PATH):
            return value, source
        return value.rstrip("/") + OTLP_TRACES_PATH, source
    return None, ""


def otlp_protocol_warning(environ: dict[str, str] | None = None) -> str | None:
    """The line `loop serve` says once at start when ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` asks for
    anything but http/protobuf: traces go out as OTLP/HTTP protobuf whatever it says (None: nothing to say)."""
    env = os.environ if environ is None else environ
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = (env.get(name) or "").strip()
        if value:
            if value == "http/protobuf":
                return None
            return (f"loop: {name}={value[:40]!r} is not supported; traces are sent as OTLP/HTTP protobuf "
                    "(http/protobuf), which the collector must accept")
    return None
