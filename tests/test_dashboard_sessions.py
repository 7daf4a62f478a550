"""Claude Code sessions in the dashboard (dashboard/sessions.js), in a real headless Chromium against a
real sidecar fed the recorded hook payloads: the run list says each session's state in words, a waiting
one says "waiting for you" with its message and stands out, the tab title counts them, and a session
that starts waiting is one desktop notification; hostile text stays text."""
from __future__ import annotations

import json

import requests

from conftest import wait_for
from helpers import REAL
from loopstream.core.formats.hook_session import project_of
from test_dashboard import browser, js, open_page, shot, until  # noqa: F401  (browser: a fixture)

EVIL = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'


def hook(server, payload):
    r = requests.post(server.url + "/api/hooks/claude", data=json.dumps(payload),
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 201, r.text


def row(d, run):
    return js(d, """const b = [...document.querySelectorAll('#run-list li')]
                      .find(li => li.querySelector('.run-name').textContent === arguments[0]);
                    return b ? {status: b.querySelector('.run-status').textContent,
                                key: b.querySelector('.run-status').dataset.status,
                                waiting: b.hasAttribute('data-waiting'),
                                task: b.querySelector('.run-task').textContent} : null;""", run)


def test_sessions_in_the_run_list_the_title_count_and_one_notification_per_wait(browser, server):
    browser.execute_cdp_cmd("Browser.grantPermissions", {"origin": server.url, "permissions": ["notifications"]})
    items = [json.loads(line) for line in (REAL / "hooks-interactive.jsonl").read_text().splitlines()]
    sid = items[0]["session_id"]
    try:
        open_page(browser, server.url)
        js(browser, """window.__shown = [];
            const Real = window.Notification;
            window.Notification = class extends Real {
              constructor(title, options) { super(title, options); window.__shown.push([title, options.body]); } };
            Object.defineProperty(document, 'hidden', {get: () => true, configurable: true});""")
        for p in items[:3]:                                  # started, a prompt, a tool call: working
            hook(server, p)
        until(browser, lambda: (row(browser, sid) or {}).get("status") == "working", message="working")
        assert row(browser, sid) == {"status": "working", "key": "working", "waiting": False, "task": "interactive"}
        for p in items[3:5]:                                 # PermissionRequest, then its Notification: one wait
            hook(server, p)
        until(browser, lambda: (row(browser, sid) or {}).get("task", "").endswith("Claude needs your permission"),
              message="the notification's message")
        assert row(browser, sid) == {"status": "waiting for you", "key": "waiting", "waiting": True,
                                     "task": "interactive — Claude needs your permission"}
        until(browser, lambda: browser.title.startswith("1 waiting · "), message="the title's count")
        other = {**items[0], "session_id": "evil-session", "cwd": "/src/" + EVIL}
        hook(server, other)
        hook(server, {**items[4], "session_id": "evil-session", "message": EVIL})
        until(browser, lambda: browser.title.startswith("2 waiting · "), message="two waiting")
        until(browser, lambda: (row(browser, "evil-session") or {}).get("task", "").endswith(EVIL),
              message="the second session's row (drawn in its own frame, after the title)")
        assert js(browser, "return window.pwned") is None
        js(browser, "[...document.querySelectorAll('#run-list li')].find(li => li.querySelector('.run-name')"
                    ".textContent === arguments[0]).querySelector('button').click()", sid)
        until(browser, lambda: js(browser, "return document.getElementById('run-session').textContent") ==
              "Claude Code session in /tmp/loop-agents-demo/claude/interactive · waiting for you: "
              "Claude needs your permission · claude-opus-5-5", message="the session's line")
        assert js(browser, "return document.getElementById('run-status').textContent") == "waiting for you"
        assert js(browser, "return ['pause', 'resume', 'stop'].map(id => document.getElementById(id).hidden)") == \
            [True, True, True]                                # Claude Code does not listen to loop's control
        shot(browser, "sessions-waiting")
        for p in items[5:]:                                   # approved, done, idle prompt (a new wait), /exit
            hook(server, p)
        until(browser, lambda: (row(browser, sid) or {}).get("status") == "ended", message="the session's end")
        until(browser, lambda: browser.title.startswith("1 waiting · "), message="one left waiting")
        shown = wait_for(lambda: (lambda s: s if len(s) >= 3 else None)(js(browser, "return window.__shown")), 15,
                         message="the notifications")
        assert shown == [["Claude needs you in interactive", "Claude needs your permission to use Bash: rm -rf build"],
                         [f"Claude needs you in {project_of(other['cwd'])}", EVIL],
                         ["Claude needs you in interactive", "Claude is waiting for your input"]]
    finally:
        browser.get("about:blank")
