"""Subagents as a tree and agents going in circles: the parsers on recorded sessions (the real CLIs'
recordings in tests/agents/claude-real, codex, gemini; a hand-written Task-shaped one), the snapshot,
the terminal's lines, and `loop run --max-repeat` with a looping fake agent."""
from __future__ import annotations

import json
import os
import sys

import pytest

from conftest import ROOT
from helpers import AGENTS
from loopstream.core import state
from loopstream.core.formats import parser_for
from loopstream.view import agent_line, plain_line, render_box


def parse(fmt: str, name: str, story: str | None = "S1", **kw) -> list[tuple[str, dict]]:
    p = parser_for(fmt, story, **kw)
    events = []
    for line in (AGENTS / name).read_text().splitlines():
        events += p.feed(line)
    return events + p.flush()


def snapshot(events: list[tuple[str, dict]], run: str = "r") -> dict:
    snap = state.reduce([{"id": f"1-{i}", "type": t, "run": run, "ts": 100.0 + i, "data": d}
                         for i, (t, d) in enumerate(events)])
    assert snap is not None
    return snap


# -- subagents -----------------------------------------------------------------------------------------------

def test_a_real_foreground_subagent_nests_its_calls_under_the_agent_call_and_ends_done():
    events = parse("claude", "claude-real/subagent.jsonl")
    task = "toolu_16d25f737e9e434bbd00"
    call = next(d for t, d in events if t == "tool_call" and d["tool"] == "Agent")
    assert (call["id"], call["subagent_type"], call["description"]) == (task, "general-purpose", "Count project files")
    assert "parent_id" not in call
    inner = [(t, d["tool"]) for t, d in events if d.get("parent_id") == task]
    assert inner == [("tool_call", "Bash"), ("tool_result", "Bash")]
    done = [d for t, d in events if t == "subagent_completed"]
    assert done == [{"story_id": "S1", "id": task, "state": "done", "summary": "The project has 3 files."}]
    assert "output" not in [t for t, _ in events]            # task_started/progress/updated/notification understood
    sub, = snapshot(events)["stories"][0]["agent"]["subagents"]
    assert sub == {"id": task, "type": "general-purpose", "description": "Count project files", "state": "done",
                   "tool_calls": 1, "last_tool": {"tool": "Bash", "id": "toolu_721efba31d0c43b7a02d",
                                                  "summary": "ls | wc -l"},
                   "started_at": sub["started_at"], "finished_at": sub["finished_at"]}


def test_a_real_background_subagent_stays_running_past_its_launch_result_and_keeps_its_own_text():
    events = parse("claude", "claude-real/subagent_background.jsonl")
    task = "toolu_d432100fde5e48b7a960"
    kinds = [(t, d.get("parent_id") == task) for t, d in events if t in ("tool_result", "subagent_completed",
                                                                         "agent_text")]
    assert kinds == [("agent_text", False), ("tool_result", False),           # "Async agent launched"
                     ("agent_text", True), ("agent_text", False), ("tool_result", True), ("agent_text", True),
                     ("subagent_completed", False), ("agent_text", False)]
    texts = [(d["text"], d.get("parent_id")) for t, d in events if t == "agent_text"]
    assert ("Counting.", task) in texts and ("Waiting for the subagent.", None) in texts   # never coalesced together
    snap = snapshot(events[:4])                      # after the launch result: still running
    assert snap["stories"][0]["agent"]["subagents"][0]["state"] == "running"
    assert snapshot(events)["stories"][0]["agent"]["subagents"][0]["state"] == "done"


