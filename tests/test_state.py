"""The reducer, pinned by golden fixtures (the dashboard's JS reducer runs the same files)."""
import copy

import pytest

from conftest import fixture_files, load_fixture
from loopstream.core import state
from loopstream.core.state.run import OUTPUT_TAIL
from loopstream.core.state.values import as_text, js_number


@pytest.mark.parametrize("path", fixture_files(), ids=lambda p: p.stem)
def test_reducer_matches_golden_fixture(path):
    case = load_fixture(path)
    assert state.reduce(case["events"]) == case["snapshot"]


def test_there_are_golden_fixtures():
    names = {p.stem for p in fixture_files()}
    assert {"full_run", "stopped_run", "plain_script", "pause_resume", "output_tail_truncated"} <= names


def test_reducer_does_not_depend_on_the_events_being_copied():
    case = load_fixture(fixture_files()[0])
    events = copy.deepcopy(case["events"])
    state.reduce(events)
    assert events == case["events"]


def test_full_run_counts_checklist_and_outcome():
    snap = load_fixture(next(p for p in fixture_files() if p.stem == "full_run"))["snapshot"]
    assert snap["status"] == "failed"
    assert snap["counts"]["completed"] == 2 and snap["counts"]["failed"] == 1
    us1 = snap["stories"][0]
    assert [a["status"] for a in us1["acceptance_criteria"]] == ["passed", "passed", "passed"]
    us2 = snap["stories"][1]
    assert us2["acceptance_criteria"][0] == {"text": "signs", "status": "failed", "duration_ms": None,
                                             "error": "exit 1"}


def test_running_story_marks_its_next_criterion_in_progress():
    snap = state.reduce([
        {"id": "1-1", "type": "story_started", "run": "r", "ts": 1,
         "data": {"story_id": "S", "acceptance_criteria": ["a", "b", "c"]}},
        {"id": "1-2", "type": "ac_completed", "run": "r", "ts": 2, "data": {"story_id": "S", "ac_index": 0}},
    ])
    assert [a["status"] for a in snap["stories"][0]["acceptance_criteria"]] == ["passed", "running", "pending"]


def test_eta_uses_finished_story_durations():
    snap = state.reduce([
        {"id": "1-1", "type": "task_started", "run": "r", "ts": 0, "data": {"story_count": 4}},
        {"id": "1-2", "type": "story_started", "run": "r", "ts": 0, "data": {"story_id": "A"}},
        {"id": "1-3", "type": "story_completed", "run": "r", "ts": 10,
         "data": {"story_id": "A", "status": "passed", "duration_ms": 10_000}},
    ])
    assert snap["eta_s"] == 30.0
    assert snap["percent"] == 25


def test_output_tail_is_bounded():
    snap = None
    for i in range(300):
        snap = state.apply(snap, {"id": f"1-{i}", "type": "output", "run": "r", "ts": i,
                                  "data": {"text": "y" * 1000}})
    assert len(snap["output"]) == OUTPUT_TAIL and snap["output_truncated"]


def test_interrupted_run_comes_back_when_its_runner_does():
    snap = state.reduce([{"id": "1-1", "type": "task_started", "run": "r", "ts": 0, "data": {}}])
    snap["status"] = "interrupted"
    snap = state.apply(snap, {"id": "2-1", "type": "progress", "run": "r", "ts": 5, "data": {"percent": 50}})
    assert snap["status"] == "running"


@pytest.mark.parametrize("etype, data", [
    ("task_started", {"stories": 7, "story_count": "x", "estimated_duration": 10**400}),
    ("task_started", {"stories": {"id": "a"}, "story_count": float("inf"), "task_name": {"a": [1]}}),
    ("story_started", {"story_id": {"a": 1}, "acceptance_criteria": "abc", "attempt": "2", "title": 5}),
    ("ac_completed", {"story_id": [1], "ac_index": 1e300, "duration_ms": float("nan")}),
    ("ac_failed", {"story_id": "S", "ac_index": 2.0, "error": {"code": 1.0}}),
    ("story_completed", {"story_id": None, "status": {"x": 1}, "attempts": [], "duration_ms": "1"}),
    ("task_completed", {"summary": [1, 2], "status": ["passed"]}),
    ("progress", {"percent": "50", "current": 10**20, "total": 1e-300}),
    ("progress", {"current": 1e15, "total": 5e-324}),
    ("error_occurred", {"error_type": 3, "error_message": ["a"]}),
    ("stop_requested", {"reason": {"b": 2.0}}),
    ("output", {"text": 7, "story_id": 2}),
    ("tool_call", {"tool": 5, "summary": None}),
])
def test_the_reducer_never_raises_on_wrong_typed_fields_and_stays_json(etype, data):
    import json

    from loopstream.core import events as ev
    snap = state.reduce([{"id": "1-1", "type": "task_started", "run": "r", "ts": 0, "data": {"story_count": 2}},
                         {"id": "1-2", "type": etype, "run": "r", "ts": 1.5, "data": data},
                         {"id": "1-3", "type": "output", "run": "r", "ts": 2, "data": {"text": "after"}}])
    json.loads(ev.dumps(snap))   # finite everywhere: no NaN, no Infinity
    assert snap["event_count"] == 3 and snap["output"].endswith("after")


def test_non_string_text_is_json_and_numbers_are_written_as_javascript_writes_them():
    assert as_text({"b": 2.0, "a": [1e-7, None, True]}) == '{"a":[1e-7,null,true],"b":2}'
    assert as_text(None) == "" and as_text(3.0) == "3" and as_text("x") == "x"
    assert [js_number(x) for x in (1e21, 1e20, 0.000001, 1.5e-6, -0.0)] == [
        "1e+21", "100000000000000000000", "0.000001", "0.0000015", "0"]
