"""Agent-aware runs: the per-story monitor (pure, on a fake clock) and `loop run` with the fake agent."""
from __future__ import annotations

import json

from conftest import ROOT
from helpers import AGENTS
from loopstream.work.agent import AgentMonitor, AgentOptions, StoryStream
from loopstream.work.prd import validate


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def session_text(name: str) -> str:
    return (AGENTS / f"{name}.jsonl").read_text()


def test_a_first_stream_json_init_line_turns_the_parser_on_even_when_split_across_chunks():
    s = StoryStream("S")
    text = session_text("clean")
    events = s.feed("stdout", text[:10]) + s.feed("stdout", text[10:500]) + s.feed("stdout", text[500:])
    events += s.close()
    kinds = [k for k, _ in events]
    assert kinds[0] == "agent_init" and kinds[-1] == "agent_result" and "output" not in kinds
    assert all(d["story_id"] == "S" for _, d in events)


def test_plain_text_passes_at_once_and_json_that_is_not_init_stays_text():
    s = StoryStream("S")
    assert s.feed("stdout", "building…") == [("output", {"story_id": "S", "stream": "stdout", "text": "building…"})]
    assert s.feed("stdout", '{"type":"system","subtype":"init"}\n')[0][0] == "output"   # decided: text
    j = StoryStream("S")
    assert j.feed("stdout", '{"progress": 1') == []                       # held until its line ends
    assert j.feed("stdout", '}\nmore\n') == [("output", {"story_id": "S", "stream": "stdout",
                                                         "text": '{"progress": 1}\nmore\n'})]
    e = StoryStream("S")
    assert e.feed("stderr", "warning\n") == [("output", {"story_id": "S", "stream": "stderr", "text": "warning\n"})]


def test_forced_format_parses_without_an_init_line_and_keeps_unknown_lines_as_output():
    s = StoryStream("S", "claude-stream-json")
    events = s.feed("stdout", "Starting…\n" + session_text("clean").split("\n", 1)[1])
    assert events[0] == ("output", {"story_id": "S", "stream": "stdout", "text": "Starting…\n"})
    assert events[1][0] == "agent_text" and events[-1][0] == "agent_result"


def test_big_unknown_output_is_sent_in_chunks_of_at_most_4_kb():
    s = StoryStream("S", "claude-stream-json")
    events = s.feed("stdout", "x" * 10_000 + "\n")
    assert [k for k, _ in events] == ["output"] * 3 and all(len(d["text"]) <= 4096 for _, d in events)
    assert "".join(d["text"] for _, d in events) == "x" * 10_000 + "\n"


def test_monitor_stalls_once_per_silence_flushes_held_text_and_times_out():
    clock = Clock()
    m = AgentMonitor(AgentOptions(agent_format="claude-stream-json", stall_after=5, story_timeout=30), clock=clock)
    m.start_attempt("S")
    lines = session_text("clean").splitlines()
    m.output_events("S", "stdout", lines[0] + "\n" + lines[1] + "\n")   # init + text (held for coalescing)
    clock.now += 0.5
    assert m.tick() == ([], [])
    clock.now += 0.6
    events, expired = m.tick()
    assert events == [("agent_text", {"story_id": "S", "text": "I'll look at the failing test first."})]
    clock.now += 4.0
    events, _ = m.tick()
    assert events == [("story_stalled", {"story_id": "S", "silent_s": 5.1})]
    clock.now += 10
    assert m.tick() == ([], [])                                # one stall per silence
    m.touch("S")
    clock.now += 5
    assert m.tick()[0][0][0] == "story_stalled"                # a new silence, a new stall
    clock.now += 20
    assert m.tick()[1] == ["S"] and "S" in m.timed_out
    assert m.tick()[1] == []                                   # expired once
    m.start_attempt("S")
    assert "S" not in m.timed_out                              # a new attempt starts the clock again


def test_monitor_sums_reported_cost_and_flags_the_ceiling():
    m = AgentMonitor(AgentOptions(agent_format="claude-stream-json", max_cost=0.05), clock=Clock())
    for sid, name in (("A", "error_result"), ("B", "clean")):
        m.start_attempt(sid)
        m.output_events(sid, "stdout", session_text(name))
    assert m.cost_usd == 0.0421 and not m.cost_exceeded         # the error_result session reported no cost
    m.start_attempt("C")
    m.output_events("C", "stdout", session_text("failing_tool"))
    assert round(m.cost_usd, 4) == 0.0608 and m.cost_exceeded


