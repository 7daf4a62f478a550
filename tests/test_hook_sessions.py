"""Claude Code hook payloads -> loop events (formats/hook_session.py), over the payloads recorded from the
real Claude Code (tests/agents/claude-real/hooks-*.jsonl), folded by the reducer into a session."""
import json
from pathlib import Path

import pytest

from helpers import REAL
from loopstream.core import state
from loopstream.core.events import EventError, validate_one
from loopstream.core.formats import tool_summary
from loopstream.core.formats.hook_session import HOOK_EVENTS, session_events

RECORDED = sorted(REAL.glob("hooks-*.jsonl"))


def payloads(name: str) -> list[dict]:
    return [json.loads(line) for line in (REAL / name).read_text().splitlines()]


def fold(items: list[dict], prompts: bool = False) -> tuple[list[tuple[str, dict]], dict]:
    events, snap = [], None
    for p in items:
        run, evs = session_events(p, prompts=prompts)
        for t, d in evs:
            validate_one({"type": t, "run": run, "data": d})     # each is an event the sidecar takes
            events.append((t, d))
            snap = state.apply(snap, {"id": f"1-{len(events)}", "type": t, "run": run, "ts": float(len(events)),
                                      "data": d})
    return events, snap


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.stem)
def test_every_recorded_session_becomes_a_run_named_by_its_session_id(path):
    items = payloads(path.name)
    events, snap = fold(items)
    assert snap["run"] == items[0]["session_id"]
    assert snap["session"]["state"] == "ended" and snap["status"] == "passed"
    assert snap["session"]["project"] == Path(items[0]["cwd"]).name
    calls = [d for t, d in events if t == "tool_call"]
    pre = [p for p in items if p["hook_event_name"] == "PreToolUse"]
    assert [c["id"] for c in calls] == [p["tool_use_id"] for p in pre]
    assert [c["summary"] for c in calls] == [tool_summary(p["tool_name"], p["tool_input"]) for p in pre]
    results = {d["id"]: d["is_error"] for t, d in events if t == "tool_result"}
    for p in items:
        if p["hook_event_name"] in ("PostToolUse", "PostToolUseFailure"):
            assert results[p["tool_use_id"]] is (p["hook_event_name"] == "PostToolUseFailure")


def test_an_interactive_session_goes_working_waiting_working_idle_ended():
    items = payloads("hooks-interactive.jsonl")
    states, snap = [], None
    for i, p in enumerate(items):
        run, evs = session_events(p)
        for t, d in evs:
            snap = state.apply(snap, {"id": f"1-{i}", "type": t, "run": run, "ts": float(i), "data": d})
        states.append((p["hook_event_name"], snap["session"]["state"], snap["session"]["waiting_for"]))
    assert states == [
        ("SessionStart", "idle", None),
        ("UserPromptSubmit", "working", None),
        ("PreToolUse", "working", None),
        ("PermissionRequest", "waiting_for_input", "Claude needs your permission to use Bash: rm -rf build"),
        ("Notification", "waiting_for_input", "Claude needs your permission"),
        ("PostToolUse", "working", None),          # approved: the tool ran
        ("Stop", "idle", None),
        ("Notification", "waiting_for_input", "Claude is waiting for your input"),
        ("SessionEnd", "ended", None)]
    assert snap["session"]["model"] == "claude-opus-5-5" and snap["session"]["reason"] == "prompt_input_exit"
    assert snap["agent"]["tool_calls"] == 1


def test_the_last_assistant_message_at_stop_is_agent_text_cut():
    stop = {**payloads("hooks-shell.jsonl")[-2], "last_assistant_message": "x" * 50_000}
    assert stop["hook_event_name"] == "Stop"
    (_, events) = session_events(stop)
    assert [t for t, _ in events] == ["agent_text", "session_state"]
    assert len(events[0][1]["text"]) < 2100 and "[cut: 48000 more characters]" in events[0][1]["text"]


def test_a_subagent_is_tracked_by_its_agent_id_with_its_tool_calls():
    events, snap = fold(payloads("hooks-subagent.jsonl"))
    inner = [d for t, d in events if t == "tool_call" and d.get("agent_id")]
    assert inner and all(d["parent_id"] == d["agent_id"] == "a96b79ec653dd9583" for d in inner)
    [sub] = snap["session"]["subagents"]
    assert sub["agent_id"] == "a96b79ec653dd9583" and sub["agent_type"] == "general-purpose"
    assert sub["state"] == "done" and sub["tool_calls"] == 1 and sub["last_tool"]["summary"] == "ls | wc -l"
    agent_call = next(d for t, d in events if t == "tool_call" and d["tool"] == "Agent")
    assert agent_call["subagent_type"] == "general-purpose"