def test_task_calls_without_system_lines_end_on_their_result_and_an_unknown_parent_stays_flat():
    events = parse("claude", "subagents.jsonl")
    by_parent = {}
    for t, d in events:
        if t == "tool_call":
            by_parent.setdefault(d.get("parent_id"), []).append(d["tool"])
    assert by_parent == {None: ["Task", "Task", "Read"], "toolu_task_1": ["Grep", "Read"],
                         "toolu_task_2": ["Bash", "Bash", "Bash"]}      # the ghost's Read is the agent's own
    assert [(d["id"], d["state"]) for t, d in events if t == "subagent_completed"] == [
        ("toolu_task_1", "done"), ("toolu_task_2", "failed")]
    looping, = [d for t, d in events if t == "agent_looping"]
    assert looping == {"story_id": "S1", "tool": "Bash", "summary": "pytest -q tests/test_auth.py", "repeats": 3,
                       "parent_id": "toolu_task_2"}
    agent = snapshot(events)["stories"][0]["agent"]
    assert [(s["type"], s["description"], s["state"], s["tool_calls"]) for s in agent["subagents"]] == [
        ("Explore", "Find the login handler", "done", 2), ("general-purpose", "Run the auth tests", "failed", 3)]
    assert agent["tool_calls"] == 8 and agent["looping"] is None    # the subagent that looped has ended


@pytest.mark.parametrize("line", [
    '{"type":"assistant","message":{"content":[{"type":"text","text":"x"}]},"parent_tool_use_id":["a"]}',
    '{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t","name":"Task","input":"not a dict"}]}}',
    '{"type":"system","subtype":"task_notification","tool_use_id":{"x":1},"status":5}',
    '{"type":"system","subtype":"task_started","tool_use_id":"nobody","is_backgrounded":true}',
    '{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"nobody"}]},"parent_tool_use_id":"x"}'])
def test_odd_subagent_lines_give_valid_flat_events_and_never_raise(line):
    events = parser_for("claude", "S").feed(line) + parser_for("claude", "S").flush()
    for _, data in events:
        json.dumps(data, allow_nan=False)
        assert "parent_id" not in data


# -- going in circles ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,name,tool,summary", [
    ("claude", "claude-real/looping.jsonl", "Bash", "ls build/reports"),
    ("codex", "codex/looping.jsonl", "shell", "/bin/bash -lc 'ls build/reports'"),
    ("gemini", "gemini/looping.jsonl", "run_shell_command", "ls build/reports")])
def test_each_format_reports_one_agent_looping_at_the_third_identical_call(fmt, name, tool, summary):
    events = parse(fmt, name)
    looping = [d for t, d in events if t == "agent_looping"]
    assert looping == [{"story_id": "S1", "tool": tool, "summary": summary, "repeats": 3}]
    calls = [(t, d.get("repeat")) for t, d in events if t in ("tool_call", "agent_looping")]
    assert calls == [("tool_call", None), ("tool_call", 2), ("tool_call", 3), ("agent_looping", None)]


def test_one_warning_per_streak_a_different_input_breaks_it_and_text_between_calls_does_not():
    p = parser_for("claude", "S", loop_after=2)

    def call(i: int, command: str, text: str = "") -> list[tuple[str, dict]]:
        content = ([{"type": "text", "text": text}] if text else []) + [
            {"type": "tool_use", "id": f"t{i}", "name": "Bash", "input": {"command": command}}]
        result = {"type": "user", "message": {"content": [{"type": "tool_result", "tool_use_id": f"t{i}",
                                                           "content": "no"}]}}
        return p.feed(json.dumps({"type": "assistant", "message": {"content": content}})) + p.feed(json.dumps(result))

    kinds = []
    for i, (command, text) in enumerate([("make", ""), ("make", "Once more."), ("make", ""), ("make test", ""),
                                         ("make", ""), ("make", "")]):
        kinds.append([t for t, _ in call(i, command, text) if t == "agent_looping"])
    assert kinds == [[], ["agent_looping"], [], [], [], ["agent_looping"]]


def test_the_same_summary_with_another_input_is_another_call():
    p = parser_for("claude", "S")
    events = []
    for i, old in enumerate(["a", "b", "c"]):
        block = {"type": "tool_use", "id": f"e{i}", "name": "Edit", "input": {"file_path": "app.py", "old_string": old}}
        events += p.feed(json.dumps({"type": "assistant", "message": {"content": [block]}}))
    assert [d["summary"] for t, d in events if t == "tool_call"] == ["app.py"] * 3
    assert not [t for t, _ in events if t == "agent_looping"] and all("repeat" not in d for _, d in events)


