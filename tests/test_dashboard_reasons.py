"""The dashboard says why, and forgets what is no longer true (real Chromium, real sidecar): a stream
the sidecar refused shows the sidecar's reason (a 429 names the cap and what to do), and a run that
could not be loaded stops being an error once it appears."""
from __future__ import annotations

import http.client

from conftest import wait_for
from test_dashboard import browser, open_page, text, until  # noqa: F401 — the module's Chromium

# The first GET of /api/runs/later fails as a sidecar away would (a 503); every other request is real.
FAIL_FIRST_LOAD = """
const realFetch = window.fetch;
let failed = false;
window.fetch = (input, init) => {
  if (!failed && String(input).includes("/api/runs/later")) {
    failed = true;
    return Promise.resolve(new Response(JSON.stringify({ error: "backend_unavailable",
      message: "the shared store is unreachable" }), { status: 503, headers: { "Content-Type": "application/json" } }));
  }
  return realFetch(input, init);
};
"""


def test_a_refused_stream_shows_the_sidecars_reason(browser, make_server):  # noqa: F811
    server = make_server("--rate", "0", "--heartbeat", "1", "--max-streams-per-client", "1")
    held = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    held.request("GET", "/stream/progress")
    assert held.getresponse().status == 200
    try:
        wait_for(lambda: server.get("/healthz").json()["subscribers"] == 1, message="the held stream")
        open_page(browser, server.url + "/")
        until(browser, lambda: "--max-streams-per-client" in (text(browser, "#outage") or ""),
              message="the banner to name the cap")
        banner = text(browser, "#outage")
        assert "The sidecar said:" in banner and "already holds 1 streams" in banner and "close other" in banner
    finally:
        held.close()
    until(browser, lambda: browser.execute_script("return document.getElementById('outage').hidden"), timeout=40,
          message="the banner to go once the stream opens")


def test_could_not_load_is_forgotten_once_the_run_appears(browser, make_server):  # noqa: F811
    server = make_server("--rate", "0", "--heartbeat", "1")
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": FAIL_FIRST_LOAD})
    try:
        open_page(browser, server.url + "/?run=later")
        until(browser, lambda: "Could not load later" in (text(browser, "#action-state") or ""),
              message="the failed load to be said")
        server.post({"type": "task_started", "run": "later", "data": {"task_name": "Later"}})
        until(browser, lambda: text(browser, "#run-title") == "Later", message="the run to appear")
        until(browser, lambda: "Could not load" not in (text(browser, "#action-state") or ""),
              message="the stale error to go")
    finally:
        browser.execute_cdp_cmd("Page.navigate", {"url": "about:blank"})
