"""The rest of the CLI against a real sidecar: emit, runs, watch, errors."""
import json
import subprocess

import pytest

from conftest import BACKENDS, Server, free_port, wait_for
from helpers import LOOP, loop


def test_emit_builds_data_from_items_and_json(server):
    r = loop("emit", "progress", "percent:=40", "message=compiling = fast", "tags[]=x", "--data", '{"extra": 1}',
             "--run", "cli-run", "--server", server.url)
    assert r.returncode == 0, r.stderr
    (event,) = server.get("/api/events").json()["events"]
    assert event["id"] == r.stdout.strip()
    assert event["run"] == "cli-run" and event["type"] == "progress"
    assert event["data"] == {"extra": 1, "percent": 40, "message": "compiling = fast", "tags": ["x"]}


def test_emit_takes_server_run_and_token_from_the_environment(make_server):
    server = make_server(env={"LOOP_TOKEN": "tk"})
    env = {"LOOP_SERVER": server.url, "LOOP_RUN": "env-run", "LOOP_TOKEN": "tk"}
    assert loop("emit", "note", "message=hi", env=env).returncode == 0
    assert server.get("/api/events?token=tk").json()["events"][0]["run"] == "env-run"
    bad = loop("emit", "note", env={**env, "LOOP_TOKEN": "wrong"})
    assert bad.returncode == 1 and "401" in bad.stderr and "Traceback" not in bad.stderr


def test_emit_errors_are_one_line_without_traceback(server):
    for args, code, words in [
        (["emit", "progress", "percent:=notjson"], 2, "data.percent: 'notjson' after := is not JSON"),
        (["emit", "progress", "percent:=1e999"], 2, "data.percent: must be a finite number"),
        (["emit", "progress", "n:=[1,{\"a\":1e16}]"], 2, "data.n[1].a: a number must be within"),
        (["emit", "progress", "noequals"], 2, "key=text"),
        (["emit", "BadType"], 2, 'TYPE: invalid ("BadType")'),
        (["emit", "x", "--run", "a b"], 2, '--run: invalid ("a b")'),
        (["emit", "x", "--data", "[1]"], 2, "--data: must be a JSON object"),
    ]:
        r = loop(*args, "--server", server.url)
        assert r.returncode == code and words in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 1, (args, r.stderr)
    assert server.get("/api/events").json()["events"] == []       # nothing was sent
    down = loop("emit", "x", "--server", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "cannot reach the sidecar" in down.stderr
    assert len(down.stderr.strip().split("\n")) == 1


def test_runs_prints_json_lines_when_piped(server):
    server.post([{"type": "task_started", "run": "a", "data": {"task_name": "A", "story_count": 1}},
                 {"type": "task_started", "run": "b", "data": {"task_name": "B"}}])
    r = loop("runs", "--server", server.url)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {row["run"] for row in rows} == {"a", "b"} and rows[0]["status"] == "running"


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_watch_json_follows_a_run_across_a_restart_and_exits_with_its_outcome(make_server, backend, tmp_path):
    server = make_server("--rate", "0")
    server.post({"type": "task_started", "run": "w", "data": {"task_name": "Watched", "story_count": 1}})
    watch = subprocess.Popen([*LOOP, "watch", "w", "--json", "--server", server.url], stdout=subprocess.PIPE,
                             text=True)
    lines = []
    first = json.loads(watch.stdout.readline())
    assert first["type"] == "hello"
    server.post({"type": "story_started", "run": "w", "data": {"story_id": "S"}})
    lines.append(json.loads(watch.stdout.readline()))
    assert lines[-1]["type"] == "story_started"
    server.stop()
    again = Server(tmp_path, port=server.port, args=["--rate", "0"], backend=backend).start()
    try:
        seen = []
        if backend is None:   # a new epoch: watch reconnects and gets a reset
            def reconnected():
                line = watch.stdout.readline()
                seen.append(json.loads(line)["type"])
                return "reset" in seen
            wait_for(reconnected, timeout=30, message="watch to reconnect and get a reset")
        again.post([{"type": "story_completed", "run": "w", "data": {"story_id": "S", "status": "failed"}},
                    {"type": "task_completed", "run": "w", "data": {}}])
        assert watch.wait(20) == 1             # the run failed
        rest = [json.loads(ln)["type"] for ln in watch.stdout.read().strip().split("\n")]
        assert rest[-2:] == ["story_completed", "task_completed"]
    finally:
        watch.kill()
        again.stop()


def test_watch_plain_prints_lines_and_a_final_box_for_a_finished_run(server):
    server.post([{"type": "task_started", "run": "f", "data": {"task_name": "Done already"}},
                 {"type": "task_completed", "run": "f", "data": {}}])
    r = loop("watch", "f", "--server", server.url)
    assert r.returncode == 0 and "Done already" in r.stdout and "[PASSED]" in r.stdout


def test_control_commands_explain_unknown_runs(server):
    r = loop("stop", "ghost", "--server", server.url)
    assert r.returncode == 1 and "no live run named 'ghost'" in r.stderr


def test_help_lists_every_command():
    out = loop("--help").stdout
    for name in ("run", "validate", "emit", "watch", "runs", "stop", "pause", "resume", "serve"):
        assert f"  {name}" in out
