"""The dashboard's agent panel (dashboard/agent.js) in a real headless Chromium against a real sidecar:
the timeline, the current tool with its timer, the stall warning, cost and tokens, and hostile text."""
from __future__ import annotations

import json
import re
import subprocess

from selenium.webdriver.common.by import By

from conftest import wait_for
from helpers import AGENTS
from test_dashboard import LOOP, browser, js, open_page, shot, text, until  # noqa: F401  (browser: a fixture)

EVIL = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'


def rows(d):
    return js(d, "return [...document.querySelectorAll('#agent-timeline li')].map(li => "
                 "({kind: li.dataset.kind, status: li.dataset.status, mark: li.querySelector('.mark').textContent, "
                 "tool: li.querySelector('.tool').textContent, summary: li.querySelector('.summary').textContent, "
                 "dur: li.querySelector('.dur').textContent}));")


def test_agent_timeline_current_tool_stall_and_cost_for_a_late_joiner_then_live(browser, server):
    run = "agent-ui"
    server.post([
        {"type": "task_started", "run": run, "data": {"task_name": "Agent UI", "story_count": 1}},
        {"type": "story_started", "run": run, "data": {"story_id": "US-1", "title": "tests", "attempt": 1}},
        {"type": "agent_init", "run": run, "data": {"story_id": "US-1", "model": "claude-sonnet-4-5",
                                                    "session_id": "s1"}},
        {"type": "agent_text", "run": run, "data": {"story_id": "US-1", "text": "I'll run the tests. " + EVIL}},
        {"type": "tool_call", "run": run, "data": {"story_id": "US-1", "tool": "Bash", "id": "t1",
                                                   "summary": "pytest -q"}},
        {"type": "tool_result", "run": run, "data": {"story_id": "US-1", "tool": "Bash", "id": "t1",
                                                     "is_error": True, "summary": "1 failed"}}])
    open_page(browser, f"{server.url}/?run={run}")       # joins late: the first rows come from the transcript
    until(browser, lambda: len(rows(browser)) == 3, message="the timeline from the transcript")
    first = rows(browser)
    assert first[0]["kind"] == "attempt" and first[0]["summary"] == "Attempt 1"
    assert first[1]["kind"] == "text" and EVIL in first[1]["summary"]            # shown literally
    assert (first[2]["tool"], first[2]["summary"], first[2]["mark"], first[2]["status"]) == \
        ("Bash", "pytest -q", "✗", "failed")
    assert text(browser, "#agent-model") == "claude-sonnet-4-5"

    server.post([{"type": "tool_call", "run": run, "data": {"story_id": "US-1", "tool": EVIL, "id": "t2",
                                                            "summary": EVIL}}])
    until(browser, lambda: len(rows(browser)) == 4, message="the live tool call")
    until(browser, lambda: re.search(r"· [1-9]\d*s$", text(browser, "#agent-now")),
          message="the current tool's timer to run")
    assert text(browser, "#agent-now").startswith("Running " + EVIL)
    assert rows(browser)[3]["mark"] == "⏳" and rows(browser)[3]["status"] == "running"

    server.post([{"type": "story_stalled", "run": run, "data": {"story_id": "US-1", "silent_s": 30}}])
    until(browser, lambda: browser.find_element(By.ID, "agent-stall").is_displayed(), message="the stall warning")
    assert "US-1 has printed nothing for 3" in text(browser, "#agent-stall")
    shot(browser, "agent-stalled")

    server.post([{"type": "tool_result", "run": run, "data": {"story_id": "US-1", "tool": EVIL, "id": "t2",
                                                              "is_error": False, "summary": "ok"}},
                 {"type": "agent_result", "run": run, "data": {"story_id": "US-1", "is_error": False, "num_turns": 3,
                                                               "cost_usd": 0.0421, "input_tokens": 1200,
                                                               "output_tokens": 345}}])
    until(browser, lambda: text(browser, "#agent-run-cost") == "$0.0421", message="the run's cost")
    assert not browser.find_element(By.ID, "agent-stall").is_displayed()          # the story spoke again
    assert text(browser, "#agent-story-tokens") == "1,200 in / 345 out"
    assert text(browser, "#agent-calls") == "2 (1 failed)"
    assert rows(browser)[-1]["kind"] == "result" and "$0.0421" in rows(browser)[-1]["summary"]
    assert js(browser, "return document.querySelectorAll('#agent img, #agent script').length") == 0
    assert js(browser, "return window.pwned === undefined")

    server.post([{"type": "story_completed", "run": run, "data": {"story_id": "US-1", "status": "passed"}},
                 {"type": "task_completed", "run": run, "data": {}}])
    until(browser, lambda: "tool_call" in text(browser, "#transcript"), message="the finished run's transcript")
    assert "→ Bash: pytest -q" in text(browser, "#transcript")                   # agent events read as text
    assert text(browser, "#agent-run-cost") == "$0.0421"                         # kept on a finished run
    shot(browser, "agent-finished")


