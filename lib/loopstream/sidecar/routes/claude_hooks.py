"""Claude Code's hooks in: POST /api/hooks/claude takes the raw hook JSON.

A Claude Code ``"type": "http"`` hook can post here directly, and ``loop-emit --hook`` (what
``loop hooks install`` wires) ships its spool here as an array of payloads. formats/hook_session.py says
what each payload means; this route validates the lot, admits it (rate limits, live runs) and
publishes it all or nothing. The text of a prompt is kept only with ``?prompts=1`` (the install's
``--prompts``); otherwise only its length is.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from loopstream.core import events as ev
from loopstream.core.formats.hook_session import Repeats, session_events
from loopstream.sidecar.hub import Hub
from loopstream.sidecar.routes.common import BadParam, client_addr, hub, json_response, read_body
from loopstream.sidecar.routes.events_in import invalid

bp = Blueprint("claude_hooks", __name__)


@bp.post("/api/hooks/claude")
def post_claude_hook() -> Response:
    h = hub()
    prompts = request.args.get("prompts", "0")
    if prompts not in ("0", "1"):
        raise BadParam("prompts", "must be 1 (keep the text of prompts) or 0")
    try:
        ids = accept_hooks(h, read_body(), client_addr(), prompts == "1")
    except ev.EventError as e:
        return invalid(h, e)
    return json_response({"ids": ids}, 201)


def accept_hooks(h: Hub, raw: bytes, addr: str, prompts: bool = False) -> list[str]:
    """One hook payload or an array of them -> their events, published all or nothing; the new ids.
    Raises EventError (a 400 naming the field, ``[i].field`` in an array), Refused or BackendDown."""
    drafts = hook_drafts(ev.loads(raw), prompts, repeats_of(h))
    charges = h.admit(drafts, True, addr)
    return [e.id for e in h.publish(drafts, charges)]


def repeats_of(h: Hub) -> Repeats:
    """This worker's streaks of identical tool calls in hook sessions (formats.hooks.Repeats)."""
    watch = getattr(h, "hook_repeats", None)
    if watch is None:
        watch = h.hook_repeats = Repeats()    # type: ignore[attr-defined]
    return watch


def hook_drafts(body: Any, prompts: bool, repeats: Repeats | None = None) -> list[ev.Draft]:
    """The validated events of a payload or an array of payloads (all or nothing)."""
    batch = isinstance(body, list)
    items = body if batch else [body]
    if not items:
        raise ev.EventError("body", "an empty array; send at least one hook payload")
    if len(items) > ev.MAX_BATCH:
        raise ev.EventError("body", f"at most {ev.MAX_BATCH} hook payloads in one request")
    drafts: list[ev.Draft] = []
    for i, payload in enumerate(items):
        try:
            run, events = session_events(payload, prompts)
            if repeats is not None:
                events = repeats.see(payload, run, events)
            drafts += [ev.validate_one({"type": t, "run": run, "data": d}) for t, d in events]
        except ev.EventError as e:
            if not batch:
                raise
            raise ev.EventError(f"[{i}]" if e.field == "body" else f"[{i}].{e.field}", e.message) from e
    if len(drafts) > ev.MAX_BATCH:   # a Stop payload makes two events
        raise ev.EventError("body", f"these {len(items)} hook payloads make {len(drafts)} events; at most "
                                    f"{ev.MAX_BATCH} go in one request: send fewer payloads at a time")
    return drafts
