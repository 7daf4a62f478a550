"""`loop serve --notify`: one message per finished run, to a real HTTP receiver on 127.0.0.1."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import BACKENDS, wait_for
from loopstream.sidecar import notify


class Receiver:
    """A webhook receiver: records every POST; can answer errors first, or hold requests."""

    def __init__(self, fail_first: int = 0):
        self.requests: list[dict] = []
        self.fail_first = fail_first
        self.attempts = 0
        self.release = threading.Event()
        self.release.set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.attempts += 1
                outer.release.wait(30)
                if outer.attempts <= outer.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def finish(server, run, status="passed", stories=2):
    events = [{"type": "task_started", "run": run, "data": {"task_name": f"Task {run}", "story_count": stories}}]
    for n in range(stories):
        events.append({"type": "story_completed", "run": run,
                       "data": {"story_id": f"S{n}", "status": "failed" if status == "failed" and n == 0 else "passed"}})
    events.append({"type": "task_completed", "run": run, "data": {}})
    assert server.post(events).status_code == 201


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_a_finished_run_posts_one_json_message_with_counts_duration_and_link(make_server, receiver):
    server = make_server("--rate", "0", "--notify", receiver.url + "/hook")
    finish(server, "nightly", status="failed")
    wait_for(lambda: receiver.requests, message="the webhook message")
    (req,) = receiver.requests
    msg = req["body"]
    assert req["path"] == "/hook" and req["headers"]["Content-Type"] == "application/json"
    assert msg["run"] == "nightly" and msg["status"] == "failed" and msg["task_name"] == "Task nightly"
    assert msg["counts"]["completed"] == 1 and msg["counts"]["failed"] == 1 and msg["counts"]["total"] == 2
    assert isinstance(msg["duration_s"], (int, float)) and msg["duration_s"] >= 0
    assert msg["url"] == f"{server.url}/?run=nightly"
    assert msg["text"].startswith("Task nightly failed: 1/2 stories passed")
    server.post({"type": "output", "run": "nightly", "data": {"text": "after the end\n"}})
    finish(server, "second")
    wait_for(lambda: len(receiver.requests) == 2, message="the second run's message")
    assert [r["body"]["run"] for r in receiver.requests] == ["nightly", "second"]   # one per run, no repeats


def test_ntfy_format_publishes_to_the_topic_with_title_tags_and_click(make_server, receiver):
    server = make_server("--rate", "0", "--notify", receiver.url + "/alerts/loop-runs", "--notify-format", "ntfy")
    server.post([{"type": "task_started", "run": "deploy", "data": {"task_name": "Déploiement", "story_count": 3}},
                 {"type": "story_started", "run": "deploy", "data": {"story_id": "B"}},
                 {"type": "story_completed", "run": "deploy", "data": {"story_id": "A", "status": "passed"}},
                 {"type": "task_stopped", "run": "deploy", "data": {"reason": "enough"}}])
    wait_for(lambda: receiver.requests, message="the ntfy message")
    (req,) = receiver.requests
    assert req["path"] == "/alerts/"                        # ntfy's JSON publish goes to the root
    body = req["body"]
    assert body["topic"] == "loop-runs" and body["title"] == "loop: Déploiement stopped"
    assert body["tags"] == ["octagonal_sign"] and body["click"] == f"{server.url}/?run=deploy"
    assert "1/3 stories passed, stopped at B" in body["message"]


def test_runs_shorter_than_the_minimum_are_not_notified(make_server, receiver):
    server = make_server("--rate", "0", "--notify", receiver.url, "--notify-min-duration", "1")
    finish(server, "quick")
    server.post({"type": "task_started", "run": "slow", "data": {"task_name": "slow"}})
    started = time.monotonic()
    wait_for(lambda: time.monotonic() - started > 1.2, message="the slow run to last over a second")
    server.post({"type": "task_completed", "run": "slow", "data": {}})
    wait_for(lambda: receiver.requests, message="the slow run's message")
    assert [r["body"]["run"] for r in receiver.requests] == ["slow"]
    assert receiver.requests[0]["body"]["duration_s"] >= 1


def test_a_failing_receiver_is_retried_until_it_accepts():
    receiver = Receiver(fail_first=2)
    try:
        n = notify.Notifier(receiver.url, retry_delays=(0.05, 0.05, 0.05))
        assert n.deliver(notify.message({"run": "r", "status": "passed", "counts": {}, "elapsed_s": 3}))
        assert receiver.attempts == 3 and len(receiver.requests) == 1
        gone = notify.Notifier("http://127.0.0.1:9/", retry_delays=(0.01, 0.01))
        assert gone.deliver(notify.message({"run": "r", "status": "failed"})) is False
    finally:
        receiver.close()


def test_a_hung_receiver_never_delays_the_stream(make_server, receiver, subscribe):
    receiver.release.clear()                                 # the receiver holds every request
    server = make_server("--rate", "0", "--heartbeat", "1", "--notify", receiver.url)
    sub = subscribe(server)
    sub.take(1)                                              # hello
    finish(server, "held", stories=1)
    wait_for(lambda: receiver.attempts == 1, message="the notifier to be stuck in the receiver")
    (eid,) = server.post({"type": "output", "run": "other", "data": {"text": "still flowing\n"}}).json()["ids"]
    got = sub.until(lambda item: item[0] == eid)
    assert got[-1][2]["data"]["text"] == "still flowing\n"
    assert server.get("/healthz").status_code == 200
    receiver.release.set()
    wait_for(lambda: receiver.requests, message="the held message to go out once released")


@pytest.mark.parametrize("args, expected", [
    (["--notify", "ftp://example.org/x"], "give an http:// or https:// URL"),
    (["--notify", "https://ntfy.sh/", "--notify-format", "ntfy"], "topic URL like https://ntfy.sh/mytopic"),
    (["--notify", "https://example.org/", "--notify-format", "slack"], "'slack' is not one of"),
    (["--notify", "https://example.org/", "--notify-min-duration", "-1"], "-1"),
])
def test_bad_notify_options_are_refused_with_a_way_out(args, expected, tmp_path):
    r = subprocess.run([sys.executable, "-m", "loopstream", "serve", "--no-history", "--port", "0", *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and expected in r.stderr and "Traceback" not in r.stderr


def test_a_full_queue_drops_and_counts_instead_of_blocking(receiver):
    receiver.release.clear()                                 # the first message holds the worker
    n = notify.Notifier(receiver.url, retry_delays=())
    snap = {"run": "r", "status": "passed", "elapsed_s": 1}
    assert n.finished(snap)
    wait_for(lambda: receiver.attempts == 1, message="the worker to be held by the receiver")
    results = [n.finished(snap) for _ in range(notify.QUEUE_SIZE + 5)]
    assert results.count(True) == notify.QUEUE_SIZE and n.dropped == 5
    receiver.release.set()
    wait_for(lambda: n.sent == notify.QUEUE_SIZE + 1, message="the queue to drain")
