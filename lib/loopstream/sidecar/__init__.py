"""The sidecar: takes events, keeps state, streams. Imports core/ and client/ only, never work/ or cli/.

app (create_app), launch (gunicorn, in-process), config, hub (the one object routes talk to), fanout and
ingest (the held stream and the fast POST path under gunicorn's gevent worker), brokers/ (memory, redis),
history and stored (what is kept and read back), ratelimit, connections, guard, forwarded, reaper, notify,
fleet, otlp_in, routes/ (thin Flask blueprints).
"""
