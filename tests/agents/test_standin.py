"""The stand-in model API on its own, and each real agent CLI driven by it (installed when missing:
tests/agents/install-clis.sh, which bin/test runs)."""
from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import clis  # noqa: E402
from standin import StandIn  # noqa: E402

TOOLS_ANTHROPIC = [{"name": "Bash", "input_schema": {}}]


def post(url: str, body: dict) -> tuple[int, str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def sse_data(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def test_anthropic_stream_replays_text_then_a_bash_call():
    with StandIn([{"text": "Running.", "shell": "pytest -q"}, {"text": "Done here."}]) as s:
        _, first = post(s.url + "/v1/messages", {"stream": True, "tools": TOOLS_ANTHROPIC, "messages": []})
        _, second = post(s.url + "/v1/messages", {"stream": False, "tools": TOOLS_ANTHROPIC, "messages": []})
    events = sse_data(first)
    assert [e["type"] for e in events][0] == "message_start" and events[-1]["type"] == "message_stop"
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    partial = "".join(e["delta"].get("partial_json", "") for e in events if e["type"] == "content_block_delta")
    assert json.loads(partial)["command"] == "pytest -q"
    assert json.loads(second)["content"] == [{"type": "text", "text": "Done here."}]


def test_requests_without_tools_take_no_turn_and_errors_repeat_as_told():
    with StandIn([{"error": 529, "times": 2}, {"text": "ok"}]) as s:
        status, side = post(s.url + "/v1/messages", {"messages": []})
        assert status == 200 and "stand-in" in json.loads(side)["content"][0]["text"]
        codes = [post(s.url + "/v1/messages", {"tools": TOOLS_ANTHROPIC, "messages": []})[0] for _ in range(3)]
    assert codes == [529, 529, 200]


def test_turns_for_a_subagent_go_to_its_conversation_only():
    def ask(s, opening):
        body = {"tools": TOOLS_ANTHROPIC, "messages": [{"role": "user", "content": opening}]}
        return json.loads(post(s.url + "/v1/messages", body)[1])["content"][0]["text"]
    with StandIn([{"text": "parent 1"}, {"for": "Count the files", "text": "sub"}, {"text": "parent 2"}]) as s:
        assert ask(s, "main task") == "parent 1"
        assert ask(s, "Count the files please") == "sub"
        assert ask(s, "main task") == "parent 2"


def test_responses_stream_ends_with_completed_and_fills_ids_from_the_last_output():
    tools = [{"type": "function", "name": "exec_command"}]
    with StandIn([{"shell": "ls"}, {"tool": "wait_agent", "input": {"targets": ["$out.agent_id"]}}]) as s:
        _, first = post(s.url + "/v1/responses", {"stream": True, "tools": tools, "input": []})
        body = {"stream": True, "tools": tools,
                "input": [{"type": "function_call_output", "call_id": "c", "output": '{"agent_id": "A1"}'}]}
        _, second = post(s.url + "/v1/responses", body)
    events = sse_data(first)
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    call = [e["item"] for e in events if e["type"] == "response.output_item.done"][0]
    assert call["name"] == "exec_command" and json.loads(call["arguments"]) == {"cmd": "ls"}
    done = [e["item"] for e in sse_data(second) if e["type"] == "response.output_item.done"][0]
    assert json.loads(done["arguments"]) == {"targets": ["A1"]}


def test_gemini_stream_and_a_side_question_answered_in_its_schema():
    tools = [{"functionDeclarations": [{"name": "run_shell_command"}]}]
    with StandIn([{"text": "hi", "shell": "ls"}]) as s:
        _, text = post(s.url + "/v1beta/models/m:streamGenerateContent?alt=sse", {"tools": tools, "contents": []})
        schema = {"type": "object", "properties": {"next_speaker": {"type": "string"}}}
        _, side = post(s.url + "/v1beta/models/m:generateContent",
                       {"contents": [], "generationConfig": {"responseJsonSchema": schema}})
    chunks = sse_data(text)
    parts = [p for c in chunks for p in c["candidates"][0]["content"]["parts"]]
    assert {"functionCall": {"name": "run_shell_command", "args": {"command": "ls", "description": "Run ls"}}} \
        in parts
    assert json.loads(json.loads(side)["candidates"][0]["content"]["parts"][0]["text"]) == {"next_speaker": "user"}


@pytest.mark.parametrize("name", sorted(clis.RUNNERS))
def test_each_real_cli_runs_a_shell_command_offline(name, tmp_path):
    clis.ensure_installed(name)          # a missing CLI is installed, never a skip
    r = clis.RUNNERS[name]("Run echo", [{"shell": "echo standin-ok"}, {"text": "It printed standin-ok."}], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not r.stray
    assert "standin-ok" in "\n".join(r.lines)
    last = r.events[-1]
    assert last["type"] in ("result", "turn.completed")
