"""Honest numbers: percent counts finished stories only, and a stopped run says where it stopped."""
from conftest import FIXTURES, load_fixture
from loopstream.core import state


def test_a_stopped_run_shows_where_it_stopped_and_counts_cancelled_and_skipped():
    case = load_fixture(FIXTURES / "stopped_midway_with_skipped_and_cancelled.json")
    snap = state.reduce(case["events"])
    assert snap["status"] == "stopped" and snap["stopped_at"] == "S3"
    assert snap["percent"] == 50                       # S1 passed + S2 skipped of 4, not 100
    c = snap["counts"]
    assert (c["completed"], c["skipped"], c["cancelled"], c["queued"]) == (1, 1, 2, 0)


def test_a_stop_before_anything_finished_is_not_a_full_bar():
    snap = load_fixture(FIXTURES / "stopped_run.json")["snapshot"]
    assert snap["percent"] == 0 and snap["counts"]["cancelled"] == 2 and snap["counts"]["queued"] == 0
    assert snap["stopped_at"] == "S1"                   # the story never reached counts as cancelled too


def test_skipped_stories_count_as_finished():
    snap = state.reduce([
        {"id": "1-1", "type": "task_started", "run": "r", "ts": 0, "data": {"story_count": 2}},
        {"id": "1-2", "type": "story_completed", "run": "r", "ts": 1, "data": {"story_id": "A", "status": "skipped"}},
    ])
    assert snap["percent"] == 50 and snap["counts"]["skipped"] == 1 and snap["stopped_at"] is None
