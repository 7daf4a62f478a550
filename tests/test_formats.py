"""One table of cases for the three agent formats, run over sessions recorded from the real CLIs
(tests/agents/{claude-real,codex,gemini}/, recorded against the scripted stand-in: see
tests/agents/README.md): the same vocabulary, the same summary rules, a missing cost null."""
import json

import pytest

from helpers import AGENTS
from loopstream.core.events import validate_one
from loopstream.core.formats import FORMATS, PRD_FORMATS, detect, parser_for

FOLDERS = {"claude": "claude-real", "codex": "codex", "gemini": "gemini"}
AGENT_TYPES = {"agent_init", "agent_text", "tool_call", "tool_result", "agent_result", "agent_looping",
               "subagent_completed", "output"}

# format, session -> what its events must show. calls: the tool_call summaries, in order (a prefix of each
# is enough); errors: how many tool results are errors; failed: the agent_result's is_error.
CASES = [
    ("claude", "text", {"calls": [], "errors": 0, "failed": False, "text": "4"}),
    ("codex", "text", {"calls": [], "errors": 0, "failed": False, "text": "2 + 2 is 4."}),
    ("gemini", "text", {"calls": [], "errors": 0, "failed": False, "text": "2 + 2 is 4."}),
    ("codex", "shell", {"calls": ["/bin/bash -lc \"printf"], "errors": 0, "failed": False, "result": "4 passed"}),
    ("gemini", "shell", {"calls": ["printf"], "errors": 0, "failed": False, "result": "4 passed"}),
    ("codex", "tool_error", {"calls": ["/bin/bash -lc 'cat missing.txt'"], "errors": 1, "failed": False}),
    ("gemini", "tool_error", {"calls": ["cat missing.txt", "/tmp/"], "errors": 1, "failed": False}),
    ("codex", "mcp", {"calls": ['{"text": "hi"}', '{"text": "boom"}'], "errors": 1, "failed": False,
                      "tools": ["echo.echo", "echo.fail"]}),
    ("gemini", "mcp", {"calls": ['{"text": "hi"}', '{"text": "boom"}'], "errors": 1, "failed": False}),
    ("codex", "edit", {"tools": ["web_search", "apply_patch", "shell"], "errors": 0, "failed": False,
                       "calls": ["hello", "add ", "/bin/bash -lc 'cat hello.txt'"]}),
    ("gemini", "edit", {"tools": ["write_file", "run_shell_command"], "errors": 0, "failed": False,
                        "calls": ["/tmp/", "cat hello.txt"]}),
    ("codex", "api_error", {"calls": [], "errors": 0, "failed": True, "said": "scripted: the request was refused"}),
    ("gemini", "api_error", {"calls": [], "errors": 0, "failed": True, "said": "scripted: the request was refused"}),
    ("codex", "subagent", {"tools": ["agent.spawn_agent", "agent.wait"], "errors": 0, "failed": False,
                           "calls": ["Count the files", "01a"], "text": "counted 3 files"}),
    ("codex", "looping", {"errors": 3, "failed": False, "looping": 3}),
    ("gemini", "looping", {"errors": 0, "failed": False, "looping": 3}),
]