def test_the_snapshot_keeps_looping_until_a_different_call_or_the_next_attempt():
    events = parse("claude", "claude-real/looping_long.jsonl")
    cut = next(i for i, (t, _) in enumerate(events) if t == "agent_looping") + 1
    agent = snapshot(events[:cut])["stories"][0]["agent"]
    assert agent["looping"] == {"tool": "Bash", "summary": "ls build/reports", "repeats": 3, "parent_id": None,
                                "since": 100.0 + cut - 1}
    snap = snapshot(events)
    assert snap["stories"][0]["agent"]["looping"]["repeats"] == 6       # the streak went on
    assert "S1 looping: Bash ls build/reports ×3" in [x["text"] for x in snap["log"]]
    other = snapshot(events + [("tool_call", {"story_id": "S1", "tool": "Read", "id": "x", "summary": "a"})])
    assert other["stories"][0]["agent"]["looping"] is None
    again = snapshot(events + [("story_started", {"story_id": "S1", "attempt": 2})])
    assert again["stories"][0]["agent"]["looping"] is None


# -- the terminal -------------------------------------------------------------------------------------------

def test_the_box_warns_of_looping_and_the_agent_line_names_the_working_subagent():
    events = parse("claude", "subagents.jsonl")
    upto = next(i for i, (t, _) in enumerate(events) if t == "agent_looping") + 1
    snap = snapshot([("task_started", {"task_name": "Auth", "story_count": 1}),
                     ("story_started", {"story_id": "S1", "title": "auth"}), *events[:upto]])
    box = "\n".join(render_box(snap, 100, now=snap["stories"][0]["agent"]["last_tool"]["started_at"] + 2))
    assert "⚠ Looping: Bash pytest -q tests/test_auth.py ×3" in box
    assert "Agent: general-purpose “Run the auth tests” › Bash pytest -q tests/test_auth.py · 2s" in box
    assert agent_line(snap["stories"][0]["agent"], snap["updated_at"]).startswith("Agent: general-purpose")
    evil = snapshot([("story_started", {"story_id": "S1"}),
                     ("tool_call", {"story_id": "S1", "tool": "Task", "id": "t", "summary": "x",
                                    "subagent_type": "\x1b[31mred\x1b]0;title\x07", "description": "a\rb"}),
                     ("tool_call", {"story_id": "S1", "tool": "Bash", "id": "u", "summary": "ls", "parent_id": "t"}),
                     ("agent_looping", {"story_id": "S1", "tool": "\x1b[2J", "summary": "\x07x", "repeats": 3})])
    shown = "\n".join(render_box(evil, 100, now=200.0))
    assert "\x1b" not in shown and "\x07" not in shown and "\r" not in shown
    assert "Agent: red “a b” › Bash ls" in shown and "⚠ Looping:  x ×3" in shown


def test_plain_lines_say_looping_and_which_subagent_a_call_is_in():
    line = plain_line({"type": "agent_looping", "run": "r", "ts": 0,
                       "data": {"story_id": "S1", "tool": "Bash", "summary": "pytest -q", "repeats": 3}})
    assert line.endswith("agent_looping S1 ⚠ looping: Bash pytest -q ×3")
    line = plain_line({"type": "tool_call", "run": "r", "ts": 0,
                       "data": {"story_id": "S1", "tool": "Bash", "summary": "ls", "parent_id": "toolu_9"}})
    assert line.endswith("tool_call S1 ↳ toolu_9 → Bash: ls")
    line = plain_line({"type": "subagent_completed", "run": "r", "ts": 0,
                       "data": {"story_id": "S1", "id": "toolu_9", "state": "failed", "summary": "1 failed\x1b[0m"}})
    assert line.endswith("subagent_completed S1 subagent toolu_9 failed: 1 failed")


# -- loop run --max-repeat: the monitor (pure), then a looping fake agent, real processes ---------------------

