"""How the work side (and the CLI) talks to a sidecar. No Click here; import the module you need:

- ``http``: one request, errors as SidecarError a person can act on, JSON answers; the /api/runs calls
  (list_runs, get_run, request_control).
- ``outbox``: events leave in order from a background thread that retries until delivered.
- ``pending``: one stream's output while it waits in the outbox: a bounded tail, elided with a marker.
- ``pace``: the outbox's mirror of the sidecar's rate limit, learned from its 429s.
- ``spool``: what a command could not deliver before exiting, handed to the shell hooks' spool.
- ``stream``: /stream/progress frames, reconnecting with Last-Event-ID.
- ``follow``: what each frame means (Follower, as dashboard/connection.js reads it), gaps caught up.
- ``watch``: `loop watch`'s runs and the one it follows to its end.
- ``defaults``: where a sidecar is looked for, and how long a stop waits.
- ``ports``: whether a sidecar could listen on a port here (as gunicorn binds), and a free one.

``requests`` is imported by http, outbox and stream only, and the CLI imports those inside its commands:
`loop serve` uses defaults and ports alone before gunicorn's workers monkey-patch.
"""
