"""One stream's output waiting in the outbox: a bounded tail, and a visible marker for what was cut."""
from __future__ import annotations

import json
from typing import Any

from loopstream.core.events import OUTPUT_CHUNK as MAX_OUTPUT_CHUNK  # characters of text in one output event

PENDING_OUTPUT = 64_000   # characters of one stream's output kept while it waits; older text is elided


def _size(value) -> int:
    """Bytes of ``value`` as the outbox posts it (UTF-8 JSON)."""
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "replace"))


def _marker(elided: int) -> str:
    return f"[… {elided} bytes elided …]\n"


class PendingOutput:
    """One stream's output waiting to be sent: a bounded tail, and the bytes cut before it.

    Output is the one kind of event that may be elided: whatever exceeds
    ``PENDING_OUTPUT`` while it waits, or all but the last chunk when the
    sidecar's rate limit is in the way, is counted and replaced by a visible
    marker ("[… N bytes elided …]"), never dropped silently.
    """

    __slots__ = ("run", "story_id", "stream", "text", "elided")

    def __init__(self, run: str | None, story_id: str | None, stream: str, text: str = "", elided: int = 0):
        self.run, self.story_id, self.stream = run, story_id, stream
        self.text, self.elided = "", elided
        self.add(text)

    @property
    def key(self) -> tuple:
        return self.run, self.story_id, self.stream

    def add(self, text: str, cap: int = PENDING_OUTPUT) -> None:
        self.text += text
        if len(self.text) > cap:
            self._cut(len(self.text) - cap)

    def _cut(self, chars: int) -> None:
        self.elided += len(self.text[:chars].encode("utf-8", "replace"))
        self.text = self.text[chars:]

    def collapse(self) -> None:
        """Keep only what fits one event (whole lines where possible); count the rest as elided."""
        room = MAX_OUTPUT_CHUNK - len(_marker(self.elided + len(self.text.encode("utf-8", "replace"))))
        if len(self.text) <= room and not self.elided:
            return
        if len(self.text) > room:
            start = len(self.text) - room
            newline = self.text.find("\n", start - 1, len(self.text) - 1)
            self._cut(newline + 1 if newline >= start - 1 else start)

    def split(self, max_events: int, max_bytes: int) -> PendingOutput | None:
        """Take from the front what fits ``max_events`` events and ``max_bytes`` of JSON; None if nothing."""
        first = MAX_OUTPUT_CHUNK - (len(_marker(self.elided)) if self.elided else 0)
        room = first + (max_events - 1) * MAX_OUTPUT_CHUNK
        budget = max_bytes - 200 * max_events
        while room > 256 and _size(self.text[:room]) > budget:
            room //= 2
        if max_events < 1 or _size(self.text[:room]) > budget:
            return None
        taken = PendingOutput(self.run, self.story_id, self.stream, elided=self.elided)
        taken.text, self.text, self.elided = self.text[:room], self.text[room:], 0
        return taken

    def events(self) -> list[dict]:
        text = (_marker(self.elided) if self.elided else "") + self.text
        data = {"story_id": self.story_id} if self.story_id is not None else {}
        out = []
        for i in range(0, max(1, len(text)), MAX_OUTPUT_CHUNK):
            d: dict[str, Any] = {**data, "stream": self.stream, "text": text[i:i + MAX_OUTPUT_CHUNK]}
            if self.elided and not i:
                d["elided"] = self.elided
            out.append({"type": "output", **({"run": self.run} if self.run else {}), "data": d})
        return out

    def absorb(self, newer: PendingOutput) -> None:
        """Put ``newer`` (the same stream, later text) after this one."""
        self.elided += newer.elided
        self.add(newer.text)
