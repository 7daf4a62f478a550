"""The agent formats against the real CLIs: Claude Code, Codex and Gemini CLI, run offline against the
scripted stand-in model API (tests/agents/standin.py), really run a shell command, and what they print
goes through `loop adapt FORMAT` into a real sidecar: the same story, tool call, result and tokens for
all three, and a cost only where the agent reports one."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_for
from helpers import LOOP
from test_dashboard import browser  # noqa: F401  (a fixture)

sys.path.insert(0, str(Path(__file__).resolve().parent / "agents"))
import clis  # noqa: E402

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


# -- each format's recorded session through `loop run`: recognised by its first line, read the same -----------

FAKE = f"{sys.executable} {Path(__file__).resolve().parent / 'agents' / 'fake_claude.py'}"
RECORDED = {"claude": "claude-real/shell.jsonl", "codex": "codex/shell.jsonl", "gemini": "gemini/shell.jsonl"}


@pytest.fixture(scope="module")
def recorded_runs(tmp_path_factory):
    """One sidecar; per format, a `loop run` whose one story replays that CLI's recorded session
    (agentFormat left at "text": the first line says which agent it is)."""
    from conftest import Server
    from test_runner import loop_run, story, write_prd

    tmp = tmp_path_factory.mktemp("recorded")
    server = Server(tmp, args=["--rate", "0"]).start()
    outputs = {}
    try:
        for fmt, session in RECORDED.items():
            prd = write_prd(tmp, [story("US-1", f"{FAKE} {session} --delay 0.02")], name=f"{fmt}.json")
            r = loop_run(prd, server, "--run", f"rec-{fmt}", "--no-update", timeout=90)
            assert r.returncode == 0, r.stderr
            outputs[fmt] = r.stdout
        yield server, outputs
    finally:
        server.stop()


@pytest.mark.parametrize("fmt", sorted(RECORDED))
def test_a_recorded_session_of_each_cli_in_loop_run_shows_in_the_snapshot_and_the_lines(fmt, recorded_runs):
    server, outputs = recorded_runs
    run = server.get(f"/api/runs/rec-{fmt}").json()
    agent = run["stories"][0]["agent"]
    assert run["status"] == "passed" and agent["session_id"] and agent["tool_calls"] == 1
    assert "printf" in agent["last_tool"]["summary"] and run["input_tokens"] and run["output_tokens"]
    assert (run["cost_usd"] is None) is (fmt != "claude")
    assert re.search(r"tool_call US-1 → \S+: .*printf", outputs[fmt]) and "tool_result US-1 ✓" in outputs[fmt]


@pytest.mark.parametrize("fmt", sorted(RECORDED))
def test_a_recorded_session_of_each_cli_shows_in_loop_watch_in_a_terminal(fmt, recorded_runs):
    import shutil
    import uuid

    server, _ = recorded_runs
    assert shutil.which("tmux"), "tmux is required (bin/test installs it)"
    sock, session = f"loop-{uuid.uuid4().hex[:6]}", "watch"
    cmd = f"{' '.join(LOOP)} watch rec-{fmt} --server {server.url}; sleep 30"
    subprocess.run(["tmux", "-L", sock, "new-session", "-d", "-s", session, "-x", "100", "-y", "40", cmd], check=True)
    try:
        def screen():
            return subprocess.run(["tmux", "-L", sock, "capture-pane", "-p", "-t", session], capture_output=True,
                                  text=True).stdout

        shown = wait_for(lambda: "[PASSED]" in screen() and screen(), 30, message="the finished run's box")
        assert re.search(r"Cost: (\$[\d.]+|unknown) · [1-9][\d,]* in / [1-9][\d,]* out tokens", shown), shown
        assert ("Cost: unknown" in shown) is (fmt != "claude")
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True)


def test_a_recorded_session_of_each_cli_shows_in_the_dashboards_agent_panel(recorded_runs, browser):
    from test_dashboard import open_page, until
    from test_dashboard_agent import rows

    server, _ = recorded_runs
    for fmt in sorted(RECORDED):
        open_page(browser, f"{server.url}/?run=rec-{fmt}")
        until(browser, lambda: any("printf" in r["summary"] for r in rows(browser)),
              message=f"the {fmt} tool call in the agent timeline")
        call = next(r for r in rows(browser) if "printf" in r["summary"])
        assert call["mark"] == "✓" and call["status"] == "passed", call
