"""Claude Code's stream-json: the parser on recorded sessions, and `loop adapt claude` as a real pipe."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, wait_for
from helpers import AGENTS, LOOP
from loopstream.core import state
from loopstream.core.formats import MAX_TEXT, LineSplitter, detect, tool_summary
from loopstream.core.formats.claude import ClaudeParser as StreamJsonParser

FAKE = [sys.executable, str(AGENTS / "fake_claude.py")]


def parse(name: str, story: str | None = "S1") -> list[tuple[str, dict]]:
    p = StreamJsonParser(story)
    events = []
    for line in (AGENTS / f"{name}.jsonl").read_text().splitlines():
        events += p.feed(line)
    return events + p.flush()


def test_clean_session_becomes_init_text_tool_calls_results_and_a_priced_result():
    events = parse("clean")
    assert [t for t, _ in events] == ["agent_init", "agent_text", "tool_call", "tool_result", "tool_call",
                                      "tool_result", "tool_call", "tool_result", "agent_text", "agent_result"]
    assert all(d["story_id"] == "S1" for _, d in events)
    assert events[0][1] == {"story_id": "S1", "model": "claude-sonnet-4-5-20250929",
                            "session_id": "5f0c1a2e-7d7b-4c55-9a31-0c9f6b1e2a10"}
    calls = [d for t, d in events if t == "tool_call"]
    assert [(c["tool"], c["id"], c["summary"]) for c in calls] == [
        ("Bash", "toolu_01", "pytest -q tests/test_login.py"), ("Read", "toolu_02", "/work/app/src/login.py"),
        ("Grep", "toolu_03", "def token in src")]
    results = [d for t, d in events if t == "tool_result"]
    assert [(r["tool"], r["id"], r["is_error"]) for r in results] == [
        ("Bash", "toolu_01", False), ("Read", "toolu_02", False), ("Grep", "toolu_03", False)]
    assert results[0]["summary"] == ".... ⏎ 4 passed in 0.12s"
    assert events[8][1]["text"] == "The tests pass. Nothing else to change."     # two text lines, coalesced
    result = events[-1][1]
    assert result["cost_usd"] == 0.0421 and result["is_error"] is False
    assert (result["num_turns"], result["duration_ms"], result["input_tokens"], result["output_tokens"]) == \
        (6, 18234, 12, 845)


def test_failing_tool_is_a_result_with_is_error_and_its_message():
    results = [d for t, d in parse("failing_tool") if t == "tool_result"]
    assert results[0]["is_error"] is True and results[0]["tool"] == "Edit"
    assert "File has not been read yet" in results[0]["summary"]
    assert results[1]["is_error"] is False and results[1]["summary"] == "port: 80 ⏎ host: 0.0.0.0 …"


def test_error_result_without_a_cost_reports_null_never_zero():
    result = parse("error_result")[-1]
    assert result[0] == "agent_result"
    assert result[1]["is_error"] is True and result[1]["subtype"] == "error_max_turns"
    assert result[1]["cost_usd"] is None
    snap = state.reduce([{"id": f"1-{i}", "type": t, "run": "r", "ts": float(i), "data": d}
                         for i, (t, d) in enumerate(parse("error_result"))])
    assert snap["cost_usd"] is None and snap["input_tokens"] == 20 and snap["output_tokens"] == 1020
    assert snap["stories"][0]["agent"]["tool_errors"] == 1 and snap["stories"][0]["agent"]["is_error"] is True


def test_unknown_types_non_json_and_truncated_lines_are_kept_as_output_in_order():
    events = parse("unknown_type")
    kinds = [t for t, _ in events]
    assert kinds == ["agent_init", "output", "agent_text", "tool_call", "tool_result", "output", "output", "output",
                     "tool_call", "tool_result", "agent_result"]
    outputs = [d["text"] for t, d in events if t == "output"]
    assert outputs[0].startswith('{"type":"rate_limit_event"') and outputs[0].endswith("\n")
    assert outputs[1] == "plain text the agent printed outside JSON\n"
    assert outputs[2].startswith('{"type":"assistant"') and '"trunc' in outputs[2]     # truncated JSON line
    assert '"compact_boundary"' in outputs[3]                                          # a system line not init
    call = events[3][1]
    assert call["tool"] == "mcp__github__create_issue" and call["summary"] == "Flaky test"  # future field ignored
    assert events[4][1]["summary"] == "Created issue #12 ⏎ [image]"
    assert events[8][1]["tool"] == "?" and events[8][1]["summary"] == "true"          # tool_use without a name
    assert events[9][1]["tool"] == "?"


def test_silent_session_ends_on_an_open_tool_call():
    events = parse("silent")
    assert events[-1] == ("tool_call", {"story_id": "S1", "tool": "Bash", "id": "toolu_41",
                                        "summary": "pytest -q --slow"})


def test_long_text_is_cut_with_a_visible_mark_and_absurd_lines_are_bounded():
    p = StreamJsonParser(None)
    for _ in range(50):
        assert p.feed(json.dumps({"type": "assistant", "message": {"content": [{"type": "text",
                                                                                "text": "y" * 1000}]}})) == []
    (kind, data), = p.flush()
    assert kind == "agent_text" and "story_id" not in data
    assert data["text"].startswith("y" * MAX_TEXT) and data["text"].endswith("… [cut: 48000 more characters]")
    huge = json.dumps({"type": "assistant", "message": {"content": [
        {"type": "tool_use", "id": "t", "name": "Bash" * 1000, "input": {"command": "x\n" * 100000}}]}})
    (kind, call), = StreamJsonParser().feed(huge)
    assert kind == "tool_call" and len(call["tool"]) <= 100 and len(call["summary"]) <= 200
    splitter = LineSplitter(max_bytes=1000)
    lines = splitter.feed(b"z" * 5000 + b"\nnext") + splitter.close()
    assert lines == ["z" * 1000 + "… [cut: 4000 more bytes]", "next"]
    (kind, out), = StreamJsonParser().feed(lines[0])
    assert kind == "output" and out["text"].startswith("zzz")


@pytest.mark.parametrize("line", [
    "", "{", "[1, 2]", "null", '{"type": 5}', '{"type": "assistant"}', '{"type": "assistant", "message": 3}',
    '{"type": "user", "message": {"content": [{"type": "tool_result"}]}}', "[" * 100000 + "]" * 100000,
    '{"type": "result", "total_cost_usd": "lots", "usage": [1], "num_turns": 1e400}',
    '{"type": "result", "total_cost_usd": NaN}', '\x1b[31m{"type": "system"}'])
def test_any_line_gives_events_and_never_raises(line):
    events = StreamJsonParser("S").feed(line)
    for kind, data in events:
        json.dumps(data, allow_nan=False)     # always valid, finite JSON
        if kind == "agent_result":
            assert data["cost_usd"] is None


def test_init_detection_and_tool_summaries():
    assert detect((AGENTS / "clean.jsonl").read_text().splitlines()[0]) == "claude"
    assert detect('{"type": "system", "subtype": "compact_boundary"}') is None
    assert detect("Starting agent…") is None and detect("{not json") is None
    assert tool_summary("Bash", {"command": "make\nmake test"}) == "make …"
    assert tool_summary("Glob", {"pattern": "**/*.py"}) == "**/*.py"
    assert tool_summary("WebFetch", {"url": "https://example.com", "prompt": "x"}) == "https://example.com"
    assert tool_summary("TodoWrite", {"todos": [{}, {}]}) == "2 todos"
    assert tool_summary("Custom", {"n": 1}) == '{"n": 1}'


# -- loop adapt claude, a real pipe ------------------------------------------------------------------

def adapt(server_url: str, session: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`fake_claude SESSION | loop adapt claude ...` through a real shell pipe with pipefail."""
    cmd = (f"set -o pipefail; {' '.join(FAKE)} {session} --delay 0.01 | "
           f"{' '.join(LOOP)} adapt claude --server {server_url} {' '.join(args)}")
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_adapt_sends_the_events_and_prints_a_transcript(server):
    r = adapt(server.url, "clean.jsonl", "--run", "adapt-1", "--story", "US-7")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "● claude-sonnet-4-5-20250929 (session 5f0c1a2e-7d7b-4c55-9a31-0c9f6b1e2a10)"
    assert "→ Bash: pytest -q tests/test_login.py" in lines and "  ✓ Bash: .... ⏎ 4 passed in 0.12s" in lines
    assert lines[-1] == "= ✓ agent done: 6 turns, 18.2 s, cost $0.0421, 12 in / 845 out tokens"
    snap = wait_for(lambda: (s := server.get("/api/runs/adapt-1").json()).get("cost_usd") and s, 10,
                    message="the run's cost")
    agent = snap["stories"][0]["agent"]
    assert snap["stories"][0]["id"] == "US-7" and agent["model"] == "claude-sonnet-4-5-20250929"
    assert agent["tool_calls"] == 3 and agent["last_tool"]["tool"] == "Grep" and agent["cost_usd"] == 0.0421
    assert snap["cost_usd"] == 0.0421 and snap["input_tokens"] == 12 and snap["output_tokens"] == 845
    types = [e["type"] for e in server.get("/api/runs/adapt-1/transcript").json()["events"]]
    assert types == ["story_started", "agent_init", "agent_text", "tool_call", "tool_result", "tool_call",
                     "tool_result", "tool_call", "tool_result", "agent_text", "agent_result", "story_completed"]
    assert snap["stories"][0]["status"] == "passed"


