"""Run history: journals, TinyDB index, restart survival, interrupted runs."""
import json
import os

import pytest

from conftest import Server, wait_for
from loopstream.core.events import Event
from loopstream.sidecar.history import AtomicJSONStorage, History, read_journal


def finished_run(server, run="done"):
    server.post([{"type": "task_started", "run": run, "data": {"task_name": "T", "story_count": 1}},
                 {"type": "story_started", "run": run, "data": {"story_id": "S", "acceptance_criteria": ["a"]}},
                 {"type": "output", "run": run, "data": {"text": "hello\n"}},
                 {"type": "story_completed", "run": run, "data": {"story_id": "S", "status": "passed"}},
                 {"type": "task_completed", "run": run, "data": {"summary": {"passed": 1}}}])


def test_finished_runs_survive_a_restart_with_snapshot_and_transcript(make_server, tmp_path):
    server = make_server("--rate", "0")
    finished_run(server)
    wait_for(lambda: server.db.exists() and "done" in server.db.read_text(), message="the history write")
    server.stop()
    again = Server(tmp_path, port=server.port).start()
    try:
        runs = again.get("/api/runs").json()["runs"]
        assert [r["run"] for r in runs] == ["done"] and runs[0]["status"] == "passed"
        snap = again.get("/api/runs/done").json()
        assert snap["output"] == "hello\n" and snap["stories"][0]["status"] == "passed"
        t = again.get("/api/runs/done/transcript").json()
        assert t["complete"] is True
        assert [e["type"] for e in t["events"]] == ["task_started", "story_started", "output",
                                                    "story_completed", "task_completed"]
    finally:
        again.stop()


def test_a_run_live_at_a_crash_is_interrupted_until_its_runner_comes_back(make_server, tmp_path):
    server = make_server("--rate", "0")
    server.post([{"type": "task_started", "run": "live", "data": {"story_count": 2}},
                 {"type": "story_started", "run": "live", "data": {"story_id": "A"}}])
    server.kill9()
    again = Server(tmp_path, port=server.port).start()
    try:
        assert again.get("/api/runs/live").json()["status"] == "interrupted"
        again.post({"type": "story_completed", "run": "live", "data": {"story_id": "A", "status": "passed"}})
        snap = again.get("/api/runs/live").json()
        assert snap["status"] == "running" and snap["counts"]["completed"] == 1
        types = [e["type"] for e in again.get("/api/runs/live/transcript").json()["events"]]
        assert types == ["task_started", "story_started", "story_completed"]
    finally:
        again.stop()


def test_every_201_is_in_the_transcript_even_after_kill_9(make_server, tmp_path):
    server = make_server("--rate", "0")
    ids = []
    for i in range(50):
        ids += server.post({"type": "progress", "run": "k", "data": {"i": i}}).json()["ids"]
    server.kill9()
    again = Server(tmp_path, port=server.port).start()
    try:
        assert [e["id"] for e in again.get("/api/runs/k/transcript").json()["events"]] == ids
    finally:
        again.stop()


def test_history_file_is_replaced_atomically_and_leaves_no_temp_files(tmp_path):
    storage = AtomicJSONStorage(tmp_path / "h.json")
    storage.write({"runs": {"1": {"run": "a"}}})
    storage.write({"runs": {"1": {"run": "b"}}})
    assert json.loads((tmp_path / "h.json").read_text()) == {"runs": {"1": {"run": "b"}}}
    assert os.listdir(tmp_path) == ["h.json"]


