"""Run history: journals, TinyDB index, restart survival, interrupted runs."""
import json
import os

from conftest import Server, wait_for
from loopstream.history import AtomicJSONStorage, History, read_journal


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


def test_torn_last_journal_line_is_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"id":"1-1","type":"a","run":"r","ts":1,"data":{}}\n{"id":"1-2","ty')
    assert [e["id"] for e in read_journal(path)] == ["1-1"]


def test_old_runs_are_pruned_with_their_transcripts(tmp_path):
    h = History(tmp_path / "h.json", keep=3)
    h.open()
    for i in range(6):
        (tmp_path / "runs" / f"r{i}.jsonl").write_text("{}\n")
        h.finished({"run": f"r{i}", "status": "passed", "finished_at": i, "stories": [], "output": "", "log": []})
    h.flush()
    assert sorted(h.index) == ["r3", "r4", "r5"]
    assert sorted(os.listdir(tmp_path / "runs")) == ["r3.jsonl", "r4.jsonl", "r5.jsonl"]


def test_a_corrupt_history_file_is_a_clear_error(tmp_path):
    (tmp_path / "h.json").write_text("{not json")
    h = History(tmp_path / "h.json")
    try:
        h.open()
    except ValueError as e:
        assert "not valid JSON" in str(e) and "--db" in str(e)
    else:
        raise AssertionError("a corrupt history file was accepted")
