"""`loop tail` and `loop exec` for real: subprocesses against a real sidecar, real writers and children."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from conftest import wait_for

LOOP = [sys.executable, "-m", "loopstream"]

# A writer in its own process: appends, truncates, rotates. It waits for "go" on stdin only where a
# reader must have caught up for the test to mean anything (lines truncated away unread are gone
# for any tail), and prints the lines it wrote, in order, as JSON at the end.
WRITER = textwrap.dedent(r"""
    import json, os, sys
    path = sys.argv[1]
    written = []
    def go():
        assert sys.stdin.readline().strip() == "go"
    def append(f, text):
        f.write(text.encode()); f.flush()
    with open(path, "ab", buffering=0) as f:
        for i in range(200):
            line = f"first {i:03d} " + "x" * (i % 7) + "\n"
            append(f, line); written.append(line)
        append(f, "before the half line\nhalf-")      # one write(): a reader sees both or neither
        go()
        append(f, "rest\n"); written += ["before the half line\n", "half-rest\n"]
        go()
    with open(path, "r+b", buffering=0) as f:           # truncate, as `: > FILE` does
        f.truncate(0)
    with open(path, "ab", buffering=0) as f:
        for i in range(60):
            line = f"second {i:02d}\n"
            append(f, line); written.append(line)
        os.rename(path, path + ".1")                    # rotate: the writer still holds the old file
        for i in range(20):
            line = f"old file after rename {i:02d}\n"
            append(f, line); written.append(line)
        with open(path, "ab", buffering=0) as g:        # the new file, at the same path
            for i in range(100):
                line = f"third {i:03d}\n"
                append(g, line); written.append(line)
            append(g, "=== Run Complete ===\n"); written.append("=== Run Complete ===\n")
    print(json.dumps(written))
""")


class Lines:
    """A subprocess's stdout, read line by line in a thread so a test can wait for it."""

    def __init__(self, pipe):
        self.lines: list[bytes] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        for line in iter(pipe.readline, b""):
            self.lines.append(line)

    def has(self, text: bytes) -> bool:
        return any(text in line for line in self.lines)