def test_a_subagent_still_running_when_the_session_ends_is_done():
    items = [p for p in payloads("hooks-subagent.jsonl") if p["hook_event_name"] != "SubagentStop"]
    _, snap = fold(items)
    assert snap["session"]["subagents"][0]["state"] == "done"


def test_prompt_text_is_kept_only_when_the_install_opted_in():
    items = payloads("hooks-subagent.jsonl")
    prompt = items[1]["prompt"]
    events, snap = fold(items)
    assert prompt not in json.dumps([events, snap])
    assert ("session_state", {"state": "working", "prompt_length": len(prompt)}) in events
    events, snap = fold(items, prompts=True)
    assert ("session_state", {"state": "working", "prompt_length": len(prompt), "prompt": prompt}) in events
    # the hook command drops the text before anything touches disk and sends its length instead
    stripped = {k: v for k, v in items[1].items() if k != "prompt"} | {"prompt_length": 12}
    assert session_events(stripped, prompts=True)[1] == [("session_state", {"state": "working", "prompt_length": 12})]


def test_a_session_that_ended_comes_back_on_resume():
    items = payloads("hooks-shell.jsonl")
    _, snap = fold(items + [{**items[0], "source": "resume"}])
    assert snap["status"] == "running" and snap["finished_at"] is None
    assert snap["session"]["state"] == "idle" and snap["session"]["source"] == "resume"


@pytest.mark.parametrize("payload, field", [
    ([1, 2], "body"),
    ("text", "body"),
    ({"hook_event_name": "Stop"}, "session_id"),
    ({"session_id": "", "hook_event_name": "Stop"}, "session_id"),
    ({"session_id": "a/b", "hook_event_name": "Stop"}, "session_id"),
    ({"session_id": "x" * 65, "hook_event_name": "Stop"}, "session_id"),
    ({"session_id": 42, "hook_event_name": "Stop"}, "session_id"),
    ({"session_id": "s1"}, "hook_event_name"),
    ({"session_id": "s1", "hook_event_name": ["Stop"]}, "hook_event_name"),
])
def test_a_payload_it_cannot_use_is_refused_naming_the_field(payload, field):
    with pytest.raises(EventError) as e:
        session_events(payload)
    assert e.value.field == field


def test_an_unknown_hook_with_a_valid_session_is_a_log_line():
    run, events = session_events({"session_id": "s1", "hook_event_name": "FutureThing\x1b[2J\nx", "junk": {"a": 1}})
    assert run == "s1" and events == [("claude_hook", {"hook": "FutureThing x",
                                                        "message": "Claude Code hook FutureThing x"})]
    snap = state.apply(None, {"id": "1-1", "type": events[0][0], "run": run, "ts": 1.0, "data": events[0][1]})
    assert snap["log"][-1]["text"] == "Claude Code hook FutureThing x"


def test_garbage_in_known_fields_never_raises_and_stays_bounded():
    for hook in HOOK_EVENTS:
        p = {"session_id": "s1", "hook_event_name": hook, "cwd": 7, "tool_name": {"x": 1}, "tool_input": "x" * 10**6,
             "tool_use_id": None, "tool_response": [1, "y" * 10**6], "message": "m\x1b]0;t\x07" * 1000,
             "agent_id": ["a"], "last_assistant_message": 3, "prompt": None, "error": {"e": 1}}
        _, events = session_events(p)
        for t, d in events:
            validate_one({"type": t, "run": "s1", "data": d})
            assert len(json.dumps(d)) < 5000, (hook, t)
            assert "\x1b" not in json.dumps(d, ensure_ascii=False)


def test_an_idle_interactive_session_is_never_declared_lost():
    from loopstream.sidecar.reaper import ghost_runs, silent_runs
    snap = None
    for t, d in session_events(payloads("hooks-interactive.jsonl")[0])[1]:   # SessionStart, in one request
        snap = state.apply(snap, {"id": "1-1", "type": t, "run": "s1", "ts": 100.0, "data": d})
    assert snap["heartbeat_s"] is None and snap["status"] == "running"
    assert list(ghost_runs([snap], now=100.0 + 10**6, after=300)) == []
    assert list(silent_runs([snap], now=100.0 + 10**6, stale_after=60)) == []
    plain = state.apply(None, {"id": "1-1", "type": "progress", "run": "p", "ts": 100.0, "data": {}})
    assert [r for r, _, _ in ghost_runs([plain], now=100.0 + 10**6, after=300)] == ["p"]   # the rule still holds
