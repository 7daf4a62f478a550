"""The reference peers: small hubs built the way users build them, one per file.

Each serves the same two endpoints so the benchmark drives them alike:
``POST /publish`` (a JSON body, broadcast as one SSE ``data:`` line) and
``GET /stream`` (Server-Sent Events).
"""
