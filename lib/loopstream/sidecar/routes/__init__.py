"""The sidecar's HTTP routes: thin blueprints by concern, each reaching the hub through ``current_app``.

- events_in: POST /api/events and /emit
- claude_hooks: POST /api/hooks/claude, Claude Code's raw hook JSON (formats/hook_session.py maps it)
- otlp: POST /v1/logs (Claude Code's cost and tokens, otlp/logs_in.py) and POST /v1/metrics
- stream: GET /stream/progress (SSE) and GET /api/events (polling)
- runs: the run list, one run, its transcript, and control (stop/pause/resume)
- operations: /healthz and /metrics
- session: POST /api/session, the dashboard's token traded for a session cookie
- dashboard: the static dashboard files

middleware registers, in one place, the request guards (Host, Origin, token,
Content-Type: guard.py decides), the CORS headers and the error handlers; common holds what every
blueprint shares (the hub, JSON answers, parsing of parameters and bodies).
"""
from __future__ import annotations

from loopstream.sidecar.routes.claude_hooks import bp as claude_hooks
from loopstream.sidecar.routes.dashboard import bp as dashboard
from loopstream.sidecar.routes.events_in import bp as events_in
from loopstream.sidecar.routes.operations import bp as operations
from loopstream.sidecar.routes.otlp import bp as otlp
from loopstream.sidecar.routes.runs import bp as runs
from loopstream.sidecar.routes.session import bp as session
from loopstream.sidecar.routes.stream import bp as stream

BLUEPRINTS = (events_in, claude_hooks, otlp, stream, runs, operations, session, dashboard)
