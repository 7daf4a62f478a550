"""No secret in a URL: the dashboard trades its #token= for an HttpOnly, SameSite=Strict session
cookie (POST /api/session) that the stream, the polls and the controls carry; the token comes from
LOOP_TOKEN or --token-file, and one typed on the command line works with a warning (ps shows it)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from conftest import ROOT
from test_dashboard import browser, open_page, status, text, until  # noqa: F401 — the module's Chromium

TOKEN = "s3cret-t0ken"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def trade(server) -> requests.Response:
    return requests.post(server.url + "/api/session", headers={**BEARER, "Content-Type": "application/json"},
                         data="{}", timeout=5)


def test_the_bearer_token_buys_an_http_only_strict_cookie_that_authorizes_requests(make_server):
    server = make_server("--rate", "0", "--heartbeat", "1", env={"LOOP_TOKEN": TOKEN})
    server.post({"type": "task_started", "run": "c", "data": {}}, headers=BEARER)
    r = trade(server)
    assert r.status_code == 204
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie and TOKEN not in cookie
    jar = r.cookies
    assert server.get("/api/runs").status_code == 401
    assert server.get("/api/runs", cookies=jar).status_code == 200
    with requests.get(server.url + "/stream/progress", cookies=jar, stream=True, timeout=5) as s:
        assert s.status_code == 200
    same_origin = {"Origin": server.url, "Content-Type": "application/json"}
    ok = requests.post(server.url + "/api/runs/c/pause", cookies=jar, headers=same_origin, data="{}", timeout=5)
    assert ok.status_code == 202
    other_site = {"Origin": "http://evil.example", "Content-Type": "application/json"}
    assert requests.post(server.url + "/api/runs/c/stop", cookies=jar, headers=other_site, data="{}",
                         timeout=5).status_code == 403


def test_a_forged_or_expired_cookie_and_a_trade_without_the_token_are_refused(make_server):
    server = make_server("--rate", "0", env={"LOOP_TOKEN": TOKEN})
    name = trade(server).cookies.keys()[0]
    for value in ("9999999999.00", "1.deadbeef", "garbage", ""):
        assert server.get("/api/runs", cookies={name: value}).status_code == 401
    r = requests.post(server.url + "/api/session", headers={"Content-Type": "application/json"}, data="{}", timeout=5)
    assert r.status_code == 401 and "Set-Cookie" not in r.headers


def test_a_cookie_whose_expiry_is_not_ascii_digits_is_a_401_not_a_500(make_server):
    server = make_server("--rate", "0", env={"LOOP_TOKEN": TOKEN})
    name = trade(server).cookies.keys()[0]
    for value in ("\xb2.abc", "\u00b9\u00b2.abc"):      # "²".isdigit() is True; int("²") raises
        assert server.get("/api/runs", headers={"Cookie": f"{name}={value}"}).status_code == 401


def test_a_session_cookie_cannot_renew_itself_only_the_bearer_token_buys_one(make_server):
    server = make_server("--rate", "0", env={"LOOP_TOKEN": TOKEN})
    jar = trade(server).cookies
    same_origin = {"Origin": server.url, "Content-Type": "application/json"}
    r = requests.post(server.url + "/api/session", cookies=jar, headers=same_origin, data="{}", timeout=5)
    assert r.status_code == 401 and "Set-Cookie" not in r.headers
    assert server.get("/api/runs", cookies=jar).status_code == 200     # the cookie itself still works


def test_the_token_file_is_read_and_a_command_line_token_warns(make_server, tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    from_file = make_server("--rate", "0", "--token-file", str(path))
    assert from_file.get("/api/runs").status_code == 401
    assert from_file.get("/api/runs", headers=BEARER).status_code == 200
    assert "warning" not in from_file.log.read_text()
    typed = make_server("--rate", "0", "--token", TOKEN)
    assert typed.get("/api/runs", headers=BEARER).status_code == 200
    warnings = [line for line in typed.log.read_text().splitlines() if "warning" in line]
    assert len(warnings) == 1 and "ps" in warnings[0] and "LOOP_TOKEN" in warnings[0] and TOKEN not in warnings[0]


@pytest.mark.parametrize("content", ["", "\n"])
def test_an_empty_or_missing_token_file_is_one_line_and_exit_2(tmp_path, content):
    path = tmp_path / "token"
    path.write_text(content)
    for arg in (str(path), str(tmp_path / "absent")):
        r = subprocess.run([sys.executable, "-m", "loopstream", "serve", "--no-history", "--port", "0",
                            "--token-file", arg], capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--token-file" in r.stderr, r.stderr


def resource_urls(d) -> list[str]:
    """The URLs the page fetched (a stream appears only once it ends; polls at once)."""
    return d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")


def test_the_dashboard_never_puts_the_token_in_a_url(browser, make_server):  # noqa: F811
    server = make_server("--rate", "0", "--heartbeat", "1", env={"LOOP_TOKEN": TOKEN})
    server.post({"type": "task_started", "run": "quiet", "data": {"task_name": "Quiet"}}, headers=BEARER)
    open_page(browser, server.url + f"/?run=quiet&transport=poll#token={TOKEN}")
    until(browser, lambda: text(browser, "#run-title") == "Quiet")
    polls = until(browser, lambda: [u for u in resource_urls(browser) if "/api/events" in u], message="polls")
    assert not any(TOKEN in u for u in resource_urls(browser)), polls
    assert TOKEN not in browser.current_url and "run=quiet" in browser.current_url
    open_page(browser, server.url + f"/?run=quiet#token={TOKEN}")
    until(browser, lambda: status(browser) == "live", message="the stream on the session cookie")
    server.post({"type": "progress", "run": "quiet", "data": {"percent": 40}}, headers=BEARER)
    until(browser, lambda: text(browser, "#percent") == "40%", message="a live update")
    assert TOKEN not in browser.current_url
    assert "loop_session" not in browser.execute_script("return document.cookie")   # HttpOnly
    browser.refresh()                  # the fragment is gone: the cookie alone carries the page on
    until(browser, lambda: status(browser) == "live" and text(browser, "#percent") == "40%",
          message="a reload without the token")
