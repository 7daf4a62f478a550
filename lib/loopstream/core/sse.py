"""Server-Sent Events framing (pure).

Every frame carries ``id:``, ``event:`` and ``data:``; the data is one line of
ASCII JSON (see events.dumps), so it never needs splitting over data lines.
"""
from __future__ import annotations


def frame(event_id: str, event: str, data_json: str) -> bytes:
    return f"id: {event_id}\nevent: {event}\ndata: {data_json}\n\n".encode()


def retry(ms: int) -> bytes:
    return f"retry: {int(ms)}\n\n".encode()


def comment(text: str = "") -> bytes:
    return f": {text}\n\n".encode()
