"""The dashboard's agent panel in a real headless Chromium against a real sidecar: a subagent's calls nested
under the Task call that started it (collapsed, with a count), the subagent named in the current tool's line,
and an agent going in circles warned of in the panel and on its story, with hostile text kept as text."""
from __future__ import annotations

import subprocess

from selenium.webdriver.common.by import By

from conftest import wait_for
from helpers import AGENTS
from test_dashboard import LOOP, browser, js, open_page, shot, text, until  # noqa: F401  (browser: a fixture)

EVIL = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'

ROWS = """
const row = (li) => ({kind: li.dataset.kind, status: li.dataset.status, tool: li.querySelector('.tool').textContent,
  summary: li.querySelector(".summary").textContent, shown: li.checkVisibility()});
return [...document.querySelectorAll('#agent-timeline > li')].map(li => {
  const sub = li.querySelector(':scope > details.sub');
  return {...row(li), sub: sub && !sub.hidden ? {open: sub.open, count: sub.querySelector('.sub-count').textContent,
    rows: [...sub.querySelectorAll(':scope > .sub-rows > li')].map(row)} : null};
});"""


def test_a_subagents_calls_are_nested_under_its_task_call_collapsed_with_a_count(browser, server):
    fake = f"{LOOP[0]} {AGENTS / 'fake_claude.py'} subagents.jsonl --delay 0"
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {fake} | {' '.join(LOOP)} adapt claude --server {server.url} "
                                      "--run ui-tree --story T-1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: server.get("/api/runs/ui-tree").json().get("cost_usd"), 10, message="the agent's result")
    open_page(browser, f"{server.url}/?run=ui-tree")
    until(browser, lambda: [x["tool"] for x in js(browser, ROWS) if x["kind"] == "tool"] == ["Task", "Task", "Read"],
          message="the two Task calls and the agent's own Read at the top")
    search, tests, ghost = [x for x in js(browser, ROWS) if x["kind"] == "tool"]
    assert search["sub"] == {"open": False, "count": "2 tool calls · done", "rows": search["sub"]["rows"]}
    assert [(x["tool"], x["summary"], x["shown"]) for x in search["sub"]["rows"] if x["kind"] == "tool"] == [
        ("Grep", "def login in src", False), ("Read", "src/auth.py", False)]        # collapsed by default
    assert tests["sub"]["count"] == "3 tool calls · failed" and tests["status"] == "failed"
    assert [x["kind"] for x in tests["sub"]["rows"]] == ["tool", "text", "tool", "tool", "looping"]
    assert tests["sub"]["rows"][-1]["summary"] == "Looping: Bash pytest -q tests/test_auth.py ×3"
    assert ghost["sub"] is None and ghost["summary"] == "README.md"               # an unknown parent: kept flat
    browser.find_elements(By.CSS_SELECTOR, "#agent-timeline > li > details.sub:not([hidden]) > summary")[1].click()
    until(browser, lambda: all(x["shown"] for x in js(browser, ROWS)[3]["sub"]["rows"]), message="opened")
    assert js(browser, ROWS)[3]["sub"]["open"] is True and js(browser, ROWS)[2]["sub"]["open"] is False
    shot(browser, "agent-subagents-open")


def test_looping_is_warned_of_in_the_panel_and_on_the_story_and_the_subagent_at_work_is_named(browser, server):
    run = "ui-circles"

    def call(n, tool, summary, **more):
        return {"type": "tool_call", "run": run, "data": {"story_id": "L-1", "tool": tool, "id": f"c{n}",
                                                          "summary": summary, **more}}

    server.post([{"type": "task_started", "run": run, "data": {"task_name": "Circles", "story_count": 1}},
                 {"type": "story_started", "run": run, "data": {"story_id": "L-1", "title": "reports", "attempt": 1}},
                 call(1, "Task", "Look", subagent_type="Explore", description="Find " + EVIL),
                 call(2, EVIL, EVIL, parent_id="c1"), call(3, EVIL, EVIL, parent_id="c1", repeat=2),
                 call(4, EVIL, EVIL, parent_id="c1", repeat=3),
                 {"type": "agent_looping", "run": run, "data": {"story_id": "L-1", "tool": EVIL, "summary": EVIL,
                                                                "repeats": 3, "parent_id": "c1"}}])
    open_page(browser, f"{server.url}/?run={run}")
    until(browser, lambda: browser.find_element(By.ID, "agent-looping").is_displayed(), message="the looping warning")
    assert text(browser, "#agent-looping") == f"⚠ Looping: {EVIL} {EVIL} ×3"
    warn = "#stories li .story-warn"
    until(browser, lambda: browser.find_element(By.CSS_SELECTOR, warn).is_displayed(), message="the story's warning")
    assert text(browser, warn) == f"⚠ Looping: {EVIL} {EVIL} ×3"
    assert text(browser, "#agent-now").startswith(f"Running Explore “Find {EVIL}” › {EVIL} {EVIL} · ")
    server.post([call(5, EVIL, EVIL, parent_id="c1", repeat=4)])
    until(browser, lambda: text(browser, "#agent-looping").endswith("×4"), message="the streak going on")
    shot(browser, "agent-looping")
    assert js(browser, "return document.querySelectorAll('#agent img, #agent script, #stories img').length") == 0
    assert js(browser, "return window.pwned === undefined")

    server.post([call(6, "Read", "a.py", parent_id="c1")])                     # another call: no longer looping
    until(browser, lambda: not browser.find_element(By.ID, "agent-looping").is_displayed(), message="cleared")
    assert not browser.find_element(By.CSS_SELECTOR, warn).is_displayed()