def start_tail(path, server_url, *args, env=None):
    proc = subprocess.Popen([*LOOP, "tail", str(path), "--server", server_url, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    return proc, Lines(proc.stdout)


def transcript(server, run):
    r = server.get(f"/api/runs/{run}/transcript")
    return r.json()["events"] if r.ok else []


def finished(server, run):
    events = transcript(server, run)
    return events if events and events[-1]["type"] in ("task_completed", "task_stopped") else None


def output_texts(events):
    return [e["data"]["text"] for e in events if e["type"] == "output"]


# -- loop tail ---------------------------------------------------------------------------------

def test_tail_streams_every_line_across_truncation_and_rotation_exactly_once(tmp_path, server):
    log = tmp_path / "app.log"
    tail, out = start_tail(log, server.url, "--run", "tail-1", "--until", "^=== Run Complete ===$",
                           "--timeout", "60")
    wait_for(lambda: transcript(server, "tail-1"), message="task_started")   # the tail is up, FILE absent
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    wait_for(lambda: out.has(b"before the half line"), 20, message="the tail to read up to the half line")
    writer.stdin.write("go\n")
    writer.stdin.flush()
    wait_for(lambda: out.has(b"half-rest"), 20, message="the completed half line")
    writer.stdin.write("go\n")
    writer.stdin.close()
    written = __import__("json").loads(writer.stdout.read())
    assert writer.wait(20) == 0
    assert tail.wait(30) == 0, tail.stderr.read().decode()

    events = wait_for(lambda: finished(server, "tail-1"), message="the run to finish")
    texts = output_texts(events)
    assert "".join(texts) == "".join(written)                 # every line, once, in order
    assert all(t.endswith("\n") for t in texts)               # the half line was held until complete
    assert b"".join(out.lines) == "".join(written).encode()   # and printed as written (piped: raw)
    assert events[0]["type"] == "task_started" and events[0]["data"]["task_name"] == f"tail {log}"
    assert events[-1]["type"] == "task_completed"
    assert events[-1]["data"]["status"] == "passed" and events[-1]["data"]["summary"]["lines"] == len(written)
    assert server.get("/api/runs/tail-1").json()["status"] == "passed"
    stderr = tail.stderr.read().decode()
    assert "truncated" in stderr and "replaced" in stderr


def test_tail_of_an_existing_file_starts_at_its_end_unless_from_start(tmp_path, server):
    log = tmp_path / "old.log"
    log.write_text("old 1\nold 2\n")
    tail, out = start_tail(log, server.url, "--run", "tail-end", "--until", "END")
    wait_for(lambda: transcript(server, "tail-end"), message="task_started")
    with open(log, "a") as f:
        f.write("new 1\nEND\n")
    assert tail.wait(20) == 0
    assert "".join(output_texts(wait_for(lambda: finished(server, "tail-end")))) == "new 1\nEND\n"

    tail, out = start_tail(log, server.url, "--run", "tail-start", "--from-start", "--until", "END")
    assert tail.wait(20) == 0
    assert "".join(output_texts(wait_for(lambda: finished(server, "tail-start")))) == "old 1\nold 2\nnew 1\nEND\n"


def test_tail_timeout_exits_1_and_fails_the_run_with_the_reason(tmp_path, server):
    log = tmp_path / "quiet.log"
    tail, out = start_tail(log, server.url, "--run", "tail-timeout", "--until", "never", "--timeout", "0.5")
    assert tail.wait(20) == 1
    events = wait_for(lambda: finished(server, "tail-timeout"))
    assert events[-1]["type"] == "task_completed" and events[-1]["data"]["status"] == "failed"
    assert "no line matched 'never' within 0.5 s" in events[-1]["data"]["reason"]
    assert [e["data"]["error_type"] for e in events if e["type"] == "error_occurred"] == ["timeout"]
    assert server.get("/api/runs/tail-timeout").json()["status"] == "failed"


def test_tail_partial_last_line_goes_out_when_the_tail_ends(tmp_path, server):
    log = tmp_path / "partial.log"
    log.write_text("")
    tail, out = start_tail(log, server.url, "--run", "tail-partial", "--until", "STOP")
    wait_for(lambda: transcript(server, "tail-partial"), message="task_started")
    with open(log, "a") as f:
        f.write("one\nno newline yet")
    wait_for(lambda: out.has(b"one"), message="the first line")
    tail.send_signal(signal.SIGTERM)
    assert tail.wait(20) == 130
    events = wait_for(lambda: finished(server, "tail-partial"))
    assert output_texts(events) == ["one\n", "no newline yet\n"]
    assert events[-1]["type"] == "task_stopped" and events[-1]["data"]["reason"] == "interrupted (SIGTERM)"


def test_tail_stops_on_ctrl_c_and_on_loop_stop_with_130(tmp_path, server):
    log = tmp_path / "s.log"
    tail, out = start_tail(log, server.url, "--run", "tail-int")
    wait_for(lambda: transcript(server, "tail-int"), message="task_started")
    tail.send_signal(signal.SIGINT)
    assert tail.wait(20) == 130
    assert wait_for(lambda: finished(server, "tail-int"))[-1]["data"]["reason"] == "interrupted (SIGINT)"

    tail, out = start_tail(log, server.url, "--run", "tail-stop")
    wait_for(lambda: transcript(server, "tail-stop"), message="task_started")
    stop = subprocess.run([*LOOP, "stop", "tail-stop", "--server", server.url, "--reason", "enough"],
                          capture_output=True, text=True, timeout=20)
    assert stop.returncode == 0, stop.stderr
    assert tail.wait(20) == 130
    last = wait_for(lambda: finished(server, "tail-stop"))[-1]
    assert last["type"] == "task_stopped" and last["data"]["reason"] == "enough"


def test_tail_without_a_sidecar_still_follows_and_warns(tmp_path):
    from conftest import free_port

    log = tmp_path / "n.log"
    log.write_text("")
    tail, out = start_tail(log, f"http://127.0.0.1:{free_port()}", "--run", "tail-none", "--until", "END",
                           "--from-start")
    with open(log, "a") as f:
        f.write("a line\nEND\n")
    assert tail.wait(20) == 0
    assert b"".join(out.lines) == b"a line\nEND\n"
    assert "no sidecar answers" in tail.stderr.read().decode()


def test_tail_bad_input_is_a_clear_usage_error(tmp_path, server):
    r = subprocess.run([*LOOP, "tail", str(tmp_path), "--server", server.url], capture_output=True, text=True)
    assert r.returncode == 2 and "is a directory" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([*LOOP, "tail", str(tmp_path / "x.log"), "--until", "(", "--server", server.url],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "not a valid regular expression" in r.stderr
    r = subprocess.run([*LOOP, "tail", str(tmp_path / "x.log"), "--run", "bad run", "--server", server.url],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--run" in r.stderr
    assert server.get("/api/runs").json()["runs"] == []          # nothing was started