def test_adapt_keeps_unknown_lines_as_output_and_escapes_off_the_terminal(server, tmp_path):
    session = tmp_path / "evil.jsonl"
    session.write_text("\n".join([
        (AGENTS / "clean.jsonl").read_text().splitlines()[0],
        json.dumps({"type": "assistant", "message": {"content": [{"type": "text", "text": "hi\x1b[2J\x1b]0;pwn\x07"},
                                                                  {"type": "tool_use", "id": "t", "name": "Bash\x1b[31m",
                                                                   "input": {"command": "rm\x08\x08 <script>"}}]}}),
        "raw \x1b[1mbold\x1b[0m line"]) + "\n")
    r = adapt(server.url, str(session), "--run", "adapt-evil")
    assert r.returncode == 0 and "\x1b" not in r.stdout and "\x07" not in r.stdout and "\x08" not in r.stdout
    assert "→ Bash: rm <script>" in r.stdout and "raw bold line" in r.stdout
    events = wait_for(lambda: len(e := server.get("/api/runs/adapt-evil/transcript").json()["events"]) == 4 and e, 10)
    assert [e["type"] for e in events] == ["agent_init", "agent_text", "tool_call", "output"]
    assert events[3]["data"]["text"] == "raw \x1b[1mbold\x1b[0m line\n"   # the event keeps the text; views clean it


