"""The event model and its validation (pure: no I/O, no clock).

An event on the wire is ``{"id", "type", "run", "ts", "data"}``. Clients send
``type``, optionally ``run`` and ``data``; the server assigns ``id`` and ``ts``.
Ids are ``"<epoch>-<seq>"``: the epoch is the server's start time in
milliseconds (kept increasing across restarts), the sequence counts from 1.
They order as ``(epoch, seq)`` tuples, like Redis stream ids.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

TYPE_RE = re.compile(r"[a-z][a-z0-9_.:-]{0,63}\Z")
RUN_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
ID_RE = re.compile(r"(\d{1,20})-(\d{1,20})\Z")
DEFAULT_RUN = "default"
MAX_BATCH = 1000

# Fields a client may send; "id" and "ts" are accepted and replaced, so an
# event copied from one server's transcript can be posted to another.
CLIENT_FIELDS = {"type", "run", "data", "id", "ts"}

# Stream-only types: the server makes them, clients may not post them.
STREAM_ONLY = {"hello", "heartbeat", "reset"}


class EventError(ValueError):
    """A client sent something that is not a valid event; ``field`` names where."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def as_json(self) -> dict:
        return {"error": "invalid_event", "field": self.field, "message": self.message}


@dataclass(slots=True)
class Event:
    """An accepted event. ``json`` is serialised once, at publish time."""

    epoch: int
    seq: int
    type: str
    run: str
    ts: float
    data: dict
    json: str = field(default="", repr=False)
    frame: bytes = field(default=b"", repr=False)  # the SSE frame, built once

    @property
    def id(self) -> str:
        return f"{self.epoch}-{self.seq}"

    @property
    def key(self) -> tuple[int, int]:
        return (self.epoch, self.seq)

    def as_dict(self) -> dict:
        return {"id": self.id, "type": self.type, "run": self.run, "ts": self.ts, "data": self.data}


@dataclass(slots=True, frozen=True)
class Draft:
    """A validated event not yet given an id or a timestamp."""

    type: str
    run: str
    data: dict


def parse_id(value: str) -> tuple[int, int] | None:
    """``"1700000000000-42"`` -> ``(1700000000000, 42)``; None when malformed."""
    m = ID_RE.match(value.strip()) if isinstance(value, str) else None
    return (int(m.group(1)), int(m.group(2))) if m else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(body: bytes | str) -> Any:
    """Strict JSON: no NaN/Infinity, and nesting too deep is an error, not a crash."""
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except RecursionError as e:
        raise EventError("body", "JSON nested too deeply") from e
    except UnicodeDecodeError as e:
        raise EventError("body", "body is not UTF-8 text") from e
    except ValueError as e:
        raise EventError("body", f"malformed JSON: {e}") from e


def dumps(value: Any) -> str:
    """Compact JSON, ASCII only, so a frame never carries a raw newline or surrogate."""
    return json.dumps(value, separators=(",", ":"))


def validate_one(obj: Any, where: str = "", default_run: str = DEFAULT_RUN) -> Draft:
    """Check one client event and return it as a Draft; raise EventError naming the field."""
    if not isinstance(obj, dict):
        raise EventError(where.rstrip(".") or "body", "an event must be a JSON object")
    unknown = sorted(set(obj) - CLIENT_FIELDS)
    if unknown:
        raise EventError(f"{where}{unknown[0]}", "unknown field; put extra fields inside \"data\"")
    etype = obj.get("type")
    if not isinstance(etype, str) or not TYPE_RE.match(etype):
        raise EventError(f"{where}type", "required; lowercase name matching [a-z][a-z0-9_.:-]{0,63}")
    if etype in STREAM_ONLY:
        raise EventError(f"{where}type", f"'{etype}' is made by the server and cannot be posted")
    run = obj.get("run")
    if run is None:
        run = default_run
    elif not isinstance(run, str) or not RUN_RE.match(run):
        raise EventError(f"{where}run", "must match [A-Za-z0-9._-]{1,64}")
    data = obj.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise EventError(f"{where}data", "must be a JSON object")
    return Draft(etype, run, data)


def validate_body(body: Any, default_run: str = DEFAULT_RUN) -> list[Draft]:
    """One event object or a non-empty array of them -> drafts (all or nothing)."""
    if isinstance(body, list):
        if not body:
            raise EventError("body", "an empty batch; send at least one event")
        if len(body) > MAX_BATCH:
            raise EventError("body", f"a batch holds at most {MAX_BATCH} events")
        return [validate_one(o, f"[{i}].", default_run) for i, o in enumerate(body)]
    return [validate_one(body, "", default_run)]
