"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, via selenium)
against a real sidecar. Screenshots of the main states go to artifacts/."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from conftest import ROOT, Server, free_port, wait_for
from helpers import LOOP

ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Chromium and chromedriver are required (bin/test installs them)"
    downloads = tmp_path_factory.mktemp("downloads")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--window-size=1280,1100",
                f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    d = webdriver.Chrome(service=Service(driver), options=opts)
    d.downloads = downloads
    yield d
    d.quit()


def until(d, predicate, timeout=20, message="the page"):
    return WebDriverWait(d, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda _: predicate(), message=message)


def text(d, css):
    """The element's rendered text, read in the page (rows are redrawn, so handles go stale)."""
    return d.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : null;", css)


def statuses(d, css):
    return d.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.dataset.status);", css)


def status(d):
    return d.find_element(By.ID, "connection").get_attribute("data-state")


def shot(d, name):
    ARTIFACTS.mkdir(exist_ok=True)
    d.save_screenshot(str(ARTIFACTS / f"dashboard-{name}.png"))


def js(d, script, *args):
    return d.execute_script(script, *args)


def page_snapshot(d, run):
    return js(d, "const s = window.loopDashboard.runs.get(arguments[0]); return s ? JSON.stringify(s) : null;", run)


def open_page(d, url):
    d.get(url)
    until(d, lambda: status(d) in ("live", "polling"), message="the connection indicator to settle")


def test_a_run_appears_live_with_its_checklist_ticking(browser, server):
    open_page(browser, server.url + "/")
    assert status(browser) == "live" and text(browser, "#connection") == "Live"
    server.post([{"type": "task_started", "run": "live-1", "data": {"task_name": "Live task", "story_count": 2}},
                 {"type": "story_started", "run": "live-1",
                  "data": {"story_id": "US-1", "title": "Login", "acceptance_criteria": ["first", "second", "third"]}}])
    until(browser, lambda: text(browser, "#run-title") == "Live task", message="the run to appear")
    assert text(browser, "#run-list .badge.live").endswith("Live")
    assert js(browser, "return getComputedStyle(document.querySelector('#run-list .badge.live')).animationName") == "pulse"

    def marks():
        return statuses(browser, "#checklist li")

    until(browser, lambda: marks() == ["running", "pending", "pending"])
    server.post({"type": "ac_completed", "run": "live-1", "data": {"story_id": "US-1", "ac_index": 0}})
    until(browser, lambda: marks() == ["passed", "running", "pending"], message="the first criterion to tick")
    assert text(browser, "#checklist li .mark") == "✅"
    server.post({"type": "ac_failed", "run": "live-1", "data": {"story_id": "US-1", "ac_index": 1, "error": "exit 2"}})
    until(browser, lambda: marks() == ["passed", "failed", "running"])
    assert "exit 2" in text(browser, "#checklist")
    server.post({"type": "output", "run": "live-1", "data": {"story_id": "US-1", "text": "compiling…\n"}})
    until(browser, lambda: "compiling…" in text(browser, "#output"))
    assert text(browser, "#c-running") == "1" and text(browser, "#c-queued") == "1"
    shot(browser, "live")
    server.post([{"type": "story_completed", "run": "live-1", "data": {"story_id": "US-1", "status": "failed"}},
                 {"type": "task_completed", "run": "live-1", "data": {}}])
    until(browser, lambda: browser.find_element(By.ID, "notice").is_displayed(), message="the completion notice")
    assert text(browser, "#notice").startswith("Run failed")
    until(browser, lambda: not browser.find_elements(By.CSS_SELECTOR, "#run-list .badge.live:not([hidden])"),
          message="the Live badge to go")