def test_adapt_with_no_sidecar_still_prints_and_exits_0(tmp_path):
    from conftest import free_port

    start = time.monotonic()
    r = adapt(f"http://127.0.0.1:{free_port()}", "failing_tool.jsonl", "--wait", "1")
    assert r.returncode == 0
    assert "  ✗ Edit: <tool_use_error>" in r.stdout and r.stdout.rstrip().endswith("8 in / 310 out tokens")
    assert "cannot reach the sidecar" in r.stderr and "not delivered" in r.stderr
    assert time.monotonic() - start < 30     # a generous bound: it must not wait out retries forever


def test_adapt_with_a_hung_sidecar_returns_with_exit_0(server):
    os.killpg(server.proc.pid, signal.SIGSTOP)
    try:
        r = adapt(server.url, "error_result.jsonl", "--run", "hung", "--wait", "1", timeout=60)
    finally:
        os.killpg(server.proc.pid, signal.SIGCONT)
    assert r.returncode == 0
    assert r.stdout.rstrip().endswith("cost unknown, 20 in / 1020 out tokens")
    assert "= ✗ agent failed (error_max_turns)" in r.stdout


def test_adapt_reads_a_bad_run_name_as_a_usage_error(server):
    r = subprocess.run([*LOOP, "adapt", "claude", "--run", "bad name!", "--server", server.url], input="",
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--run" in r.stderr and "Traceback" not in r.stderr


# -- the views ----------------------------------------------------------------------------------------

def test_box_shows_the_current_tool_with_its_time_a_stall_and_the_run_cost():
    from loopstream.view import plain_line, render_box

    events = json.loads((ROOT / "tests" / "fixtures" / "agent_story_two_attempts.json").read_text())["events"]
    text = "\n".join(render_box(state.reduce(events[:6]), 80, now=15.0))
    assert "Agent: Bash pytest -q · 12s" in text and "⚠ Stalled: A-1" in text
    assert "Cost:" not in text                                    # nothing reported yet
    text = "\n".join(render_box(state.reduce(events[:9]), 80, now=41.5))
    assert "Agent: Edit src/app.py · 0s" in text and "Stalled" not in text   # the stall cleared by the result
    assert "Cost: $0.2500 · 1,200 in / 300 out tokens" in "\n".join(render_box(state.reduce(events[:10]), 80, now=42))
    done = state.reduce(events + [{"id": "1000-99", "type": "task_completed", "run": "r1", "ts": 70.0, "data": {}}])
    text = "\n".join(render_box(done, 80, now=80.0))
    assert "Cost: $0.3750 · 2,010 in / 405 out tokens" in text and "Agent:" not in text
    assert plain_line(events[4]).endswith("tool_call A-1 → Bash: pytest -q")
    assert plain_line(events[6]).endswith("tool_result A-1 ✗ Bash: 1 failed")


def test_loop_watch_in_a_real_terminal_shows_the_agent_line_and_the_cost(server, tmp_path):
    import shutil
    import uuid

    assert shutil.which("tmux"), "tmux is required (bin/test installs it)"
    server.post([{"type": "task_started", "run": "w-agent", "data": {"task_name": "Agent watch", "story_count": 1}},
                 {"type": "story_started", "run": "w-agent", "data": {"story_id": "US-1", "title": "slow suite",
                                                                        "acceptance_criteria": ["green"]}}])
    session = f"loop-{uuid.uuid4().hex[:8]}"
    cmd = f"cd {ROOT} && {' '.join(LOOP)} watch w-agent --server {server.url}; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "90", "-y", "30", cmd], check=True)
    agent = subprocess.Popen(["bash", "-c", f"{' '.join(FAKE)} silent.jsonl --delay 0.01 --then-sleep 60 | "
                                            f"{' '.join(LOOP)} adapt claude --server {server.url} --run w-agent "
                                            f"--story US-1"], start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        def screen():
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                  text=True).stdout

        shown = wait_for(lambda: "Agent: Bash pytest -q --slow · " in screen() and screen(), 30,
                         message="the Agent line in loop watch")
        assert "Current Story: US-1 - slow suite" in shown
        wait_for(lambda: re.search(r"Agent: Bash pytest -q --slow · [2-9]s", screen()), 30,
                 message="the tool's timer to run")
        server.post([{"type": "agent_result", "run": "w-agent",
                      "data": {"story_id": "US-1", "cost_usd": 1.5, "input_tokens": 2000, "output_tokens": 10}}])
        wait_for(lambda: "Cost: $1.5000 · 2,000 in / 10 out tokens" in screen(), 30, message="the run's cost")
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(10)
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_agent_fields_with_escapes_never_reach_the_terminal():
    from loopstream.view import plain_line, render_box

    evil = "\x1b[2J\x1b]0;title\x07pwn\x08\r"
    events = [{"id": f"1-{i}", "type": t, "run": "r", "ts": 1.0 + i, "data": d} for i, (t, d) in enumerate([
        ("story_started", {"story_id": "S" + evil, "title": evil}),
        ("agent_init", {"story_id": "S" + evil, "model": evil}),
        ("tool_call", {"story_id": "S" + evil, "tool": evil, "id": "t", "summary": evil}),
        ("story_stalled", {"story_id": "S" + evil, "silent_s": 5}),
        ("agent_result", {"cost_usd": 1.0, "input_tokens": 1, "output_tokens": 1}),
    ])]
    text = "\n".join(render_box(state.reduce(events), 80, now=10.0)) + "\n".join(plain_line(e) for e in events)
    assert "\x1b" not in text and "\x07" not in text and "\x08" not in text and "\r" not in text
    assert "Agent: pwn" in text and "pwn · 7s" in text and "Cost: $1.0000" in text