def test_prd_agent_keys_are_validated_with_their_paths():
    base = {"userStories": [{"id": "a", "title": "t", "command": "true"}]}
    assert validate({**base, "agentFormat": "claude-stream-json", "stallAfter": 5, "storyTimeout": 60,
                     "maxCost": 0}) == []
    problems = validate({**base, "agentFormat": "json", "stallAfter": 0, "storyTimeout": "1h", "maxCost": -1})
    assert [p.split(":")[0] for p in problems] == ["$.agentFormat", "$.stallAfter", "$.storyTimeout", "$.maxCost"]
    json.dumps(problems)


# -- loop run with the fake agent: real processes, a real sidecar ---------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from test_runner import LOOP, loop_run, pid_alive, story, transcript, types, write_prd  # noqa: E402

FAKE = f"{sys.executable} {AGENTS / 'fake_claude.py'}"


def agent_prd(tmp_path, sessions, **extra):
    return write_prd(tmp_path, [story(f"A-{i}", f"{FAKE} {s}", priority=i) for i, s in enumerate(sessions, 1)],
                     **extra)


def test_a_stream_json_agent_is_recognised_and_its_events_and_cost_reach_the_snapshot(tmp_path, server):
    path = agent_prd(tmp_path, ["clean.jsonl --delay 0.01", "unknown_type.jsonl --delay 0.01"])
    r = loop_run(path, server, "--run", "agent-run", "--no-update")
    assert r.returncode == 0, r.stderr
    events = transcript(server, "agent-run")
    first = [e for e in events if e["data"].get("story_id") == "A-1"]
    assert types(first) == ["story_started", "agent_init", "agent_text", "tool_call", "tool_result", "tool_call",
                            "tool_result", "tool_call", "tool_result", "agent_text", "agent_result", "output",
                            "story_completed"]
    assert not [e for e in first if e["type"] == "output" and e["data"]["text"]]   # no raw JSON poured out
    second = [e for e in events if e["data"].get("story_id") == "A-2"]
    outputs = [e["data"]["text"] for e in second if e["type"] == "output" and e["data"]["text"]]
    assert outputs[0].startswith('{"type":"rate_limit_event"') and "plain text the agent printed" in "".join(outputs)
    assert [e["data"]["tool"] for e in second if e["type"] == "tool_call"] == ["mcp__github__create_issue", "?"]
    snap = server.get("/api/runs/agent-run").json()
    a1 = snap["stories"][0]["agent"]
    assert a1["model"] == "claude-sonnet-4-5-20250929" and a1["tool_calls"] == 3 and a1["cost_usd"] == 0.0421
    assert a1["last_tool"]["tool"] == "Grep" and a1["last_tool"]["finished_at"] is not None
    assert snap["cost_usd"] == 0.0421 + 0.0033 and snap["input_tokens"] == 15 and snap["output_tokens"] == 886


def test_text_agents_are_left_alone_and_a_forced_format_parses_after_a_preamble(tmp_path, server):
    plain = write_prd(tmp_path, [story("T-1", "echo '{\"type\": \"assistant\"}'; echo done")], name="plain.json")
    assert loop_run(plain, server, "--run", "plain-agent", "--no-update").returncode == 0
    texts = [e["data"]["text"] for e in transcript(server, "plain-agent") if e["type"] == "output"]
    assert "".join(texts) == '{"type": "assistant"}\ndone\n'
    forced = write_prd(tmp_path, [story("F-1", f"echo 'Starting claude…'; {FAKE} failing_tool.jsonl --delay 0")],
                       name="forced.json", agentFormat="claude-stream-json")
    assert loop_run(forced, server, "--run", "forced-agent", "--no-update").returncode == 0
    events = transcript(server, "forced-agent")
    assert "Starting claude…\n" in [e["data"].get("text") for e in events if e["type"] == "output"]
    results = [e["data"] for e in events if e["type"] == "tool_result"]
    assert [(x["tool"], x["is_error"]) for x in results] == [("Edit", True), ("Bash", False)]
    r = loop_run(plain, server, "--run", "cli-forced", "--no-update", "--agent-format", "claude-stream-json")
    assert r.returncode == 0
    assert types(transcript(server, "cli-forced")).count("agent_text") == 0


def test_an_agent_silent_past_stall_after_gets_one_story_stalled_and_the_box_shows_it(tmp_path, server):
    path = agent_prd(tmp_path, ["silent.jsonl --delay 0 --then-sleep 3"], stallAfter=1)
    r = loop_run(path, server, "--run", "stall-run", "--no-update")
    assert r.returncode == 0, r.stderr
    events = transcript(server, "stall-run")
    stalls = [e for e in events if e["type"] == "story_stalled"]
    assert len(stalls) == 1 and stalls[0]["data"]["story_id"] == "A-1" and stalls[0]["data"]["silent_s"] >= 1
    assert types(events).index("tool_call") < types(events).index("story_stalled")
    snap = server.get("/api/runs/stall-run").json()
    assert snap["stories"][0]["stalled"] is None          # cleared by the story's next event
    assert "A-1 stalled" in " ".join(x["text"] for x in snap["log"])