def test_torn_last_journal_line_is_skipped_without_counting_as_damage(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id":"1-1","type":"a","run":"r","ts":1,"data":{}}\n{"id":"1-2","ty')
    events, skipped = read_journal(path)
    assert [e["id"] for e in events] == ["1-1"] and skipped == 0


def test_a_torn_tail_is_cut_before_appending_so_it_cannot_swallow_the_next_event(tmp_path):
    h = History(tmp_path / "h.json")
    h.open()
    (tmp_path / "runs" / "r.jsonl").write_bytes(b'{"id":"1-1","type":"a","run":"r","ts":1,"data":{}}\n{"id":"1-2","ty')
    h.record([Event(2, 1, "b", "r", 2.0, {}, json='{"id":"2-1","type":"b","run":"r","ts":2.0,"data":{}}')])
    h.close()
    events, skipped = read_journal(tmp_path / "runs" / "r.jsonl")
    assert [e["id"] for e in events] == ["1-1", "2-1"] and skipped == 0


def snap_of(run, finished_at, text="out"):
    return {"run": run, "status": "passed", "finished_at": finished_at, "updated_at": finished_at,
            "stories": [], "output": text, "log": []}


def test_old_runs_are_pruned_with_their_files_and_transcripts(tmp_path):
    h = History(tmp_path / "h.json", keep=3)
    h.open()
    for i in range(6):
        (tmp_path / "runs" / f"r{i}.jsonl").write_text("{}\n")
        h.finished(snap_of(f"r{i}", i))
    h.flush()
    assert sorted(h.index) == ["r3", "r4", "r5"]
    assert sorted(os.listdir(tmp_path / "runs")) == ["r3.jsonl", "r4.jsonl", "r5.jsonl"]
    assert sorted(os.listdir(tmp_path / "finished")) == ["r3.json", "r4.json", "r5.json"]
    rows = json.loads((tmp_path / "h.json").read_text())["index"].values()
    assert sorted(r["run"] for r in rows) == ["r3", "r4", "r5"]


def test_a_finished_run_is_readable_before_the_writer_has_written_it(tmp_path):
    h = History(tmp_path / "h.json")
    h.open()
    h.finished(snap_of("fresh", 1, "x" * 50_000))
    assert h.snapshot("fresh")["output"] == "x" * 50_000        # no flush yet
    assert not (tmp_path / "finished" / "fresh.json").exists()
    h.flush()
    assert h.snapshot("fresh")["output"] == "x" * 50_000        # now from its own file
    assert not h.finished_runs._unwritten


def test_a_flush_writes_what_changed_and_the_index_holds_no_snapshot(tmp_path):
    h = History(tmp_path / "h.json")
    h.open()
    h.finished(snap_of("a", 1, "A" * 20_000))
    h.flush()
    first = os.stat(tmp_path / "finished" / "a.json")
    h.finished(snap_of("b", 2, "B" * 20_000))
    h.flush()
    again = os.stat(tmp_path / "finished" / "a.json")
    assert (first.st_ino, first.st_mtime_ns) == (again.st_ino, again.st_mtime_ns)   # a's file untouched
    assert (tmp_path / "finished" / "b.json").exists()
    h.close()                                    # the index, written at most every few seconds, at last
    index = (tmp_path / "h.json").read_text()
    assert '"b"' in index and "AAAA" not in index and "BBBB" not in index and len(index) < 5000


def test_a_run_file_the_lagging_index_does_not_list_is_adopted_at_start(tmp_path):
    h = History(tmp_path / "h.json")
    h.open()
    h.finished(snap_of("a", 1))
    h.flush()
    h.finished(snap_of("b", 2, "bee"))
    h.flush()                                    # b's file written, the index not yet (it lags)
    assert '"b"' not in (tmp_path / "h.json").read_text()
    again = History(tmp_path / "h.json")         # as after a kill -9
    again.open()
    assert sorted(again.index) == ["a", "b"] and again.snapshot("b")["output"] == "bee"


def test_the_one_file_layout_is_migrated_to_a_file_per_run(tmp_path):
    old = {"runs": {"1": {"run": "old", "summary": {"run": "old", "status": "passed", "finished_at": 5},
                          "snapshot": snap_of("old", 5, "kept")}},
           "meta": {"1": {"epoch": 1234}}}
    (tmp_path / "h.json").write_text(json.dumps(old))
    h = History(tmp_path / "h.json")
    epoch, _ = h.open()
    assert epoch == 1234 and h.snapshot("old")["output"] == "kept"
    assert "kept" not in (tmp_path / "h.json").read_text()


GOOD = [{"type": "task_started", "run": "good", "data": {"task_name": "T", "story_count": 1}},
        {"type": "output", "run": "good", "data": {"text": "fine\n"}},
        {"type": "task_completed", "run": "good", "data": {"summary": {"passed": 1}}}]


def boot_with_good_run(tmp_path):
    """A sidecar that finished the run "good", stopped: its data dir is ready to be damaged."""
    server = Server(tmp_path).start()
    server.post(GOOD)
    wait_for(lambda: (tmp_path / "finished" / "good.json").exists(), message="the history write")
    server.stop()
    return server


def line(i, run="bad", etype="progress", data="{}"):
    return f'{{"id":"1-{i}","type":"{etype}","run":"{run}","ts":{i},"data":{data}}}\n'


DAMAGE = {
    "binary journal": ("runs/bad.jsonl", lambda p: p.write_bytes(b"\x00\xff\xfe garbage\n\x89PNG\r\n")),
    "a journal line 5": ("runs/bad.jsonl", lambda p: p.write_text("5\n" + line(2))),
    "a damaged middle line": ("runs/bad.jsonl", lambda p: p.write_text(line(1) + '{"id":"1-2","ty\n' + line(3))),
    "Infinity and 1e999 in a journal": ("runs/bad.jsonl", lambda p: p.write_text(
        line(1, etype="task_started", data='{"story_count":1e999}') + line(2, data='{"percent":Infinity}')
        + line(3))),
    "an event the old reducer could not fold": ("runs/bad.jsonl", lambda p: p.write_text(
        line(1, etype="task_started", data='{"stories":7,"estimated_duration":' + "9" * 400 + "}")
        + line(2, etype="output", data='{"text":"a"}') + line(3, etype="output", data='{"text":"b"}'))),
    "a directory named x.jsonl": ("runs/x.jsonl", lambda p: p.mkdir()),
    "history.json of the wrong shape": ("history.json", lambda p: p.write_text('{"index": [1, 2], "meta": 5}')),
    "history.json a list": ("history.json", lambda p: p.write_text("[1, 2, 3]")),
    "history.json not JSON": ("history.json", lambda p: p.write_bytes(b"\x00{not json")),
    "a run file of the wrong shape": ("finished/good.json", lambda p: p.write_text('{"run": {"1": [5]}}')),
}


@pytest.mark.parametrize("case", DAMAGE, ids=list(DAMAGE))
def test_a_sidecar_boots_on_damaged_history_logs_the_file_and_serves_the_rest(tmp_path, case):
    first = boot_with_good_run(tmp_path)
    where, damage = DAMAGE[case]
    damage(tmp_path / where)
    again = Server(tmp_path, port=first.port).start()
    try:
        runs = {r["run"]: r for r in again.get("/api/runs").json()["runs"]}
        assert runs["good"]["status"] == "passed"                       # the rest is served
        assert again.get("/api/runs/good").json()["output"] == "fine\n"
        assert again.get("/api/runs/good/transcript").json()["complete"] is True
        log = again.log.read_text()
        assert "Traceback" not in log
        if case != "an event the old reducer could not fold":
            assert f"{tmp_path / where}" in log                          # one line naming the file
        bad = again.get("/api/runs/bad")
        if case in ("a damaged middle line", "a journal line 5", "Infinity and 1e999 in a journal"):
            t = again.get("/api/runs/bad/transcript").json()
            assert t["complete"] is False and t["events"] and bad.status_code == 200
            assert bad.json()["status"] == "interrupted"
        if case == "an event the old reducer could not fold":
            assert bad.json()["output"] == "ab" and bad.json()["story_count"] is None
        if case in ("binary journal", "history.json of the wrong shape", "history.json a list",
                    "history.json not JSON", "a run file of the wrong shape"):
            assert list(tmp_path.glob(f"{where}.damaged-*")), "the damaged file is moved aside"
        again.post({"type": "progress", "run": "after", "data": {"percent": 5}},
                   headers={"Content-Type": "application/json"})
        assert again.get("/api/runs/after").json()["percent"] == 5
    finally:
        again.stop()


def test_a_journal_that_cannot_be_written_refuses_the_batch_and_leaves_no_trace(tmp_path):
    # A full disk for one run's journal (its file is /dev/full): the batch that touches it gets a
    # 503 the client retries, nothing of it is streamed, buffered or left in another run's journal,
    # and the next accepted event takes the next id, with no gap.
    server = Server(tmp_path, args=("--rate", "0")).start()
    try:
        assert server.post({"type": "task_started", "run": "ok", "data": {}}).status_code == 201
        journals = server.db.parent / "runs"
        (journals / "full.jsonl").symlink_to("/dev/full")
        before = server.get("/api/events").json()["events"]
        r = server.post([{"type": "progress", "run": "ok", "data": {"percent": 5}},
                         {"type": "task_started", "run": "full", "data": {}}])
        assert r.status_code == 503 and r.json()["error"] == "journal_unavailable" and "Retry-After" in r.headers
        assert server.get("/api/events").json()["events"] == before
        assert server.get("/api/runs/full").status_code == 404
        assert [json.loads(line)["type"] for line in (journals / "ok.jsonl").read_text().splitlines()] == [
            "task_started"]
        r = server.post({"type": "progress", "run": "ok", "data": {"percent": 6}})
        assert r.status_code == 201
        first, nxt = before[-1]["id"].split("-"), r.json()["ids"][0].split("-")
        assert nxt[0] == first[0] and int(nxt[1]) == int(first[1]) + 1
    finally:
        server.stop()