def test_the_monitor_asks_for_one_stop_per_attempt_at_max_repeat_and_warns_no_later():
    from loopstream.work.agent import AgentMonitor, AgentOptions

    m = AgentMonitor(AgentOptions(agent_format="claude-stream-json", max_repeat=2, story_timeout=1),
                     clock=lambda: 1000.0)
    m.start_attempt("S")
    events = m.output_events("S", "stdout", (AGENTS / "claude-real/looping.jsonl").read_text())
    assert [d["repeats"] for k, d in events if k == "agent_looping"] == [2]     # min(3, --max-repeat)
    assert m.looped == {"S": "Bash ls build/reports"}
    assert m.loop_stop_due("S") and not m.loop_stop_due("S")                  # one stop per attempt
    m.start_attempt("S")
    assert "S" not in m.looped and not m.loop_stop_due("S")
    plain = AgentMonitor(AgentOptions(agent_format="claude-stream-json"), clock=lambda: 1000.0)
    plain.start_attempt("S")
    events = plain.output_events("S", "stdout", (AGENTS / "claude-real/looping_long.jsonl").read_text())
    assert [d["repeats"] for k, d in events if k == "agent_looping"] == [3] and not plain.looped


from test_runner import LOOP, loop_run, pid_alive, story, transcript, types, write_prd  # noqa: E402

FAKE = f"{sys.executable} {AGENTS / 'fake_claude.py'}"


def test_max_repeat_stops_a_looping_story_like_a_timeout_and_retries_it(tmp_path, server):
    pids = tmp_path / "pids"
    # 0.3 s a line: the session would need 3 s more after the 4th call to end (6 calls, then its result)
    command = f"trap '' INT; echo $$ >> {pids}; {FAKE} claude-real/looping_long.jsonl --delay 0.3 --then-sleep 600"
    path = write_prd(tmp_path, [story("L-1", command)])
    r = loop_run(path, server, "--run", "loop-run", "--no-update", "--max-repeat", "4", "--max-attempts", "2",
                 "--grace", "1", timeout=90)
    assert r.returncode == 1, r.stderr
    assert "agent_looping L-1 ⚠ looping: Bash ls build/reports ×3" in r.stdout      # the plain lines say it
    events = transcript(server, "loop-run")
    assert types(events).count("story_started") == 2 and types(events).count("agent_looping") == 2
    starts = [i for i, e in enumerate(events) if e["type"] == "story_started"] + [len(events)]
    for attempt in (events[starts[0]:starts[1]], events[starts[1]:starts[2]]):
        calls = [e["data"].get("repeat") for e in attempt if e["type"] == "tool_call"]
        assert calls[:4] == [None, 2, 3, 4] and "agent_result" not in types(attempt)   # stopped before its end
    errors = [e["data"] for e in events if e["type"] == "error_occurred" and e["data"]["error_type"] == "looping"]
    assert [e["retryable"] for e in errors] == [True, False]
    assert "Bash ls build/reports 4 times in a row" in errors[0]["error_message"]
    done, = [e["data"] for e in events if e["type"] == "story_completed"]
    assert done["status"] == "failed" and done["reason"] == "looping" and done["attempts"] == 2
    for pid in map(int, pids.read_text().split()):            # the shell ignored SIGINT: SIGKILL got it
        assert not pid_alive(pid)
    snap = server.get("/api/runs/loop-run").json()
    assert snap["stories"][0]["agent"]["looping"]["repeats"] >= 4       # more may come in the grace period


def test_max_repeat_below_three_warns_at_it_and_a_prd_key_sets_it(tmp_path, server):
    path = write_prd(tmp_path, [story("L-1", f"{FAKE} claude-real/looping.jsonl --delay 0.02 --then-sleep 600")],
                     maxRepeat=2)
    r = loop_run(path, server, "--run", "loop-prd", "--no-update", "--grace", "1", timeout=60)
    assert r.returncode == 1, r.stderr
    events = transcript(server, "loop-prd")
    looping, = [e["data"] for e in events if e["type"] == "agent_looping"]
    assert looping["repeats"] == 2
    assert [e["data"]["reason"] for e in events if e["type"] == "story_completed"] == ["looping"]


