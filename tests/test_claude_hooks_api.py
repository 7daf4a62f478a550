"""POST /api/hooks/claude on a real sidecar (gunicorn subprocess): Claude Code's raw hook JSON in,
a session run out; guarded like every POST; a payload it cannot use is a 400 naming the field and
changes nothing."""
import json

import pytest
import requests

from conftest import BACKENDS, wait_for
from helpers import REAL
from loopstream.core.events import MAX_BATCH
from loopstream.sidecar.routes.claude_hooks import hook_drafts
from test_notify import Receiver

JSON = {"Content-Type": "application/json"}


def payloads(name: str) -> list[dict]:
    return [json.loads(line) for line in (REAL / name).read_text().splitlines()]


def post(server, body, path="/api/hooks/claude", headers=None, raw=None):
    data = raw if raw is not None else json.dumps(body)
    return requests.post(server.url + path, data=data, headers={**JSON, **(headers or {})}, timeout=10)


def test_a_whole_session_posted_one_hook_at_a_time_is_a_run(server):
    items = payloads("hooks-subagent.jsonl")
    sid = items[0]["session_id"]
    for p in items[:-1]:
        r = post(server, p)
        assert r.status_code == 201, r.text
    snap = server.get(f"/api/runs/{sid}").json()
    assert snap["status"] == "running" and snap["session"]["state"] == "idle"
    assert snap["session"]["project"] == "subagent" and snap["session"]["cwd"] == items[0]["cwd"]
    [sub] = snap["session"]["subagents"]
    assert (sub["agent_type"], sub["state"], sub["tool_calls"]) == ("general-purpose", "done", 1)
    assert post(server, items[-1]).status_code == 201                        # SessionEnd
    snap = server.get(f"/api/runs/{sid}").json()
    assert snap["session"]["state"] == "ended" and snap["status"] == "passed"
    assert post(server, {**items[0], "source": "resume"}).status_code == 201
    snap = server.get(f"/api/runs/{sid}").json()
    assert snap["status"] == "running" and snap["session"]["state"] == "idle"
    types = [e["type"] for e in server.get(f"/api/runs/{sid}/transcript").json()["events"]]
    assert types.count("tool_call") == 2 and types[0] == "session_started"


def test_an_array_of_payloads_is_all_or_nothing_and_names_the_bad_one(server):
    items = payloads("hooks-mcp.jsonl")
    sid = items[0]["session_id"]
    bad = [*items[:2], {"hook_event_name": "Stop"}, *items[2:]]
    r = post(server, bad)
    assert r.status_code == 400 and r.json()["field"] == "[2].session_id"
    assert server.get(f"/api/runs/{sid}").status_code == 404                 # nothing half-made
    r = post(server, items)
    assert r.status_code == 201 and len(r.json()["ids"]) == 9
    snap = server.get(f"/api/runs/{sid}").json()
    assert snap["agent"]["tool_errors"] == 1 and snap["session"]["state"] == "ended"


def test_what_it_cannot_use_is_a_400_naming_the_field_and_changes_nothing(server):
    before = server.get("/api/events").json()["cursor"]
    cases = [
        (None, b"{not json", "body"),
        ({"hook_event_name": "Stop"}, None, "session_id"),
        ({"session_id": "../../etc", "hook_event_name": "Stop"}, None, "session_id"),
        ({"session_id": "s1"}, None, "hook_event_name"),
        ([], None, "body"),
        ([1], None, "[0]"),
        ({"session_id": "s1", "hook_event_name": "UserPromptSubmit", "prompt": "\ud800"}, None, "data.prompt"),
    ]
    for body, raw, field in cases:
        r = post(server, body, raw=raw, path="/api/hooks/claude?prompts=1")
        assert r.status_code == 400 and r.json()["field"] == field, (body, r.text)
    assert post(server, {"session_id": "s1", "hook_event_name": "Stop"}, path="/api/hooks/claude?prompts=yes"
                ).json()["field"] == "prompts"
    big = {"session_id": "s1", "hook_event_name": "PostToolUse", "tool_response": {"stdout": "x" * 70_000}}
    assert post(server, big).status_code == 413
    assert server.get("/api/events").json()["cursor"] == before
    assert server.get("/api/runs/s1").status_code == 404


def test_payloads_that_make_more_events_than_a_batch_holds_are_a_400(server):
    stop = {"session_id": "s2", "hook_event_name": "Stop", "last_assistant_message": "x"}   # two events
    assert len(hook_drafts(stop, False)) == 2
    n = MAX_BATCH // 2 + 1                           # fewer payloads than a batch, more events
    r = post(server, [stop] * n)
    assert r.status_code == 400 and r.json()["field"] == "body", r.text[:300]
    assert server.get("/api/runs/s2").status_code == 404
    assert post(server, [stop] * (n - 1)).status_code == 201


def test_an_unknown_hook_of_a_valid_session_is_kept_as_a_log_line(server):
    r = post(server, {"session_id": "s2", "hook_event_name": "SomethingNew", "x": [1, 2]})
    assert r.status_code == 201
    assert server.get("/api/runs/s2").json()["log"][-1]["text"] == "Claude Code hook SomethingNew"


