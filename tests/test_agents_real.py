"""The agent formats against the real CLIs: Claude Code, Codex and Gemini CLI, run offline against the
scripted stand-in model API (tests/agents/standin.py), really run a shell command, and what they print
goes through `loop adapt FORMAT` into a real sidecar: the same story, tool call, result and tokens for
all three, and a cost only where the agent reports one."""
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "agents"))
import clis  # noqa: E402

LOOP = [sys.executable, "-m", "loopstream"]
SCRIPT = [{"text": "I'll run the tests.", "shell": "printf '4 passed in 0.12s\\n'"}, {"text": "All 4 tests pass."}]
LOOPING = [{"shell": "ls build/reports"}] * 3 + [{"text": "Giving up."}]


def real_run(name: str, script, tmp_path) -> list[str]:
    clis.ensure_installed(name)
    r = clis.RUNNERS[name]("Run the tests", script, tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not r.stray, r.stray                      # nothing left 127.0.0.1
    return r.lines


def adapt(server, name: str, lines: list[str], run: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LOOP, "adapt", name, "--run", run, "--story", "US-1", "--title", "Run the tests", "--last",
                           "--server", server.url], input="\n".join(lines) + "\n", capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("name", ["claude", "codex", "gemini"])
def test_a_real_agent_session_through_loop_adapt_is_one_passed_story(name, server, tmp_path):
    lines = real_run(name, SCRIPT, tmp_path)
    r = adapt(server, name, lines, f"real-{name}")
    assert r.returncode == 0, r.stderr
    assert "→ " in r.stdout and "4 passed" in r.stdout and "agent done" in r.stdout     # the transcript
    run = server.get(f"/api/runs/real-{name}").json()
    assert run["status"] == "passed"
    (story,) = run["stories"]
    agent = story["agent"]
    assert story["status"] == "passed" and agent["tool_calls"] == 1 and agent["tool_errors"] == 0
    assert "printf" in agent["last_tool"]["summary"] and agent["last_tool"]["finished_at"] is not None
    assert run["input_tokens"] and run["output_tokens"]
    if name == "claude":
        assert agent["model"] and agent["session_id"]
    else:
        assert run["cost_usd"] is None and agent["cost_usd"] is None     # no cost reported: null, never 0


@pytest.mark.parametrize("name", ["claude", "codex", "gemini"])
def test_a_real_agent_calling_the_same_command_again_and_again_is_caught(name, server, tmp_path):
    lines = real_run(name, LOOPING, tmp_path)
    assert adapt(server, name, lines, f"loops-{name}").returncode == 0
    events = server.get(f"/api/runs/loops-{name}/transcript").json()["events"]
    looping = [e["data"] for e in events if e["type"] == "agent_looping"]
    assert len(looping) == 1 and looping[0]["repeats"] == 3 and "ls build/reports" in looping[0]["summary"]