def test_stop_from_the_ui_reaches_a_running_loop_run_and_ends_it(browser, server, tmp_path):
    prd = tmp_path / "prd.json"
    prd.write_text(json.dumps({"project": "Stoppable", "userStories": [
        {"id": "S1", "title": "sleeps", "command": "echo started; sleep 60", "acceptanceCriteria": ["never"]},
        {"id": "S2", "title": "never runs", "command": "true", "priority": 2}]}))
    proc = subprocess.Popen([*LOOP, "run", str(prd), "--server", server.url, "--run", "ui-stop", "--no-update",
                             "--grace", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        open_page(browser, server.url + "/?run=ui-stop")
        until(browser, lambda: "started" in text(browser, "#output"), message="the story's output")
        assert browser.find_element(By.ID, "resume").get_attribute("disabled") is not None   # nothing to resume
        browser.find_element(By.ID, "stop").click()
        dialog = browser.find_element(By.ID, "stop-dialog")
        until(browser, lambda: dialog.is_displayed(), message="the confirmation dialog")
        browser.find_element(By.ID, "stop-reason").send_keys("wrong branch")
        shot(browser, "stop-dialog")
        browser.find_element(By.ID, "stop-confirm").click()
        assert proc.wait(30) == 130
        until(browser, lambda: text(browser, "#run-status") == "stopped", message="the run to show stopped")
        assert text(browser, "#notice").startswith("Run stopped") and text(browser, "#notice").endswith(
            "Reason: wrong branch")
        events = server.get("/api/runs/ui-stop/transcript").json()["events"]
        assert events[-1]["type"] == "task_stopped" and events[-1]["data"]["reason"] == "wrong branch"
        until(browser, lambda: "task_stopped" in text(browser, "#transcript"), message="the transcript")
    finally:
        proc.kill()


class CuttableProxy:
    """An HTTP proxy in front of the sidecar that can cut the stream: one request per
    connection, and while the stream is "down" /stream/progress is refused with 503."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.port = free_port()
        self.stream_down = False
        self.streams: list[socket.socket] = []
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def cut_stream(self):
        with self.lock:
            self.stream_down = True
            for s in self.streams:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.streams.clear()

    def restore_stream(self):
        self.stream_down = False

    def close(self):
        self.sock.close()
        self.cut_stream()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client):
        with client:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = client.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            length = next((int(ln.split(b":", 1)[1]) for ln in lines if ln.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += client.recv(65536)
            is_stream = lines[0].split(b" ")[1].startswith(b"/stream/progress")
            if is_stream and self.stream_down:
                client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            headers = [ln for ln in lines[1:] if not ln.lower().startswith(b"connection:")]
            request = b"\r\n".join([lines[0], *headers, b"Connection: close"]) + b"\r\n\r\n" + body
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:   # the sidecar is gone (the test is over)
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            with up:
                if is_stream:
                    with self.lock:
                        self.streams += [client, up]
                up.sendall(request)
                while True:
                    try:
                        chunk = up.recv(65536)
                        if not chunk:
                            return
                        client.sendall(chunk)
                    except OSError:
                        return


def test_losing_the_stream_switches_to_polling_and_back_without_loss(browser, server):
    proxy = CuttableProxy(server.port)
    run = "flaky"
    expected = []

    def emit(lo, hi):
        for i in range(lo, hi):
            server.post({"type": "output", "run": run, "data": {"stream": "stdout", "text": f"line-{i}\n"}})
            expected.append(f"line-{i}\n")

    server.post({"type": "task_started", "run": run, "data": {"task_name": "Flaky network"}})
    open_page(browser, proxy.url + f"/?run={run}")
    assert status(browser) == "live"
    emit(0, 5)
    until(browser, lambda: "line-4" in text(browser, "#output"))
    proxy.cut_stream()
    until(browser, lambda: status(browser) == "polling", message="the switch to polling")
    assert text(browser, "#connection") == "Polling"
    shot(browser, "polling")
    emit(5, 12)
    until(browser, lambda: "line-11" in text(browser, "#output"), message="events to arrive by polling")
    proxy.restore_stream()
    until(browser, lambda: status(browser) == "live", timeout=40, message="the stream to come back")
    emit(12, 18)
    until(browser, lambda: "line-17" in text(browser, "#output"))
    snap = json.loads(page_snapshot(browser, run))
    assert snap["output"] == "".join(expected)                # nothing missed, nothing twice
    assert snap["event_count"] == server.get(f"/api/runs/{run}").json()["event_count"]
    browser.get("about:blank")
    proxy.close()


def test_forced_polling_transport(browser, server):
    server.post({"type": "task_started", "run": "polled", "data": {"task_name": "Polled"}})
    open_page(browser, server.url + "/?transport=poll&run=polled")
    assert status(browser) == "polling"
    server.post({"type": "progress", "run": "polled", "data": {"percent": 42}})
    until(browser, lambda: text(browser, "#percent") == "42%", message="a polled update")
    assert js(browser, "return window.loopDashboard.connection.es") is None


def test_a_late_joiner_sees_the_full_state_at_once(browser, make_server):
    server = make_server("--rate", "0", "--buffer", "10")
    events = [{"type": "task_started", "run": "late", "data": {"task_name": "Late", "story_count": 3}}]
    for n in range(3):
        events += [{"type": "story_started", "run": "late",
                    "data": {"story_id": f"S{n}", "title": f"story {n}", "acceptance_criteria": ["a", "b"]}},
                   {"type": "output", "run": "late", "data": {"story_id": f"S{n}", "text": f"out-{n}\n"}},
                   {"type": "ac_completed", "run": "late", "data": {"story_id": f"S{n}", "ac_index": 0}}]
        if n < 2:
            events.append({"type": "story_completed", "run": "late", "data": {"story_id": f"S{n}", "status": "passed"}})
    server.post(events)     # 12 events, more than the buffer holds
    open_page(browser, server.url + "/?run=late")
    until(browser, lambda: text(browser, "#run-title") == "Late")
    assert text(browser, "#c-completed") == "2 / 3" and text(browser, "#c-running") == "1"
    assert text(browser, "#output") == "out-0\nout-1\nout-2\n"
    assert statuses(browser, "#checklist li") == ["passed", "running"]
    assert json.loads(page_snapshot(browser, "late")) == server.get("/api/runs/late").json()


def test_a_finished_run_shows_its_transcript_and_exports_it(browser, server):
    server.post([{"type": "task_started", "run": "done", "data": {"task_name": "Finished"}},
                 {"type": "deploy.step", "run": "done", "data": {"message": "uploaded"}},
                 {"type": "task_completed", "run": "done", "data": {}}])
    open_page(browser, server.url + "/?run=done")
    until(browser, lambda: "deploy.step" in text(browser, "#transcript"), message="the transcript")
    assert "3 events" in text(browser, "#transcript-note")
    shot(browser, "finished")
    browser.find_element(By.ID, "export").click()
    target = browser.downloads / "loop-done-transcript.json"
    wait_for(lambda: target.exists() and target.stat().st_size > 0, message="the export download")
    exported = json.loads(target.read_text())
    assert [e["type"] for e in exported["events"]] == ["task_started", "deploy.step", "task_completed"]


PAYLOADS = ['<img src=x onerror="window.__xss=1">', "<script>window.__xss=1</script>",
            '"><svg onload="window.__xss=1">']


def test_event_text_is_shown_as_text_and_never_executed(browser, server):
    p = " ".join(PAYLOADS)
    server.post([
        {"type": "task_started", "run": "xss", "data": {"task_name": p, "story_count": 1,
                                                          "stories": [{"id": "X<1>", "title": p}]}},
        {"type": "story_started", "run": "xss", "data": {"story_id": "X<1>", "title": p, "acceptance_criteria": [p, p]}},
        {"type": "ac_failed", "run": "xss", "data": {"story_id": "X<1>", "ac_index": 0, "error": p}},
        {"type": "output", "run": "xss", "data": {"story_id": "X<1>", "text": p + "\n"}},
        {"type": "error_occurred", "run": "xss", "data": {"error_type": p, "error_message": p}},
        {"type": "custom.note", "run": "xss", "data": {"message": p}},
    ])
    open_page(browser, server.url + "/?run=xss")
    until(browser, lambda: PAYLOADS[0] in text(browser, "#output"))
    time.sleep(0.5)   # give any injected handler the chance to run
    assert js(browser, "return window.__xss") is None
    assert text(browser, "#run-title") == p
    assert PAYLOADS[1] in text(browser, "#checklist") and PAYLOADS[2] in text(browser, "#stories")
    assert PAYLOADS[0] in text(browser, "#log")
    panel = browser.find_element(By.ID, "panel")
    assert not panel.find_elements(By.CSS_SELECTOR, "#panel img, #panel svg, #panel script")
    assert not browser.find_elements(By.CSS_SELECTOR, "#run-list img, #run-list script")


def test_a_token_in_the_fragment_is_used_for_the_stream_and_control(browser, make_server):
    server = make_server("--rate", "0", "--token", "s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    server.post({"type": "task_started", "run": "guarded", "data": {"task_name": "Guarded"}}, headers=auth)
    open_page(browser, server.url + "/?run=guarded#token=s3cret")
    assert status(browser) == "live"
    until(browser, lambda: text(browser, "#run-title") == "Guarded")
    browser.find_element(By.ID, "pause").click()
    until(browser, lambda: "pause sent" in text(browser, "#action-state"), message="the pause request")
    kinds = [e["type"] for e in server.get("/api/events?token=s3cret").json()["events"]]
    assert "pause_requested" in kinds


def test_opened_from_another_origin_with_server_param(browser, make_server):
    page_host = make_server("--rate", "0")
    api = make_server("--rate", "0", "--cors", page_host.url)
    api.post({"type": "task_started", "run": "remote", "data": {"task_name": "Remote"}})
    open_page(browser, page_host.url + f"/?server={api.url}/&run=remote")
    assert status(browser) == "live"
    api.post({"type": "progress", "run": "remote", "data": {"percent": 30}})
    until(browser, lambda: text(browser, "#percent") == "30%", message="a cross-origin update")


def test_keyboard_reaches_runs_and_controls_and_status_is_not_colour_alone(browser, server):
    server.post([{"type": "task_started", "run": "kb-a", "data": {"task_name": "A"}},
                 {"type": "task_started", "run": "kb-b", "data": {"task_name": "B"}}])
    open_page(browser, server.url + "/")
    until(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#run-list button")) >= 2)
    body = browser.find_element(By.TAG_NAME, "body")
    focused = set()
    for _ in range(12):
        body.send_keys(Keys.TAB) if not focused else browser.switch_to.active_element.send_keys(Keys.TAB)
        focused.add(browser.switch_to.active_element.get_attribute("id") or
                    browser.switch_to.active_element.get_attribute("class"))
    assert "run-row" in focused and "stop" in focused
    target = [b for b in browser.find_elements(By.CSS_SELECTOR, "#run-list button") if "kb-a" in b.text][0]
    target.send_keys(Keys.ENTER)
    until(browser, lambda: text(browser, "#run-title") == "A", message="Enter to select a run")
    assert text(browser, "#connection") == "Live"          # a word, not only a coloured dot
    assert browser.find_element(By.ID, "connection").get_attribute("aria-live") == "polite"
    assert "running" in text(browser, "#run-list")


def test_reads_well_at_phone_width(browser, server):
    server.post({"type": "task_started", "run": "phone", "data": {"task_name": "On a phone", "story_count": 1}})
    browser.set_window_size(390, 900)
    try:
        open_page(browser, server.url + "/?run=phone")
        until(browser, lambda: text(browser, "#run-title") == "On a phone")
        overflow = js(browser, "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0
        shot(browser, "phone")
    finally:
        browser.set_window_size(1280, 1100)


def test_served_from_an_installed_wheel(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
                   check=True, timeout=300)
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([py, "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, timeout=300)
    where = subprocess.run([py, "-c", "import loopstream; print(loopstream.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv))                       # the wheel's copy, not the checkout
    server = Server(tmp_path, args=["--no-history"])
    server.env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    cmd = [str(py), "-m", "loopstream", "serve", "--port", str(server.port), "--no-history"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import requests

        def up():
            try:
                return requests.get(server.url + "/", timeout=1)
            except (requests.ConnectionError, requests.Timeout):   # not listening yet, or its worker not up yet
                return None

        r = wait_for(up, 30, message="the wheel's sidecar")
        assert r.status_code == 200 and "<title>loop</title>" in r.text
        assert requests.get(server.url + "/app.js", timeout=5).status_code == 200
        for module in sorted((ROOT / "dashboard").glob("*.js")):      # every module the page imports
            assert requests.get(f"{server.url}/{module.name}", timeout=5).status_code == 200, module.name
        assert requests.get(server.url + "/state.js", timeout=5).headers["Content-Type"].startswith(
            ("text/javascript", "application/javascript"))
    finally:
        proc.terminate()
        proc.wait(10)


def test_output_follows_the_end_pauses_when_scrolled_up_and_notes_truncation(browser, server):
    run = "noisy"
    server.post({"type": "task_started", "run": run, "data": {"task_name": "Noisy"}})
    server.post([{"type": "output", "run": run, "data": {"text": f"line {i}\n"}} for i in range(200)])
    open_page(browser, server.url + f"/?run={run}")
    until(browser, lambda: "line 199" in text(browser, "#output"))
    at_bottom = "const o = document.getElementById('output'); return o.scrollTop + o.clientHeight >= o.scrollHeight - 4;"
    until(browser, lambda: js(browser, at_bottom), message="the output to follow the end")
    js(browser, "const o = document.getElementById('output'); o.scrollTop = 0; o.dispatchEvent(new Event('scroll'));")
    until(browser, lambda: browser.find_element(By.ID, "follow").is_displayed(), message="the Follow button")
    server.post({"type": "output", "run": run, "data": {"text": "line 200\n"}})
    until(browser, lambda: "line 200" in text(browser, "#output"))
    assert js(browser, "return document.getElementById('output').scrollTop") == 0     # stays where the reader is
    browser.find_element(By.ID, "follow").click()
    until(browser, lambda: js(browser, at_bottom) and not browser.find_element(By.ID, "follow").is_displayed())
    assert not browser.find_element(By.ID, "truncated").is_displayed()
    big = "x" * 3900 + "\n"
    for _ in range(2):
        server.post([{"type": "output", "run": run, "data": {"text": big}} for _ in range(14)])
    until(browser, lambda: browser.find_element(By.ID, "truncated").is_displayed(), message="the truncation note")
    browser.find_element(By.ID, "copy").click()
    until(browser, lambda: "Copied 100000 characters" in text(browser, "#action-state")
          or "Output selected" in text(browser, "#action-state"), message="the copy to report")


def test_parallel_stories_show_as_cards(browser, server):
    server.post([{"type": "task_started", "run": "jobs", "data": {"task_name": "Parallel", "story_count": 3}},
                 {"type": "story_started", "run": "jobs", "data": {"story_id": "J1", "title": "one", "acceptance_criteria": ["a"]}},
                 {"type": "story_started", "run": "jobs", "data": {"story_id": "J2", "title": "two", "acceptance_criteria": ["b"]}},
                 {"type": "output", "run": "jobs", "data": {"story_id": "J1", "text": "working on one\n"}}])
    open_page(browser, server.url + "/?run=jobs")
    until(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, "#cards .card")) == 2, message="two cards")
    assert "working on one" in text(browser, "#cards")
    shot(browser, "jobs")
    server.post({"type": "story_completed", "run": "jobs", "data": {"story_id": "J1", "status": "passed"}})
    until(browser, lambda: not browser.find_elements(By.CSS_SELECTOR, "#cards .card"), message="cards to go at one running")


def test_a_failed_control_request_says_why(browser, make_server, tmp_path):
    server = make_server("--rate", "0")
    server.post({"type": "task_started", "run": "gone", "data": {"task_name": "Server goes away"}})
    open_page(browser, server.url + "/?run=gone")
    until(browser, lambda: text(browser, "#run-title") == "Server goes away")
    server.stop()
    browser.find_element(By.ID, "pause").click()
    until(browser, lambda: "Could not pause gone" in text(browser, "#action-state"), message="the error")
    assert "error" in browser.find_element(By.ID, "action-state").get_attribute("class")
    until(browser, lambda: status(browser) == "reconnecting", message="the indicator to say Reconnecting")
    browser.get("about:blank")


# -- issue 13: many tabs, input during live updates, honest numbers, staying put, being told -------------

def tab_state(d, run):
    return js(d, "const s = window.loopDashboard?.runs.get(arguments[0]);"
                 "return s ? {output: s.output, count: s.event_count, role: window.loopDashboard.role} : null;", run)


def healthz_subscribers(server):
    return server.get("/healthz").json()["subscribers"]


def close_other_tabs(d, keep):
    for handle in d.window_handles:
        if handle != keep:
            d.switch_to.window(handle)
            d.close()
    d.switch_to.window(keep)


def test_eight_tabs_share_one_stream_and_a_new_leader_takes_over(browser, server):
    run = "tabs"
    server.post({"type": "task_started", "run": run, "data": {"task_name": "Many tabs", "story_count": 1}})
    url = server.url + f"/?run={run}"
    open_page(browser, url)
    for _ in range(7):
        browser.switch_to.new_window("tab")
        browser.get(url)
    tabs = list(browser.window_handles)
    assert len(tabs) >= 8
    expected = []

    def emit(lo, hi):
        for i in range(lo, hi):
            server.post({"type": "output", "run": run, "data": {"text": f"line-{i}\n"}})
            expected.append(f"line-{i}\n")

    def all_have(handles, marker):
        for h in handles:
            browser.switch_to.window(h)
            until(browser, lambda: marker in (tab_state(browser, run) or {}).get("output", ""), timeout=20,
                  message=f"tab {h} to show {marker.strip()}")
            until(browser, lambda: marker in text(browser, "#output"), message="the tab's page to show it")

    try:
        emit(0, 5)
        all_have(tabs, "line-4")
        roles = []
        for h in tabs:
            browser.switch_to.window(h)
            roles.append(tab_state(browser, run)["role"])
        assert sorted(roles) == ["follower"] * (len(tabs) - 1) + ["leader"]
        wait_for(lambda: healthz_subscribers(server) == 1, message="one subscriber for all the tabs")
        leader = tabs[roles.index("leader")]
        browser.switch_to.window(leader)
        browser.close()                                     # the leading tab goes away
        rest = [h for h in tabs if h != leader]
        emit(5, 10)                                         # while nobody holds the stream
        browser.switch_to.window(rest[0])

        def one_leader():
            found = []
            for h in rest:
                browser.switch_to.window(h)
                found.append(tab_state(browser, run)["role"])
            return found.count("leader") == 1

        wait_for(one_leader, timeout=10, interval=0.2, message="another tab to take the lead")
        emit(10, 15)
        all_have(rest, "line-14")
        for h in rest:                                      # nothing missed, nothing twice, in every tab
            browser.switch_to.window(h)
            state = tab_state(browser, run)
            assert state["output"] == "".join(expected)
            assert state["count"] == server.get(f"/api/runs/{run}").json()["event_count"]
        wait_for(lambda: healthz_subscribers(server) == 1, message="still one subscriber")
    finally:
        close_other_tabs(browser, browser.window_handles[0])
        browser.get("about:blank")


def test_focus_hover_a_held_click_and_a_selection_survive_live_updates(browser, server):
    from selenium.webdriver.common.action_chains import ActionChains

    server.post([{"type": "task_started", "run": "busy", "data": {"task_name": "Busy", "story_count": 3}},
                 {"type": "story_started", "run": "busy", "data": {"story_id": "B1", "acceptance_criteria": ["x"]}},
                 {"type": "output", "run": "busy", "data": {"text": "first line to select\n"}},
                 {"type": "task_started", "run": "calm", "data": {"task_name": "Calm"}},
                 {"type": "task_started", "run": "other", "data": {"task_name": "Other"}}])
    open_page(browser, server.url + "/?run=busy")
    until(browser, lambda: "first line" in text(browser, "#output"))
    js(browser, """
        window.__removed = 0;
        new MutationObserver((ms) => { for (const m of ms) for (const n of m.removedNodes) window.__removed += n.nodeType === 1; })
          .observe(document.getElementById('run-list'), {childList: true, subtree: true});
        const node = document.getElementById('output').firstElementChild.firstChild;
        const range = document.createRange(); range.setStart(node, 0); range.setEnd(node, 10);
        getSelection().removeAllRanges(); getSelection().addRange(range);
        const row = [...document.querySelectorAll('#run-list button')].find(b => b.textContent.includes('calm'));
        row.dataset.mark = 'focused'; row.focus();""")
    stop = threading.Event()

    def stream():
        i = 0
        while not stop.is_set():
            server.post([{"type": "output", "run": "busy", "data": {"text": f"tick {i}\n"}},
                         {"type": "progress", "run": "calm", "data": {"percent": i % 100}}])
            i += 1
            stop.wait(0.05)

    worker = threading.Thread(target=stream, daemon=True)
    worker.start()
    try:
        until(browser, lambda: "tick 5" in text(browser, "#output"), message="the stream to flow")
        deadline = time.monotonic() + 3                     # three seconds of live updates
        while time.monotonic() < deadline:
            assert js(browser, "return document.activeElement.dataset.mark") == "focused"
            time.sleep(0.2)
        assert js(browser, "return getSelection().toString()") == "first line"      # the selection is intact
        assert js(browser, "return window.__removed") == 0                           # no element was rebuilt
        browser.switch_to.active_element.send_keys(Keys.ENTER)
        until(browser, lambda: text(browser, "#run-title") == "Calm", message="Enter to select the focused row")
        other = [b for b in browser.find_elements(By.CSS_SELECTOR, "#run-list button") if "other" in b.text][0]
        ActionChains(browser).move_to_element(other).click_and_hold().perform()      # a click in progress …
        until(browser, lambda: js(browser, "return document.querySelector('#run-list button:hover') !== null"))
        time.sleep(1)                                       # … while updates keep coming
        assert "other" in js(browser, "return document.querySelector('#run-list button:hover').textContent")
        ActionChains(browser).release().perform()
        until(browser, lambda: text(browser, "#run-title") == "Other", message="the held click to land on its run")
    finally:
        stop.set()
        worker.join(5)


def test_output_is_appended_not_reset(browser, server):
    server.post([{"type": "task_started", "run": "app", "data": {"task_name": "Appender"}},
                 {"type": "output", "run": "app", "data": {"text": "one\n"}}])
    open_page(browser, server.url + "/?run=app")
    until(browser, lambda: text(browser, "#output") == "one\n")
    js(browser, "window.__first = document.getElementById('output').firstElementChild.firstChild;")
    server.post([{"type": "output", "run": "app", "data": {"text": f"more {i}\n"}} for i in range(20)])
    until(browser, lambda: "more 19" in text(browser, "#output"))
    assert js(browser, "return document.getElementById('output').firstElementChild.firstChild === window.__first")
    assert text(browser, "#output") == "one\n" + "".join(f"more {i}\n" for i in range(20))
    big = [{"type": "output", "run": "app", "data": {"text": f"{n:04d}" + "y" * 3995 + "\n"}} for n in range(30)]
    server.post(big[:15])
    server.post(big[15:])                                   # past the 100 KB tail: the front is trimmed
    until(browser, lambda: "0029yyy" in text(browser, "#output"))
    same = "const s = window.loopDashboard.runs.get('app'); const o = document.getElementById('output');" \
           "return s.output_truncated && o.textContent === s.output && o.textContent.length === 100000;"
    until(browser, lambda: js(browser, same), message="the trimmed page text to equal the kept tail")
    assert js(browser, "return document.querySelectorAll('#output .seg').length") > 5    # appended in segments


def test_a_stopped_run_shows_where_it_stopped_and_counts_skipped_and_cancelled(browser, server):
    server.post([{"type": "task_started", "run": "halt", "data": {"task_name": "Halted", "story_count": 4}},
                 {"type": "story_completed", "run": "halt", "data": {"story_id": "S1", "status": "passed"}},
                 {"type": "story_completed", "run": "halt", "data": {"story_id": "S2", "status": "skipped"}},
                 {"type": "story_started", "run": "halt", "data": {"story_id": "S3"}},
                 {"type": "task_stopped", "run": "halt", "data": {"reason": "enough"}}])
    open_page(browser, server.url + "/?run=halt")
    until(browser, lambda: text(browser, "#run-status") == "stopped")
    assert text(browser, "#percent") == "50%" and server.get("/api/runs/halt").json()["percent"] == 50
    assert text(browser, "#c-skipped") == "1" and text(browser, "#c-cancelled") == "2"
    assert text(browser, "#stopped-at") == "Stopped at S3, after 2 of 4 stories finished; 2 cancelled."
    assert "1 skipped, 2 cancelled" in text(browser, "#notice")
    shot(browser, "stopped")


def test_the_page_stays_on_the_run_a_person_watches_and_notes_a_new_one(browser, server):
    server.post({"type": "task_started", "run": "watched", "data": {"task_name": "Watched", "story_count": 1}})
    open_page(browser, server.url + "/")
    until(browser, lambda: text(browser, "#run-title") == "Watched", message="the live run picked on load")
    server.post([{"type": "story_completed", "run": "watched", "data": {"story_id": "W", "status": "passed"}},
                 {"type": "task_completed", "run": "watched", "data": {}},
                 {"type": "task_started", "run": "newer", "data": {"task_name": "Newer"}}])
    until(browser, lambda: "New run Newer" in text(browser, "#notices"), message="the new-run notice")
    assert text(browser, "#run-title") == "Watched" and text(browser, "#notice").startswith("Run passed")
    time.sleep(1)                                           # a tick of the 1 s redraw changes nothing
    assert text(browser, "#run-title") == "Watched"
    shot(browser, "new-run-notice")
    browser.find_element(By.CSS_SELECTOR, "#notices .view").click()
    until(browser, lambda: text(browser, "#run-title") == "Newer", message="view to open the new run")
    assert "newer" in browser.current_url and not text(browser, "#notices")


def test_title_favicon_and_screen_reader_announce_the_selected_run(browser, server):
    server.post([{"type": "task_started", "run": "demo", "data": {"task_name": "Demo", "story_count": 4}},
                 {"type": "story_completed", "run": "demo", "data": {"story_id": "A", "status": "passed"}},
                 {"type": "story_completed", "run": "demo", "data": {"story_id": "B", "status": "passed"}}])
    open_page(browser, server.url + "/?run=demo")
    until(browser, lambda: browser.title == "⏳ 2/4 · Demo", message="the progress in the title")
    running_icon = js(browser, "return document.getElementById('favicon').href")
    assert running_icon.startswith("data:image/svg+xml")
    # From here the page draws no frame, as in a hidden tab or a busy browser: title, icon and announcement
    # go with the state as it arrives. (Announced at the next drawn frame, the change was lost whenever
    # no frame came between the page's first sight of the run and its end: a busy machine did that.)
    js(browser, "window.requestAnimationFrame = () => 0;")
    server.post([{"type": "story_completed", "run": "demo", "data": {"story_id": s, "status": "passed"}} for s in "CD"]
                + [{"type": "task_completed", "run": "demo", "data": {}}])
    until(browser, lambda: browser.title == "✅ passed · Demo", message="the outcome in the title")
    assert js(browser, "return document.getElementById('favicon').href") != running_icon
    assert text(browser, "#announce") == "Demo: passed."
    assert browser.find_element(By.ID, "announce").get_attribute("aria-live") == "polite"


def test_stop_dialog_enter_confirms_and_escape_cancels(browser, server):
    server.post({"type": "task_started", "run": "halt-me", "data": {"task_name": "Halt me"}})
    open_page(browser, server.url + "/?run=halt-me")
    until(browser, lambda: text(browser, "#run-title") == "Halt me")
    dialog = browser.find_element(By.ID, "stop-dialog")
    browser.find_element(By.ID, "stop").click()
    until(browser, lambda: dialog.is_displayed())
    browser.find_element(By.ID, "stop-reason").send_keys("not now")
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    until(browser, lambda: not dialog.is_displayed(), message="Escape to close the dialog")
    browser.find_element(By.ID, "stop").click()
    until(browser, lambda: dialog.is_displayed())
    browser.find_element(By.ID, "stop-reason").send_keys("wrong branch" + Keys.ENTER)
    until(browser, lambda: "stop sent" in text(browser, "#action-state"), message="Enter to confirm the stop")
    requested = [e for e in server.get("/api/events").json()["events"] if e["type"] == "stop_requested"]
    assert [e["data"].get("reason") for e in requested] == ["wrong branch"]          # Escape sent nothing


def test_an_outage_banner_says_since_when_and_what_the_page_does(browser, make_server, tmp_path):
    server = make_server("--rate", "0", "--heartbeat", "1")
    proxy = CuttableProxy(server.port)
    try:
        server.post({"type": "task_started", "run": "out", "data": {"task_name": "Outage"}})
        open_page(browser, proxy.url + "/?run=out")
        assert not browser.find_element(By.ID, "outage").is_displayed()
        proxy.cut_stream()
        until(browser, lambda: "The live stream is down since" in text(browser, "#outage"), message="the banner")
        assert "Updates arrive by polling every 2 s" in text(browser, "#outage")
        assert "next stream attempt" in text(browser, "#outage")
        shot(browser, "outage")
        server.stop()
        until(browser, lambda: "The sidecar is unreachable since" in text(browser, "#outage"), timeout=30,
              message="the banner to say the sidecar is gone")
        server.start()
        proxy.restore_stream()
        until(browser, lambda: status(browser) == "live", timeout=60, message="the stream to come back")
        until(browser, lambda: not browser.find_element(By.ID, "outage").is_displayed(), message="the banner to go")
    finally:
        browser.get("about:blank")
        proxy.close()


def test_a_desktop_notification_once_per_run_across_hidden_tabs(browser, server):
    browser.execute_cdp_cmd("Browser.grantPermissions", {"origin": server.url, "permissions": ["notifications"]})
    server.post({"type": "task_started", "run": "ping", "data": {"task_name": "Ping", "story_count": 1}})
    url = server.url + "/?run=ping"
    spy = """window.__shown = [];
        const Real = window.Notification;
        window.Notification = class extends Real {
          constructor(title, options) { super(title, options); window.__shown.push(title); } };
        Object.defineProperty(document, 'hidden', {get: () => true, configurable: true});"""
    open_page(browser, url)
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    open_page(browser, url)
    second = browser.current_window_handle
    try:
        for h in (first, second):
            browser.switch_to.window(h)
            until(browser, lambda: text(browser, "#run-title") == "Ping")
            assert text(browser, "#notify-toggle") == "🔔 Notifications on"
            js(browser, spy)                               # the tab is "hidden": the person looks elsewhere
        server.post([{"type": "story_stalled", "run": "ping", "data": {"story_id": "P", "silent_s": 300}},
                     {"type": "story_completed", "run": "ping", "data": {"story_id": "P", "status": "failed"}},
                     {"type": "task_completed", "run": "ping", "data": {}}])

        def shown():
            out = []
            for h in (first, second):
                browser.switch_to.window(h)
                if (tab_state(browser, "ping") or {}).get("count") != 4:
                    return None
                out += js(browser, "return window.__shown")
            return out if len(out) >= 2 else None

        titles = wait_for(shown, timeout=15, interval=0.2, message="the notifications")
        assert titles == ["Ping: a story stalled", "Ping: failed"]     # one of each across the two tabs
    finally:
        close_other_tabs(browser, first)
        browser.get("about:blank")


def test_without_web_locks_each_tab_streams_by_itself(browser, server):
    server.post({"type": "task_started", "run": "solo", "data": {"task_name": "Solo"}})
    script = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                     {"source": "delete Navigator.prototype.locks;"})
    first = browser.current_window_handle
    try:
        open_page(browser, server.url + "/?run=solo")
        browser.switch_to.new_window("tab")
        browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": "delete Navigator.prototype.locks;"})
        open_page(browser, server.url + "/?run=solo")
        assert js(browser, "return window.loopDashboard.role") == "solo"
        wait_for(lambda: healthz_subscribers(server) == 2, message="one stream per tab")
        server.post({"type": "progress", "run": "solo", "data": {"percent": 64}})
        for h in (first, browser.current_window_handle):
            browser.switch_to.window(h)
            until(browser, lambda: text(browser, "#percent") == "64%", message="each tab to update")
    finally:
        close_other_tabs(browser, first)
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script["identifier"]})
        browser.get("about:blank")


# -- issue 20: runs that are not PRDs read right; the URL loop run prints opens on its run ----------------

def hidden(d, css):
    return js(d, "const e = document.querySelector(arguments[0]); return e.offsetParent === null;", css)


def test_a_loop_exec_run_shows_its_command_and_exit_code_and_no_empty_sections(browser, server):
    script = "echo started; sleep 60"
    proc = subprocess.Popen([*LOOP, "exec", "--run", "nightly", "--name", "Nightly", "--server", server.url,
                             "--grace", "1", "--", "sh", "-c", script],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        open_page(browser, server.url + "/?run=nightly")
        until(browser, lambda: "started" in text(browser, "#output"), message="the command's output")
        assert text(browser, "#run-title") == "Nightly" and text(browser, "#run-command code") == f"sh -c '{script}'"
        for empty in ("#progress-row", "#stories-box", "#current", "#remaining-box", "#log-box"):
            assert hidden(browser, empty), empty
        assert all(js(browser, "return [...document.querySelectorAll('#panel .story-count')]"
                               ".map(e => e.offsetParent === null);"))
        assert not hidden(browser, "#elapsed") and not hidden(browser, "#output")
        assert browser.title == "⏳ running · Nightly"           # no "0%" for a run that reports no progress
        shot(browser, "exec-running")
        stop = subprocess.run([*LOOP, "stop", "nightly", "--reason", "wrong branch", "--server", server.url],
                              capture_output=True, text=True, timeout=30)
        assert stop.returncode == 0, stop.stderr
        assert proc.wait(30) == 130
    finally:
        proc.kill()
    until(browser, lambda: text(browser, "#run-status") == "stopped", message="the run to show stopped")
    notice = text(browser, "#notice")
    assert re.fullmatch(rf"`sh -c '{script}'` stopped: exit 130 after \d+s\. Reason: wrong branch", notice), notice
    assert hidden(browser, "#stopped-at") and hidden(browser, "#progress-row")

    failed = subprocess.run([*LOOP, "exec", "--run", "make-test", "--server", server.url, "--",
                             "sh", "-c", "echo compiling; exit 3"], capture_output=True, text=True, timeout=60)
    assert failed.returncode == 3, failed.stderr
    open_page(browser, server.url + "/?run=make-test")
    until(browser, lambda: text(browser, "#run-status") == "failed", message="the failed command")
    assert re.fullmatch(r"`sh -c 'echo compiling; exit 3'` failed: exit 3 after \d+s\.", text(browser, "#notice"))
    assert text(browser, "#run-title") == "sh -c 'echo compiling; exit 3'" and hidden(browser, "#run-command")
    assert hidden(browser, "#stories-box") and hidden(browser, "#progress-row")
    assert text(browser, "#run-list button[aria-current=true] .run-meta") == "failed"   # no made-up percentage
    until(browser, lambda: "task_completed failed: exit 3 after 0s" in text(browser, "#transcript"),
          message="the command's end in the transcript")
    assert "task_started sh -c 'echo compiling; exit 3'\n" in text(browser, "#transcript")
    shot(browser, "exec-failed")


def test_the_dashboard_url_loop_run_prints_opens_on_its_run_even_before_it_starts(browser, server, tmp_path):
    prd = tmp_path / "prd.json"
    prd.write_text(json.dumps({"project": "Printed URL", "userStories": [
        {"id": "U-1", "title": "quick", "command": "echo hi", "priority": 1}]}))
    open_page(browser, server.url + "/?run=printed")
    until(browser, lambda: text(browser, "#waiting") == "Waiting for run printed to start…", message="the wait note")
    assert hidden(browser, "#panel") and not text(browser, "#action-state")
    server.post({"type": "task_started", "run": "other-live", "data": {"task_name": "Another live run"}})
    r = subprocess.run([*LOOP, "run", str(prd), "--run", "printed", "--server", server.url, "--no-update"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    url = re.search(r"dashboard: (\S+)", r.stderr).group(1)
    assert url == f"{server.url}/?run=printed"
    until(browser, lambda: text(browser, "#run-title") == "Printed URL", message="the run, once it started")
    assert hidden(browser, "#waiting")
    asks = js(browser, "return performance.getEntriesByType('resource')"
                       ".filter(e => e.name.endsWith('/api/runs/printed')).length;")
    assert asks <= 2, f"asked {asks} times for a run that was not there yet"
    server.post({"type": "task_started", "run": "newest-live", "data": {"task_name": "Newest live run"}})
    open_page(browser, url)        # as a person opens the printed URL: their run, not the live one
    until(browser, lambda: text(browser, "#run-title") == "Printed URL", message="the printed run")
    assert js(browser, "return document.querySelector('#run-list button[aria-current=true] .run-name').textContent") \
        == "printed"


def test_a_run_without_stories_ends_on_its_time_and_last_error_and_keeps_its_progress_bar(browser, server):
    server.post([{"type": "task_started", "run": "py-job", "data": {"task_name": "Python job"}},
                 {"type": "progress", "run": "py-job", "data": {"percent": 40}},
                 {"type": "error_occurred", "run": "py-job", "data": {"error_type": "ValueError",
                                                                      "error_message": "bad row 12"}},
                 {"type": "task_completed", "run": "py-job", "data": {"status": "failed"}}])
    open_page(browser, server.url + "/?run=py-job")
    until(browser, lambda: text(browser, "#run-status") == "failed", message="the failed run")
    assert re.fullmatch(r"Run failed after \d+s\. ValueError: bad row 12", text(browser, "#notice"))
    assert not hidden(browser, "#progress-row")               # it reported progress: its bar stays
    assert hidden(browser, "#stories-box") and hidden(browser, "#c-completed") and hidden(browser, "#run-command")
