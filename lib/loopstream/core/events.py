"""The event model and its validation (pure: no I/O, no clock).

An event on the wire is ``{"id", "type", "run", "ts", "data"}``. Clients send
``type``, optionally ``run`` and ``data``; the server assigns ``id`` and ``ts``.
Ids are ``"<epoch>-<seq>"``: the epoch is the server's start time in
milliseconds (kept increasing across restarts), the sequence counts from 1.
They order as ``(epoch, seq)`` tuples, like Redis stream ids.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

TYPE_RE = re.compile(r"[a-z][a-z0-9_.:-]{0,63}\Z")
RUN_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
ID_RE = re.compile(r"(\d{1,20})-(\d{1,20})\Z")
DEFAULT_RUN = "default"
MAX_BATCH = 1000
MAX_NUMBER = 10**15   # |x| of any number in an event's data: exact in a double, far beyond any count or time
MAX_DEPTH = 32        # nesting of lists and objects inside "data"
OUTPUT_CHUNK = 4096   # characters of text in one output event (SPEC: a chunk of at most 4 KB)

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


def parse_id(value: object) -> tuple[int, int] | None:
    """``"1700000000000-42"`` -> ``(1700000000000, 42)``; None when malformed."""
    m = ID_RE.match(value.strip()) if isinstance(value, str) else None
    return (int(m.group(1)), int(m.group(2))) if m else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder and one encoder for every call: json.loads/json.dumps with options build a new one each time.
_DECODE = json.JSONDecoder(parse_constant=_reject_constant).decode
_ENCODE = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def loads(body: bytes | str) -> Any:
    """Strict JSON: strict UTF-8 (no encoded surrogates), no NaN/Infinity, and nesting too deep
    is an error, not a crash."""
    try:
        text = body.decode("utf-8") if isinstance(body, (bytes, bytearray)) else body
        if text.startswith("\ufeff"):      # json.loads says so too; the decoder alone would not
            raise EventError("body", "malformed JSON: it starts with a UTF-8 byte order mark; send it without")
        return _DECODE(text)
    except RecursionError as e:
        raise EventError("body", "JSON nested too deeply") from e
    except UnicodeDecodeError as e:
        raise EventError("body", "body is not UTF-8 text") from e
    except ValueError as e:
        raise EventError("body", f"malformed JSON: {e}") from e


def dumps(value: Any) -> str:
    """Compact JSON, ASCII only, so a frame never carries a raw newline or surrogate; never NaN or
    Infinity (a ValueError instead: the checks at input make sure no event holds one)."""
    return _ENCODE(value)


_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _child(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if _KEY_RE.match(key) else f"{path}[{json.dumps(key[:64])}]"


def _check_number(value: int | float, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise EventError(path, "must be a finite number")
    if abs(value) > MAX_NUMBER:
        raise EventError(path, f"a number must be within ±{MAX_NUMBER:.0e}")


def _check_text(value: str, path: str) -> None:
    if _SURROGATE.search(value):
        raise EventError(path, "text holds a lone UTF-16 surrogate (\\ud800-\\udfff); send valid Unicode")


def check_value(value: Any, path: str = "data", depth: int = 0) -> None:
    """Every number finite and within ±MAX_NUMBER, every text valid Unicode, nesting at most
    MAX_DEPTH, at any depth; EventError names the JSON path of the first offender."""
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        _check_number(value, path)
    elif isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, (dict, list)):
        if depth >= MAX_DEPTH:
            raise EventError(path, f"nested deeper than {MAX_DEPTH} levels")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str):
                _check_text(key, path)
            check_value(item, _child(path, key), depth + 1)


def _shown(value: Any) -> str:
    """A refused value, short and printable, for an error message."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:39] + "…"


def validate_one(obj: Any, where: str = "", default_run: str = DEFAULT_RUN) -> Draft:
    """Check one client event and return it as a Draft; raise EventError naming the field."""
    if not isinstance(obj, dict):
        raise EventError(where.rstrip(".") or "body", "an event must be a JSON object")
    unknown = sorted(set(obj) - CLIENT_FIELDS)
    if unknown:
        raise EventError(f"{where}{unknown[0]}", "unknown field; put extra fields inside \"data\"")
    etype = obj.get("type")
    if not isinstance(etype, str) or not TYPE_RE.match(etype):
        what = "required" if etype is None else f"invalid ({_shown(etype)})"
        raise EventError(f"{where}type", f"{what}; a lowercase name matching [a-z][a-z0-9_.:-]{{0,63}}")
    if etype in STREAM_ONLY:
        raise EventError(f"{where}type", f"'{etype}' is made by the server and cannot be posted")
    run = obj.get("run")
    if run is None:
        run = default_run
    elif not isinstance(run, str) or not RUN_RE.match(run):
        raise EventError(f"{where}run", f"invalid ({_shown(run)}); a name matching [A-Za-z0-9._-]{{1,64}}")
    data = obj.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise EventError(f"{where}data", "must be a JSON object")
    check_value(data, f"{where}data")
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


def parse_stored(line: bytes | str) -> dict | None:
    """An event read back from a journal or Redis, as a dict; None when the line is not one
    (damaged, or written before the input checks): stored data is never trusted blindly."""
    try:
        obj = loads(line)
        if not isinstance(obj, dict) or not isinstance(obj.get("data"), dict):
            return None
        if not (isinstance(obj.get("type"), str) and isinstance(obj.get("run"), str)
                and parse_id(obj.get("id")) is not None):
            return None
        check_value(obj["data"])
        ts = obj.get("ts")
        if ts is not None:
            if not isinstance(ts, (int, float)) or isinstance(ts, bool):   # runs are sorted by it
                return None
            check_value(ts, "ts")
    except EventError:
        return None
    return obj