def session(fmt: str, name: str) -> list[str]:
    return (AGENTS / FOLDERS[fmt] / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()


def events_of(fmt: str, lines: list[str]) -> list[tuple[str, dict]]:
    parser = parser_for(fmt, "US-1")
    events = [e for line in lines for e in parser.feed(line)] + parser.flush()
    assert parser.understood == sum(1 for ln in lines if ln.strip()), "a line of the real CLI was not understood"
    return events


@pytest.mark.parametrize("fmt,name,expect", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_recorded_session_reads_the_same_in_every_format(fmt, name, expect):
    lines = session(fmt, name)
    assert detect(lines[0]) == fmt
    events = events_of(fmt, lines)
    kinds = [k for k, _ in events]
    assert set(kinds) <= AGENT_TYPES and kinds[0] == "agent_init" and kinds.count("agent_result") == 1
    for kind, data in events:                       # every event is one the sidecar takes as it is
        validate_one({"type": kind, "run": "r", "data": data})
        assert data["story_id"] == "US-1"
    calls = [d for k, d in events if k == "tool_call"]
    results = [d for k, d in events if k == "tool_result"]
    if "calls" in expect:
        assert len(calls) == len(expect["calls"])
        assert all(c["summary"].startswith(want) for c, want in zip(calls, expect["calls"], strict=True)), calls
    if "tools" in expect:
        assert [c["tool"] for c in calls][:len(expect["tools"])] == expect["tools"] or \
            sorted({c["tool"] for c in calls}) == sorted(expect["tools"])
    assert [r["id"] for r in results] == [c["id"] for c in calls]          # every call answered, in order
    assert sum(r["is_error"] for r in results) == expect["errors"]
    (result,) = [d for k, d in events if k == "agent_result"]
    assert result["is_error"] is expect["failed"]
    if fmt != "claude":
        assert result["cost_usd"] is None            # codex and gemini report no cost: null, never 0
    assert result["input_tokens"] and result["output_tokens"] or expect["failed"]
    if "text" in expect:
        assert expect["text"] in " ".join(d["text"] for k, d in events if k == "agent_text")
    if "result" in expect:
        assert any(expect["result"] in r["summary"] for r in results)
    if "said" in expect:
        assert any(expect["said"] in d["text"] for k, d in events if k == "output")
    if "looping" in expect:
        (looping,) = [d for k, d in events if k == "agent_looping"]
        assert looping["repeats"] == expect["looping"] and looping["summary"] == calls[0]["summary"]


def test_every_recorded_session_of_every_format_is_understood_and_valid():
    for fmt, folder in FOLDERS.items():
        for path in sorted((AGENTS / folder).glob("*.jsonl")):
            if path.name.startswith("hooks-"):
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            assert detect(lines[0]) == fmt, path
            for kind, data in events_of(fmt, lines):
                validate_one({"type": kind, "run": "r", "data": data})


def test_one_registry_names_every_format_for_adapt_and_for_prds():
    assert set(FORMATS) == {"claude", "codex", "gemini"}
    assert set(PRD_FORMATS.values()) == set(FORMATS)
    from loopstream.work.prd import AGENT_FORMATS

    assert set(AGENT_FORMATS) == {"text", *PRD_FORMATS}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_truncated_unknown_and_absurd_lines_are_output_never_a_crash(fmt):
    lines = session(fmt, "shell")
    cut = lines[2][: len(lines[2]) // 2]
    odd = [cut, json.dumps({"type": "from.the.future", "x": 1}), "plain text", json.dumps({"type": 7}),
           json.dumps({"type": "item.completed", "item": {"id": 1, "type": ["x"]}}), "{" * 5000, "\x1b[31mred"]
    events = events_of_lenient(fmt, [lines[0], *odd, *lines[1:]])
    outputs = [d["text"] for k, d in events if k == "output"]
    assert any(cut[:40] in text for text in outputs) and any("plain text" in text for text in outputs)
    for kind, data in events:
        validate_one({"type": kind, "run": "r", "data": data})


def events_of_lenient(fmt: str, lines: list[str]) -> list[tuple[str, dict]]:
    parser = parser_for(fmt, "US-1")
    return [e for line in lines for e in parser.feed(line)] + parser.flush()


def test_a_codex_item_completed_twice_gives_its_result_once():
    lines = session("codex", "shell")
    done = next(ln for ln in lines if '"item.completed"' in ln and "command_execution" in ln)
    events = events_of_lenient("codex", [*lines[:-1], done, lines[-1]])
    assert sum(1 for k, _ in events if k == "tool_result") == 1


def _wild_values():
    """Any JSON value, weighted toward the shapes the parsers look into (objects with known keys)."""
    from hypothesis import strategies as st

    keys = st.sampled_from(["type", "item", "id", "text", "command", "status", "exit_code", "usage", "error",
                            "message", "content", "role", "tool_name", "tool_id", "parameters", "output", "stats",
                            "subtype", "model", "session_id", "thread_id", "changes", "arguments", "result",
                            "input_tokens", "total_cost_usd", "is_error", "name", "input", "tool_use_id", "delta",
                            "parent_tool_use_id", "aggregated_output", "server", "tool", "query"])
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(), st.text(max_size=20),
                       st.sampled_from(["item.completed", "command_execution", "tool_use", "tool_result", "text",
                                        "assistant", "error", "mcp_tool_call", "file_change", "failed"]))
    return st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(keys, inner, max_size=6)), max_leaves=25)


def test_no_line_of_any_shape_makes_any_format_raise_or_send_an_invalid_event():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    types = sorted({t for parser in FORMATS.values() for t in parser.HANDLERS})

    @settings(max_examples=400, deadline=None)
    @given(st.sampled_from(sorted(FORMATS)), st.lists(st.tuples(st.sampled_from(types), _wild_values()), max_size=6))
    def check(fmt, lines):
        parser = parser_for(fmt, "S")
        events = []
        for kind, rest in lines:
            obj = {**(rest if isinstance(rest, dict) else {"x": rest}), "type": kind}
            events += parser.feed(json.dumps(obj))
        events += parser.flush()
        for kind, data in events:
            assert kind in AGENT_TYPES
            validate_one({"type": kind, "run": "r", "data": data})

    check()
