"""What the sidecar reads back from its own storage (the history files, Redis) is checked here.

Pure: no I/O. Stored bytes are never trusted: they may be damaged, written by an older version or
by someone else (Redis is shared, a data dir can be edited). Everything read back goes through
``load`` (strict JSON: no NaN or Infinity, no number beyond a double, bounded nesting) and, where
it stands for a summary, a snapshot or an id counter, the ``sound_*`` check for its shape; what
fails is quarantined or skipped by the caller, never served or folded.
"""
from __future__ import annotations

import math
import re
from typing import Any

from loopstream.core import events as ev

MAX_EPOCH = 10**15    # an epoch (ms since 1970) at or past this is not one we wrote: the year 33658;
                      # exact in a double, so Redis's Lua computes with it exactly
MAX_SEQ = 10**15      # a sequence number past this is not one we wrote
MAX_DEPTH = 64        # nesting of anything stored (an event's data nests at most 32 levels)
DIGITS = re.compile(r"[0-9]{1,20}\Z")


class StoredError(ValueError):
    """Stored text that is not what the sidecar writes."""


def load(text: bytes | str) -> Any:
    """Stored JSON as a value; StoredError when it is not strict JSON (UTF-8, no NaN/Infinity, no
    number beyond a double) nested at most MAX_DEPTH levels."""
    try:
        value = ev.loads(text)
    except ev.EventError as e:
        raise StoredError(e.message) from e
    check(value)
    return value


def check(value: Any, depth: int = 0) -> None:
    """StoredError unless every number is finite and nesting stays within MAX_DEPTH."""
    if isinstance(value, float) and not math.isfinite(value):
        raise StoredError("holds a number that is not finite")
    if isinstance(value, (dict, list)):
        if depth >= MAX_DEPTH:
            raise StoredError(f"is nested deeper than {MAX_DEPTH} levels")
        for item in value.values() if isinstance(value, dict) else value:
            check(item, depth + 1)


def load_or_none(text: object) -> Any:
    """``load``, or None for anything that is not sound stored JSON (or not text at all)."""
    if not isinstance(text, (str, bytes)):
        return None
    try:
        return load(text)
    except StoredError:
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sound_epoch(value: Any) -> int | None:
    """An epoch as we write it (a positive int below MAX_EPOCH, or its decimal text), else None."""
    if isinstance(value, str):
        value = int(value) if DIGITS.match(value) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < MAX_EPOCH:
        return value
    return None


def sound_seq(value: Any) -> int | None:
    """A sequence counter as we write it (0 <= n < MAX_SEQ, or its decimal text), else None."""
    if isinstance(value, str):
        value = int(value) if DIGITS.match(value) else None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_SEQ:
        return value
    return None


def sound_id(value: Any) -> tuple[int, int] | None:
    """An event id whose epoch and sequence are sound, as a cursor; else None."""
    key = ev.parse_id(value)
    if key is None or sound_epoch(key[0]) is None or sound_seq(key[1]) is None:
        return None
    return key


# The fields of a summary or a snapshot the sidecar itself computes with (sorting, reaping,
# resuming a fold): each must have the type it is written with. Others are only shown.
_TIMES = ("started_at", "updated_at", "finished_at", "heartbeat_s")


def sound_summary(value: Any, run: str | None = None) -> bool:
    """Is ``value`` a run summary (state.summarize) the sidecar could have written, for ``run``?"""
    if not (isinstance(value, dict) and isinstance(value.get("run"), str) and ev.RUN_RE.match(value["run"])
            and isinstance(value.get("status"), str)):
        return False
    if run is not None and value["run"] != run:
        return False
    if any(value.get(k) is not None and not _is_number(value[k]) for k in _TIMES):
        return False
    count = value.get("event_count", 0)
    if not (isinstance(count, int) and not isinstance(count, bool) and 0 <= count < MAX_SEQ):
        return False
    last = value.get("last_event_id")
    return last is None or sound_id(last) is not None


def sound_snapshot(value: Any, run: str | None = None) -> bool:
    """Is ``value`` a run snapshot the reducer could have made (checked where a fold would rely on it)?"""
    if not sound_summary(value, run) or "event_count" not in value:
        return False
    stories = value.get("stories")
    return (isinstance(stories, list) and all(isinstance(s, dict) and isinstance(s.get("id"), str) for s in stories)
            and isinstance(value.get("counts"), dict) and isinstance(value.get("control"), dict)
            and isinstance(value.get("output"), str) and isinstance(value.get("log"), list))