def test_story_timeout_fails_the_attempt_through_sigint_then_sigkill_and_retries(tmp_path, server):
    pids = tmp_path / "pids"
    command = f"trap '' INT; echo $$ >> {pids}; {FAKE} silent.jsonl --delay 0 --then-sleep 600"
    path = write_prd(tmp_path, [story("S-1", command)])
    r = loop_run(path, server, "--run", "timeout-run", "--no-update", "--story-timeout", "1.5", "--max-attempts", "2",
                 "--grace", "1", timeout=90)
    assert r.returncode == 1, r.stderr
    events = transcript(server, "timeout-run")
    assert types(events).count("story_started") == 2
    timeouts = [e["data"] for e in events if e["type"] == "error_occurred" and e["data"]["error_type"] == "timeout"]
    assert len(timeouts) == 2 and timeouts[0]["retryable"] is True and timeouts[1]["retryable"] is False
    done = [e["data"] for e in events if e["type"] == "story_completed"][0]
    assert done["status"] == "failed" and done["reason"] == "timeout" and done["attempts"] == 2
    for pid in map(int, pids.read_text().split()):       # the shell ignored SIGINT: SIGKILL got it
        assert not pid_alive(pid)


def test_max_cost_stops_the_run_once_the_reported_cost_passes_it(tmp_path, server):
    path = agent_prd(tmp_path, ["clean.jsonl --delay 0", "clean.jsonl --delay 0 --then-sleep 30",
                                "clean.jsonl --delay 0"])
    r = loop_run(path, server, "--run", "cost-run", "--no-update", "--max-cost", "0.05", timeout=60)
    assert r.returncode == 130, r.stderr
    events = transcript(server, "cost-run")
    assert events[-1]["type"] == "task_stopped" and events[-1]["data"]["reason"] == "max_cost"
    assert types(events).count("agent_result") == 2
    status = {e["data"]["story_id"]: e["data"]["status"] for e in events if e["type"] == "story_completed"}
    assert status == {"A-1": "passed", "A-2": "cancelled", "A-3": "cancelled"}
    assert server.get("/api/runs/cost-run").json()["cost_usd"] == 0.0842


def test_bad_agent_settings_are_refused_before_anything_runs(tmp_path, server):
    path = agent_prd(tmp_path, ["clean.jsonl"], agentFormat="xml", maxCost=-1)
    r = loop_run(path, server, "--run", "bad-agent")
    assert r.returncode == 2 and "$.agentFormat" in r.stderr and "$.maxCost" in r.stderr
    r = subprocess.run([*LOOP, "run", str(agent_prd(tmp_path, ["clean.jsonl"])), "--stall-after", "0"],
                       capture_output=True, text=True, timeout=30, env=os.environ)
    assert r.returncode == 2 and "--stall-after" in r.stderr and "Traceback" not in r.stderr


def test_loop_run_stream_in_a_real_terminal_shows_the_agent_line_stall_and_cost(tmp_path, server):
    import shutil
    import uuid

    from conftest import wait_for

    assert shutil.which("tmux"), "tmux is required (bin/test installs it)"
    path = agent_prd(tmp_path, ["clean.jsonl --delay 0", "silent.jsonl --delay 0 --then-sleep 6"],
                     project="Agent box", stallAfter=2)
    session = f"loop-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit"
    cmd = (f"cd {ROOT} && {' '.join(LOOP)} run {path} --stream --no-update --server {server.url} --run box-agent; "
           f"echo $? > {done}; sleep 30")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "90", "-y", "40", cmd], check=True)
    try:
        def screen():
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                  text=True).stdout

        shown = wait_for(lambda: "Agent: Bash pytest -q --slow · " in screen() and screen(), 30,
                         message="the Agent line in the box")
        assert "Current Story: A-2" in shown and "Cost: $0.0421 · 12 in / 845 out tokens" in shown
        wait_for(lambda: "⚠ Stalled: A-2 silent for" in screen(), 30, message="the stall in the box")
        wait_for(lambda: done.exists(), 60, message="the run to end")
        assert done.read_text().strip() == "0"
        assert "Cost: $0.0421" in screen() and "\x1b" not in screen()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