def test_the_prompt_text_is_kept_only_with_prompts_1(server):
    items = payloads("hooks-shell.jsonl")
    prompt = items[1]["prompt"]
    assert post(server, items[:2]).status_code == 201
    sid = items[0]["session_id"]
    everything = server.get(f"/api/runs/{sid}").text + server.get(f"/api/runs/{sid}/transcript").text
    everything += server.get("/api/events").text
    assert prompt not in everything and f'"prompt_length":{len(prompt)}' in server.get("/api/events").text
    other = {**items[1], "session_id": "opted-in"}
    assert post(server, other, path="/api/hooks/claude?prompts=1").status_code == 201
    assert prompt in server.get("/api/runs/opted-in/transcript").text


def test_it_is_guarded_like_every_post(make_server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-0123456789\n")
    server = make_server("--token-file", str(token_file))
    p = payloads("hooks-shell.jsonl")[0]
    assert post(server, p).status_code == 401
    assert post(server, p, headers={"Authorization": "Bearer s3cret-token-0123456789",
                                    "Origin": "https://evil.example"}).status_code == 403
    assert post(server, p, headers={"Authorization": "Bearer s3cret-token-0123456789",
                                    "Host": "evil.example"}).status_code == 403
    assert post(server, p, headers={"Authorization": "Bearer s3cret-token-0123456789",
                                    "Content-Type": "text/plain"}).status_code == 415
    assert server.get("/api/runs/" + p["session_id"],
                      headers={"Authorization": "Bearer s3cret-token-0123456789"}).status_code == 404
    assert post(server, p, headers={"Authorization": "Bearer s3cret-token-0123456789"}).status_code == 201


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_a_session_that_starts_waiting_is_one_notify_message_per_wait(make_server):
    receiver = Receiver()
    try:
        server = make_server("--rate", "0", "--notify", receiver.url)
        for p in payloads("hooks-interactive.jsonl"):     # a permission wait, then the idle prompt
            assert post(server, p).status_code == 201
        # a plain run finishing afterwards: its message comes after any the session caused (one queue)
        assert server.post([{"type": "task_started", "run": "plain"}, {"type": "task_completed", "run": "plain"}]
                           ).status_code == 201
        wait_for(lambda: any(r["body"]["run"] == "plain" for r in receiver.requests), 30, message="the plain run")
        texts = [r["body"]["text"] for r in receiver.requests]
        assert texts[:-1] == ["Claude needs you in interactive: Claude needs your permission to use Bash: rm -rf build",
                              "Claude needs you in interactive: Claude is waiting for your input"]
        assert receiver.requests[0]["body"]["status"] == "waiting_for_input"   # the session's end: no message
    finally:
        receiver.close()


def test_loop_runs_and_loop_watch_say_the_sessions_state_in_words(server):
    import subprocess
    import sys

    from loopstream.view import render_box, runs_table
    items = payloads("hooks-interactive.jsonl")
    sid = items[0]["session_id"]
    for p in items[:4]:                                     # up to the permission request: waiting
        assert post(server, p).status_code == 201
    snap = server.get(f"/api/runs/{sid}").json()
    [header, row] = runs_table(server.get("/api/runs").json()["runs"], 160)
    assert row.split()[:2] == [sid, "waiting"]
    assert row.endswith("interactive · waiting for you: Claude needs your permission to use Bash: rm -rf build")
    box = "\n".join(render_box(snap, width=160, now=snap["updated_at"]))
    assert "Session: waiting for you — Claude needs your permission to use Bash: rm -rf build (in /tmp/" in box
    watch = subprocess.Popen([sys.executable, "-m", "loopstream", "watch", sid, "--server", server.url],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)    # piped: plain lines
    wait_for(lambda: "loop_subscribers 1" in server.get("/metrics").text, 30, message="loop watch following")
    for p in items[4:]:
        assert post(server, p).status_code == 201
    out, err = watch.communicate(timeout=60)
    assert watch.returncode == 0, err
    flat = " ".join(out.split())
    assert "session_state waiting for you: Claude needs your permission" in flat      # the Notification's wait
    assert "tool_result ✓ Bash:" in flat and "session_state idle" in flat
    assert "session_ended session ended (prompt_input_exit)" in flat
    final = subprocess.run([sys.executable, "-m", "loopstream", "watch", sid, "--server", server.url],
                           capture_output=True, text=True, timeout=60).stdout
    assert "Session: ended (in /tmp/loop-agents-demo/claude/interactive)" in final


def test_a_session_calling_the_same_tool_again_and_again_is_warned_about_once(server):
    """Each hook payload comes in its own request: the streak lives in the sidecar, and the recorded
    session's three identical Bash calls give one agent_looping (a warning: the session is the user's)."""
    recorded = payloads("hooks-looping.jsonl")
    for payload in recorded:                                    # one request each, as the hook sends them
        assert post(server, payload).status_code == 201
    sid = recorded[0]["session_id"]
    events = server.get(f"/api/runs/{sid}/transcript").json()["events"]
    looping = [e["data"] for e in events if e["type"] == "agent_looping"]
    assert len(looping) == 1 and looping[0]["repeats"] == 3 and "ls build/reports" in looping[0]["summary"]
    for payload in [p for p in recorded if p["hook_event_name"] == "PreToolUse"][:1]:   # a 4th: no second warning
        assert post(server, payload).status_code == 201
    events = server.get(f"/api/runs/{sid}/transcript").json()["events"]
    assert sum(e["type"] == "agent_looping" for e in events) == 1
    assert server.get(f"/api/runs/{sid}").json()["agent"]["looping"]["repeats"] >= 3
