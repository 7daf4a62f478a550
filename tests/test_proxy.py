"""The README's nginx block, run as written: Debian's nginx (bin/test installs it) with the block
taken from README.md (only its ports and log paths changed) in front of a real sidecar with a
token and --forwarded-allow-ips. Chromium opens the dashboard through it on a non-standard port,
goes live and stops a run with the dashboard's Stop; two client addresses (127.0.0.2, 127.0.0.3)
each keep their own budget behind it; over-limit bodies and a stopped sidecar get JSON answers;
and no log of nginx's holds the token."""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from conftest import ROOT, free_port, wait_for
from test_dashboard import browser, open_page, status, text, until  # noqa: F401 — the module's Chromium

TOKEN = "nginx-t0ken-5ecret"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
MARK = "# /etc/nginx/conf.d/loop.conf"


def readme_block() -> str:
    """The README's nginx block (the one the README says this test runs)."""
    blocks = re.findall(r"```nginx\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if b.startswith(MARK)]
    return block


def nginx_conf(tmp: Path, port: int, upstream: int) -> str:
    block = readme_block()
    for old, new in ((r"listen 80;", f"listen 127.0.0.1:{port};"), (r"server 127.0.0.1:8765;",
                     f"server 127.0.0.1:{upstream};"), ("/var/log/nginx/", f"{tmp}/")):
        assert old in block, f"the README's nginx block no longer has {old!r}"
        block = block.replace(old, new)
    # a second log with the whole request line (query strings too): a token in any URL shows there
    block = block.replace("    access_log ", f"    access_log {tmp}/requests.log full;\n    access_log ", 1)
    temp = "\n".join(f"    {k}_temp_path {tmp}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    user = "user root root;" if os.geteuid() == 0 else ""
    return f"""{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 256; }}
http {{
{temp}
    log_format full '$remote_addr "$request" $status';
{block}
}}
"""


class Nginx:
    def __init__(self, tmp: Path, upstream: int):
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        assert os.path.exists(exe), "nginx is not installed: run bin/test, which installs Debian's nginx"
        self.tmp, self.port = tmp, free_port()
        self.conf = tmp / "nginx.conf"
        self.conf.write_text(nginx_conf(tmp, self.port, upstream))
        check = subprocess.run([exe, "-t", "-c", str(self.conf), "-e", str(tmp / "error.log")],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen([exe, "-c", str(self.conf), "-e", str(tmp / "error.log"), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_for(self.up, 10, message="nginx to answer")

    def up(self) -> bool:
        try:
            return self.request("GET", "/healthz")[0] == 200
        except OSError:
            return False

    def request(self, method: str, path: str, body: str | None = None, headers=None, source: str = "127.0.0.1"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10, source_address=(source, 0))
        try:
            conn.request(method, path, body, {"Content-Type": "application/json", **(headers or {})})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.tmp.glob("*.log"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def behind_nginx(make_server, tmp_path):
    sidecar = make_server("--rate", "1000", "--burst", "1000", "--client-rate", "0.001", "--client-burst", "4",
                          "--heartbeat", "1", "--forwarded-allow-ips", "127.0.0.1", env={"LOOP_TOKEN": TOKEN})
    logs = tmp_path / "nginx"
    logs.mkdir()
    nginx = Nginx(logs, sidecar.port)
    yield sidecar, nginx
    nginx.stop()


def emit(nginx: Nginx, run: str, source: str, kind: str = "progress", data=None):
    status, _, body = nginx.request("POST", "/api/events", json.dumps({"type": kind, "run": run, "data": data or {}}),
                                    BEARER, source)
    return status, json.loads(body)


def test_the_readme_block_serves_the_dashboard_and_its_stop_without_logging_the_token(browser, behind_nginx):
    sidecar, nginx = behind_nginx
    assert emit(nginx, "proxied", "127.0.0.2", "task_started", {"task_name": "Behind nginx"})[0] == 201
    open_page(browser, nginx.url + f"/?run=proxied#token={TOKEN}")
    until(browser, lambda: status(browser) == "live", message="the stream through nginx")
    until(browser, lambda: text(browser, "#run-title") == "Behind nginx")
    assert emit(nginx, "proxied", "127.0.0.2", data={"percent": 55})[0] == 201
    until(browser, lambda: text(browser, "#percent") == "55%", message="a frame through nginx, unbuffered")
    browser.find_element(By.ID, "stop").click()
    dialog = browser.find_element(By.ID, "stop-dialog")
    until(browser, lambda: dialog.is_displayed(), message="the confirmation dialog")
    browser.find_element(By.ID, "stop-reason").send_keys("through nginx")
    browser.find_element(By.ID, "stop-confirm").click()
    until(browser, lambda: "stop sent" in (text(browser, "#action-state") or ""), message="the stop through nginx")
    events = sidecar.get("/api/runs/proxied/transcript", headers=BEARER).json()["events"]
    assert events[-1]["type"] == "stop_requested" and events[-1]["data"]["reason"] == "through nginx"
    wait_for(lambda: "/api/runs/proxied/stop" in nginx.logs(), message="the stop in nginx's access log")
    logs = nginx.logs()
    assert "/stream/progress" in logs or "/api/events" in logs
    assert TOKEN not in logs


def test_two_clients_behind_nginx_each_keep_their_own_budget(behind_nginx):
    sidecar, nginx = behind_nginx
    for i in range(4):
        assert emit(nginx, f"a{i}", "127.0.0.2")[0] == 201
    status, body = emit(nginx, "a9", "127.0.0.2")
    assert status == 429 and "client:127.0.0.2" in body["message"], body
    for i in range(4):       # the other address is another client: its own budget, untouched
        status, body = emit(nginx, f"b{i}", "127.0.0.3")
        assert status == 201, body
    status, body = emit(nginx, "b9", "127.0.0.3")
    assert status == 429 and "client:127.0.0.3" in body["message"], body
    forged, _, body = nginx.request("POST", "/api/events", json.dumps({"type": "progress", "run": "c", "data": {}}),
                                 {**BEARER, "X-Forwarded-For": "203.0.113.9"}, "127.0.0.2")
    assert forged == 429 and "client:127.0.0.2" in json.loads(body)["message"]   # nginx appends the real peer
    assert TOKEN not in nginx.logs()


def test_a_large_body_and_a_restart_get_json_answers_through_nginx(behind_nginx):
    sidecar, nginx = behind_nginx
    big = json.dumps({"type": "output", "run": "big", "data": {"text": "x" * 70_000}})
    status, headers, body = nginx.request("POST", "/api/events", big, BEARER, "127.0.0.2")
    assert status == 413 and json.loads(body)["error"] == "too_large"
    sidecar.stop()
    status, headers, body = nginx.request("POST", "/api/events", "{}", BEARER, "127.0.0.2")
    assert status == 503 and headers.get("Retry-After") == "1" and json.loads(body)["error"] == "backend_unavailable"


def test_sigterm_stops_the_sidecar_in_about_a_second(make_server):
    """The figure the README states: SIGTERM to exit, with a stream open."""
    sidecar = make_server("--rate", "0", "--heartbeat", "1")
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=10)
    conn.request("GET", "/stream/progress")
    assert conn.getresponse().status == 200
    started = time.monotonic()
    assert sidecar.stop() == 0
    took = time.monotonic() - started
    print(f"SIGTERM to exit with a stream open: {took:.2f} s")
    conn.close()
