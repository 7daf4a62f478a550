"""One reducer rule in two languages: the same generated events (emoji, non-strings, floats, huge
and empty fields, unknown types, fields of the wrong type) folded by core/state/ and by node running
dashboard/state.js must give identical snapshots, and neither may raise."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from loopstream.core import events as ev
from loopstream.core import state

KNOWN = ["task_started", "story_started", "ac_completed", "ac_failed", "story_completed", "task_completed",
         "error_occurred", "output", "progress", "stop_requested", "pause_requested", "resume_requested",
         "task_stopped", "task_paused", "task_resumed", "agent_init", "agent_text", "tool_call", "tool_result",
         "agent_result", "story_stalled", "task_interrupted", "task_alive", "agent_looping", "subagent_completed",
         "session_started", "session_state", "session_subagent", "session_ended", "agent_usage"]
UNKNOWN = ["deploy.step", "constructor", "x", "tostring", "valueof"]
FIELDS = ["story_id", "title", "acceptance_criteria", "ac_index", "ac_text", "status", "duration_ms", "attempts",
          "attempt", "text", "stream", "percent", "current", "total", "message", "reason", "error", "error_type",
          "error_message", "stories", "story_count", "estimated_duration", "task_name", "task_id", "summary",
          "priority", "model", "tool", "id", "is_error", "cost_usd", "input_tokens", "output_tokens", "num_turns",
          "silent_s", "session_id", "passed", "failed", "skipped", "command", "exit_code", "parent_id",
          "subagent_type", "description", "repeat", "repeats", "state",
          "agent_id", "agent_type", "waiting_for", "cwd", "project", "source"]

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30) | st.sampled_from(
    ["", "😀", "é😀\u202e\r\n", "a\x1b[2Jb", "passed", "failed", "stopped", "cancelled", "skipped", "S1"])
huge = st.builds(lambda piece, n: piece * n, st.sampled_from(["😀", "x", "é😀\n", "ab"]), st.integers(0, 40_000))
number = (st.integers(-ev.MAX_NUMBER, ev.MAX_NUMBER) | st.integers(-3, 1100)
          | st.floats(-1e15, 1e15, allow_nan=False, allow_infinity=False)
          | st.sampled_from([0.0, -0.0, 2.0, 1e-7, 1.5e-6, 0.1, 5e-324, 1e15, 99.99999999999999]))
scalar = st.none() | st.booleans() | number | text
value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.sampled_from(FIELDS) | text, inner, max_size=4), max_leaves=12)
story_id = st.sampled_from(["S1", "S2", 1, 1.0, None, {"a": 1}, [1], "", "😀"])
field_value = st.one_of(value, value, story_id, huge, st.lists(text | st.dictionaries(st.just("text"), value)))
plausible = st.fixed_dictionaries({}, optional={
    "story_id": story_id, "text": text | huge, "status": st.sampled_from(["passed", "failed", "cancelled", "x", 3]),
    "ac_index": st.integers(-1, 4) | st.sampled_from([1.0, "0", True]), "reason": value, "message": text | huge,
    "percent": number, "current": number, "total": number, "duration_ms": number, "story_count": number,
    "acceptance_criteria": st.lists(text | value, max_size=4), "title": value, "error": value,
    "command": value, "exit_code": number | st.sampled_from([True, "3", None]),
    "id": st.sampled_from(["t1", "t2", 1, None]), "parent_id": st.sampled_from(["t1", "t2", "t3", None, ["t1"]]),
    "subagent_type": value, "repeat": number | st.sampled_from([2, 3, 4, "3"]), "repeats": number,
    "state": st.sampled_from(["done", "failed", "x", None, "working", "waiting_for_input", "idle", "ended"]),
    "agent_id": st.sampled_from(["a1", "a2", 1, None])})
data = st.builds(lambda a, b: {**a, **b}, plausible, st.dictionaries(st.sampled_from(FIELDS), field_value, max_size=5))


@st.composite
def runs(draw):
    types = draw(st.lists(st.sampled_from(KNOWN) | st.sampled_from(UNKNOWN), min_size=1, max_size=20))
    ts = 100.0
    out = []
    for i, etype in enumerate(types):
        ts += draw(st.sampled_from([0, 0.5, 1, 7.25, 600]))
        out.append({"id": f"9-{i + 1}", "type": etype, "run": "r", "ts": round(ts, 3), "data": draw(data)})
    return out


@pytest.fixture(scope="module")
def node_reducer():
    node = shutil.which("node")
    assert node, "node is required (bin/test installs nodejs)"
    proc = subprocess.Popen([node, str(ROOT / "tests" / "js" / "reduce_lines.mjs")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, encoding="utf-8")

    def fold(events_json: str) -> dict:
        proc.stdin.write(events_json + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    yield fold
    proc.stdin.close()
    proc.wait(10)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                  HealthCheck.function_scoped_fixture])
@given(events=runs())
def test_python_and_js_reducers_fold_the_same_events_to_the_same_snapshot(node_reducer, events):
    wire = json.dumps(events, ensure_ascii=False)
    for e in json.loads(wire):                        # every generated event is one the server accepts
        ev.validate_one({"type": e["type"], "run": e["run"], "data": e["data"]})
    python = json.loads(ev.dumps(state.reduce(json.loads(wire))))   # never raises, never NaN/Infinity
    js = node_reducer(wire)
    assert "__error__" not in js, js["__error__"]
    assert js == python


def test_the_text_rule_by_example(node_reducer):
    events = [{"id": "1-1", "type": "note", "run": "r", "ts": 1, "data": {"message": "😀" * 600}},
              {"id": "1-2", "type": "stop_requested", "run": "r", "ts": 2, "data": {"reason": {"b": 2.0, "a": 1}}},
              {"id": "1-3", "type": "ac_failed", "run": "r", "ts": 3,
               "data": {"story_id": 7.0, "ac_index": 0, "error": 1e-7}},
              {"id": "1-4", "type": "task_started", "run": "r", "ts": 4,
               "data": {"stories": 7, "story_count": "x", "estimated_duration": [1]}}]
    python = state.reduce(json.loads(json.dumps(events)))
    assert python["log"][0]["text"] == "😀" * 500
    assert python["control"]["stop_requested"] == '{"a":1,"b":2}'
    assert python["stories"][0]["id"] == "7" and python["stories"][0]["acceptance_criteria"][0]["error"] == "1e-7"
    assert python["story_count"] is None and python["estimated_duration"] is None
    assert node_reducer(json.dumps(events)) == json.loads(json.dumps(python))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(events=runs())
def test_apply_never_changes_the_snapshot_it_is_given(events):
    """The broker folds a publish ahead on the live snapshots and keeps them if anything fails
    (a journal that cannot be written, a reducer bug): apply() must copy what it changes."""
    snap = None
    for e in json.loads(json.dumps(events, ensure_ascii=False)):
        frozen = copy.deepcopy(snap)
        new = state.apply(snap, e)
        if snap is not None:
            assert snap == frozen, f"apply() changed its input on a {e['type']!r} event"
            assert new is not snap
        snap = new


def test_a_batch_refused_by_the_journal_leaves_every_snapshot_as_it_was():
    """Copy on write, seen from the broker: staging a batch that touches a story, the control
    record, the agent and the log, then not committing it, leaves the live snapshot unchanged."""
    from loopstream.sidecar.brokers.memory import MemoryBroker

    broker = MemoryBroker()
    broker.publish([ev.Draft("task_started", "r", {"stories": [{"id": "S1", "title": "one"}]}),
                    ev.Draft("story_started", "r", {"story_id": "S1", "acceptance_criteria": ["a", "b"]}),
                    ev.Draft("tool_call", "r", {"tool": "Bash", "id": "t1"})])
    live = broker.runs["r"]
    frozen = copy.deepcopy(live)
    staged = broker.stage([ev.Draft("ac_completed", "r", {"story_id": "S1", "ac_index": 0}),
                           ev.Draft("tool_result", "r", {"id": "t1"}), ev.Draft("agent_result", "r", {"cost_usd": 1}),
                           ev.Draft("progress", "r", {"percent": 40}), ev.Draft("note", "r", {"message": "x"}),
                           ev.Draft("task_stopped", "r", {"reason": "enough"})])
    assert staged.runs["r"]["status"] == "stopped" and staged.runs["r"]["agent"]["last_tool"]["finished_at"]
    assert broker.runs["r"] is live and live == frozen