def test_a_run_of_the_fake_agent_through_loop_adapt_shows_every_tool_call(browser, server):
    r = subprocess.run(["bash", "-c", f"{LOOP[0]} {AGENTS / 'fake_claude.py'} clean.jsonl --delay 0.01 | "
                                      f"{' '.join(LOOP)} adapt claude --server {server.url} --run agent-adapt "
                                      f"--story US-9"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: server.get("/api/runs/agent-adapt").json().get("cost_usd"), 10, message="the cost")
    open_page(browser, f"{server.url}/?run=agent-adapt")
    until(browser, lambda: [x["tool"] for x in rows(browser) if x["kind"] == "tool"] == ["Bash", "Read", "Grep"],
          message="the three tool calls")
    tools = [x for x in rows(browser) if x["kind"] == "tool"]
    assert [x["summary"] for x in tools] == ["pytest -q tests/test_login.py", "/work/app/src/login.py",
                                             "def token in src"]
    assert all(x["mark"] == "✓" for x in tools)
    assert text(browser, "#agent-run-cost") == "$0.0421" and text(browser, "#agent-run-tokens") == "12 in / 845 out"
    browser.find_element(By.ID, "export").click()
    target = browser.downloads / "loop-agent-adapt-transcript.json"
    wait_for(lambda: target.exists() and target.stat().st_size > 0, message="the export download")
    exported = json.loads(target.read_text())
    assert exported["agent"]["cost_usd"] == 0.0421 and exported["agent"]["output_tokens"] == 845
    assert exported["agent"]["stories"][0]["id"] == "US-9" and exported["agent"]["stories"][0]["tool_calls"] == 3
    assert [e["type"] for e in exported["events"]].count("tool_call") == 3


def test_loop_run_with_the_fake_agent_shows_each_story_timeline_and_a_picker(browser, server, tmp_path):
    from selenium.webdriver.support.ui import Select

    fake = f"{LOOP[0]} {AGENTS / 'fake_claude.py'}"
    prd = tmp_path / "prd.json"
    prd.write_text(json.dumps({"project": "Agents in the UI", "userStories": [
        {"id": "A-1", "title": "clean", "command": f"{fake} clean.jsonl --delay 0", "priority": 1},
        {"id": "A-2", "title": "failing tool", "command": f"{fake} failing_tool.jsonl --delay 0", "priority": 2}]}))
    r = subprocess.run([*LOOP, "run", str(prd), "--server", server.url, "--run", "ui-agents", "--no-update"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    open_page(browser, f"{server.url}/?run=ui-agents")
    until(browser, lambda: [x["tool"] for x in rows(browser) if x["kind"] == "tool"] == ["Edit", "Bash"],
          message="the last story's timeline")
    marks = [x["mark"] for x in rows(browser) if x["kind"] == "tool"]
    assert marks == ["✗", "✓"]
    assert text(browser, "#agent-run-cost") == "$0.0608"
    Select(browser.find_element(By.ID, "agent-story")).select_by_value("A-1")
    until(browser, lambda: [x["tool"] for x in rows(browser) if x["kind"] == "tool"] == ["Bash", "Read", "Grep"],
          message="the picked story's timeline")
    assert text(browser, "#agent-story-cost") == "$0.0421"
    shot(browser, "agent-picker")
