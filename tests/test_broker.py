"""The broker on its own: ids, buffer, cursors, resets (no server, no clock)."""
import pytest

from loopstream.core.events import Draft
from loopstream.sidecar.brokers.memory import Filter, MemoryBroker


def drafts(n, run="r", type="progress"):
    return [Draft(type, run, {"i": i}) for i in range(n)]


def make(capacity=100, epoch=5000):
    return MemoryBroker(capacity, epoch=epoch, clock=lambda: 1.0)


def test_ids_are_epoch_and_sequence_and_increase():
    b = make()
    ids = [e.id for e in b.publish(drafts(3)).events]
    assert ids == ["5000-1", "5000-2", "5000-3"]
    assert b.head == (5000, 3)


def test_reading_from_a_cursor_gives_exactly_the_events_after_it():
    b = make()
    b.publish(drafts(10))
    res = b.read((5000, 4))
    assert [e.seq for e in res.events] == [5, 6, 7, 8, 9, 10]
    assert res.cursor == (5000, 10) and not res.reset
    assert b.read(res.cursor).events == []


def test_the_buffer_keeps_the_last_n_even_with_no_subscriber():
    b = make(capacity=100)
    b.publish(drafts(250))
    assert len(b.buffer) == 100
    assert [e.seq for e in b.read(b.tail).events] == list(range(151, 251))


def test_a_cursor_that_fell_out_of_the_buffer_reads_as_a_reset_never_a_skip():
    b = make(capacity=10)
    b.publish(drafts(5))
    cursor = (5000, 2)
    b.publish(drafts(20))
    res = b.read(cursor)
    assert res.reset and res.events == [] and res.cursor == b.head


def test_the_oldest_buffered_position_still_reads_without_reset():
    b = make(capacity=10)
    b.publish(drafts(25))
    res = b.read((5000, 15))
    assert not res.reset and [e.seq for e in res.events] == list(range(16, 26))


def test_a_cursor_from_another_epoch_or_the_future_reads_as_a_reset():
    b = make()
    b.publish(drafts(3))
    assert b.read((4999, 3)).reset          # before a restart
    assert b.read((5000, 99)).reset         # never issued


def test_limit_pages_through_without_gaps():
    b = make()
    b.publish(drafts(50))
    seen, cur = [], (5000, 0)
    while True:
        res = b.read(cur, limit=7)
        if not res.events:
            break
        seen += [e.seq for e in res.events]
        cur = res.cursor
    assert seen == list(range(1, 51))


def test_filters_by_run_and_type_and_advance_the_cursor_past_others():
    b = make()
    b.publish([Draft("progress", "a", {}), Draft("output", "b", {}), Draft("progress", "b", {}),
               Draft("output", "a", {})])
    res = b.read((5000, 0), Filter(runs=frozenset({"a"})))
    assert [(e.run, e.type) for e in res.events] == [("a", "progress"), ("a", "output")]
    res = b.read((5000, 0), Filter(types=frozenset({"output"})))
    assert [e.seq for e in res.events] == [2, 4]
    res = b.read((5000, 0), Filter(runs=frozenset({"zzz"})))
    assert res.events == [] and res.cursor == (5000, 4)


def test_frames_and_json_are_built_once_at_publish():
    b = make()
    (e,) = b.publish([Draft("output", "r", {"text": "hi\nthere"})]).events
    assert e.frame.startswith(b"id: 5000-1\nevent: output\ndata: {")
    assert e.frame.count(b"\n\n") == 1


def test_publish_folds_runs_and_reports_the_ones_it_finished():
    b = make()
    b.publish([Draft("task_started", "r", {"story_count": 1})])
    res = b.publish([Draft("task_completed", "r", {})])
    assert res.finished == ["r"]
    assert b.snapshot("r")["status"] == "passed"
    assert b.publish([Draft("note", "r", {})]).finished == []


def test_snapshots_list_live_runs_and_a_few_recent_finished_ones():
    b = make()
    for i in range(15):
        b.publish([Draft("task_started", f"done{i}", {}), Draft("task_completed", f"done{i}", {})])
    b.publish([Draft("task_started", "live", {})])
    snaps = b.snapshots(recent=10)
    assert [s["run"] for s in snaps][-1] == "live"
    assert len(snaps) == 11


def test_finished_runs_beyond_the_keep_limit_leave_memory():
    b = MemoryBroker(10, epoch=1, keep_finished=3)
    for i in range(10):
        b.publish([Draft("task_completed", f"r{i}", {})])
    assert sorted(b.runs) == ["r7", "r8", "r9"]


def test_stage_changes_nothing_until_commit():
    b = make()
    b.publish([Draft("task_started", "r", {"task_name": "T"})])
    snap_before = b.snapshot("r")
    staged = b.stage([Draft("output", "r", {"text": "hi\n"}), Draft("task_completed", "r", {})])
    assert b.head == (5000, 1) and len(b.buffer) == 1
    assert b.snapshot("r") is snap_before and snap_before["output"] == "" and snap_before["status"] == "running"
    assert staged.finished == ["r"] and staged.runs["r"]["status"] == "passed"
    result = b.commit(staged)
    assert [e.seq for e in result.events] == [2, 3] and b.snapshot("r")["status"] == "passed"


def test_a_fold_that_raises_leaves_the_broker_as_it_was():
    class Buggy(MemoryBroker):
        @staticmethod
        def reduce(snapshot, event):
            if event["data"].get("boom"):
                raise TypeError("bug")
            return MemoryBroker.reduce(snapshot, event)

    b = Buggy(100, epoch=5000, clock=lambda: 1.0)
    b.publish([Draft("output", "r", {"text": "a"})])
    with pytest.raises(TypeError):
        b.publish([Draft("output", "r", {"text": "b"}), Draft("output", "r", {"boom": True})])
    assert b.head == (5000, 1) and [e.seq for e in b.buffer] == [1] and b.snapshot("r")["output"] == "a"


def test_commit_refuses_a_stale_stage():
    b = make()
    staged = b.stage(drafts(1))
    b.publish(drafts(1))
    with pytest.raises(RuntimeError):
        b.commit(staged)
    assert b.head == (5000, 1)


def test_snapshots_carry_a_bounded_number_of_live_runs():
    b = make(capacity=10)
    b.publish([Draft("task_started", f"run-{i}", {}) for i in range(250)])
    b.publish([Draft("task_started", "done", {}), Draft("task_completed", "done", {})])
    snaps = b.snapshots(live=200)
    live = [s for s in snaps if s["status"] == "running"]
    assert len(live) == 200 and live[-1]["run"] == "run-249"     # the most recently updated ones
    assert [s["run"] for s in snaps if s["status"] == "passed"] == ["done"]
    assert b.live_count() == 250
