"""Agent-aware runs: the per-story monitor (pure, on a fake clock) and `loop run` with the fake agent."""
from __future__ import annotations

import json

from conftest import ROOT
from loopstream.agentrun import AgentMonitor, AgentOptions, StoryStream
from loopstream.prd import validate

AGENTS = ROOT / "tests" / "agents"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def session_text(name: str) -> str:
    return (AGENTS / f"{name}.jsonl").read_text()


def test_a_first_stream_json_init_line_turns_the_parser_on_even_when_split_across_chunks():
    s = StoryStream("S", forced=False)
    text = session_text("clean")
    events = s.feed("stdout", text[:10]) + s.feed("stdout", text[10:500]) + s.feed("stdout", text[500:])
    events += s.close()
    kinds = [k for k, _ in events]
    assert kinds[0] == "agent_init" and kinds[-1] == "agent_result" and "output" not in kinds
    assert all(d["story_id"] == "S" for _, d in events)


def test_plain_text_passes_at_once_and_json_that_is_not_init_stays_text():
    s = StoryStream("S", forced=False)
    assert s.feed("stdout", "building…") == [("output", {"story_id": "S", "stream": "stdout", "text": "building…"})]
    assert s.feed("stdout", '{"type":"system","subtype":"init"}\n')[0][0] == "output"   # decided: text
    j = StoryStream("S", forced=False)
    assert j.feed("stdout", '{"progress": 1') == []                       # held until its line ends
    assert j.feed("stdout", '}\nmore\n') == [("output", {"story_id": "S", "stream": "stdout",
                                                         "text": '{"progress": 1}\nmore\n'})]
    e = StoryStream("S", forced=False)
    assert e.feed("stderr", "warning\n") == [("output", {"story_id": "S", "stream": "stderr", "text": "warning\n"})]


def test_forced_format_parses_without_an_init_line_and_keeps_unknown_lines_as_output():
    s = StoryStream("S", forced=True)
    events = s.feed("stdout", "Starting…\n" + session_text("clean").split("\n", 1)[1])
    assert events[0] == ("output", {"story_id": "S", "stream": "stdout", "text": "Starting…\n"})
    assert events[1][0] == "agent_text" and events[-1][0] == "agent_result"


def test_big_unknown_output_is_sent_in_chunks_of_at_most_4_kb():
    s = StoryStream("S", forced=True)
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
