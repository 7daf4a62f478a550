"""The sidecar: takes events, keeps state, streams. Imports core/ and client/ only, never work/ or cli/.

app (create_app), launch (gunicorn, in-process), config, hub (the one object routes talk to; hub_parts builds it,
metrics counts), streams (one home for a stream's life: in its request, handed off, catching up, gone), ingest
(the worker and its fast POST path), worker_io (all it relies on in gunicorn and gevent), brokers/ (memory,
redis), history and stored (what is kept and read back), ratelimit, connections, guard, forwarded, reaper,
notify, fleet, otlp/ (logs in, traces out), routes/ (thin Flask blueprints).
"""