def test_bad_max_repeat_is_refused_before_anything_runs(tmp_path, server):
    import subprocess

    path = write_prd(tmp_path, [story("L-1", "true")], maxRepeat=1.5)
    r = loop_run(path, server, "--run", "bad-repeat")
    assert r.returncode == 2 and "$.maxRepeat" in r.stderr
    r = subprocess.run([*LOOP, "run", str(write_prd(tmp_path, [story("L-1", "true")], name="ok.json")),
                        "--max-repeat", "1"], capture_output=True, text=True, timeout=30, env=os.environ)
    assert r.returncode == 2 and "--max-repeat" in r.stderr and "Traceback" not in r.stderr


def test_loop_adapt_indents_subagents_warns_of_looping_and_the_sidecar_gets_the_tree(server):
    import subprocess

    fake = f"{sys.executable} {AGENTS / 'fake_claude.py'} subagents.jsonl --delay 0"
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {fake} | {' '.join(LOOP)} adapt claude --server {server.url} "
                                      "--run adapt-tree --story T-1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "  ↳ → Grep: def login in src" in lines and "  ↳ ⚠ Looping: Bash pytest -q tests/test_auth.py ×3" in lines
    assert "  ✗ subagent failed: The tests still fail: 1 failed." in lines and "→ Read: README.md" in lines

    def tree():
        agent = (server.get("/api/runs/adapt-tree").json()["stories"] or [{}])[0].get("agent") or {}
        return [(s["description"], s["state"], s["tool_calls"]) for s in agent.get("subagents", [])]

    from conftest import wait_for
    assert wait_for(lambda: tree() == [("Find the login handler", "done", 2), ("Run the auth tests", "failed", 3)],
                    10, message="the subagents in the snapshot")
    kinds = types(transcript(server, "adapt-tree"))
    assert kinds.count("agent_looping") == 1 and kinds.count("subagent_completed") == 2


def test_loop_run_stream_in_tmux_names_the_subagent_and_warns_of_looping(tmp_path, server):
    import shutil
    import subprocess
    import uuid

    from conftest import wait_for

    assert shutil.which("tmux"), "tmux is required (bin/test installs it)"
    path = write_prd(tmp_path, [story("A-1", f"{FAKE} claude-real/subagent.jsonl --delay 0.02 --then-sleep 5"),
                                story("A-2", f"{FAKE} claude-real/looping.jsonl --delay 0.02 --then-sleep 5",
                                      priority=2)], project="Agent tree")
    tmux = ["tmux", "-L", f"agent-tree-{uuid.uuid4().hex[:8]}"]       # a server of our own
    done = tmp_path / "exit"
    cmd = (f"cd {ROOT} && {' '.join(LOOP)} run {path} --stream --no-update --server {server.url} --run box-tree; "
           f"echo $? > {done}; sleep 30")
    subprocess.run([*tmux, "new-session", "-d", "-s", "box", "-x", "100", "-y", "40", cmd], check=True)
    try:
        def screen():
            return subprocess.run([*tmux, "capture-pane", "-p", "-t", "box"], capture_output=True, text=True).stdout

        shown = wait_for(lambda: "Current Story: A-1" in screen() and screen(), 30, message="the first story")
        # The line is drawn first while the subagent runs, then with ✓ when it is done (and held for the
        # fake's 5 s --then-sleep): wait for the finished line itself, not for its first drawing.
        named = "Agent: ✓ general-purpose “Count project files” › Bash ls | wc -l"
        wait_for(lambda: named in screen(), 30, message="the subagent named, done")
        shown = wait_for(lambda: "⚠ Looping:" in screen() and screen(), 30, message="the looping warning")
        assert "⚠ Looping: Bash ls build/reports ×3" in shown and "Current Story: A-2" in shown
        wait_for(lambda: done.exists(), 60, message="the run to end")
        assert done.read_text().strip() == "0" and "\x1b" not in screen()
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
