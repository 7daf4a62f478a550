"""`loop tail` and `loop exec` for real: subprocesses against a real sidecar, real writers and children."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from conftest import free_port, wait_for
from helpers import LOOP, finished, pid_alive, transcript

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
    # at the sidecar too: output still waiting in the outbox when the tail ends goes out in one event with the rest
    wait_for(lambda: output_texts(transcript(server, "tail-partial")) == ["one\n"], message="the first line sent")
    tail.send_signal(signal.SIGTERM)
    assert tail.wait(20) == 130
    events = wait_for(lambda: finished(server, "tail-partial"))
    assert output_texts(events) == ["one\n", "no newline yet\n"]
    assert events[-1]["type"] == "task_stopped" and events[-1]["data"]["reason"] == "terminated (SIGTERM)"


def test_tail_stops_on_ctrl_c_and_on_loop_stop_with_130(tmp_path, server):
    log = tmp_path / "s.log"
    tail, out = start_tail(log, server.url, "--run", "tail-int")
    wait_for(lambda: transcript(server, "tail-int"), message="task_started")
    tail.send_signal(signal.SIGINT)
    assert tail.wait(20) == 130
    assert wait_for(lambda: finished(server, "tail-int"))[-1]["data"]["reason"] == "interrupted (Ctrl-C)"

    tail, out = start_tail(log, server.url, "--run", "tail-stop")
    wait_for(lambda: transcript(server, "tail-stop"), message="task_started")
    stop = subprocess.run([*LOOP, "stop", "tail-stop", "--server", server.url, "--reason", "enough"],
                          capture_output=True, text=True, timeout=20)
    assert stop.returncode == 0, stop.stderr
    assert tail.wait(20) == 130
    last = wait_for(lambda: finished(server, "tail-stop"))[-1]
    assert last["type"] == "task_stopped" and last["data"]["reason"] == "enough"


def test_tail_without_a_sidecar_still_follows_and_warns(tmp_path):
    log = tmp_path / "n.log"
    log.write_text("")
    tail, out = start_tail(log, f"http://127.0.0.1:{free_port()}", "--run", "tail-none", "--until", "END",
                           "--from-start", "--no-embed")
    with open(log, "a") as f:
        f.write("a line\nEND\n")
    assert tail.wait(20) == 0
    assert b"".join(out.lines) == b"a line\nEND\n"
    assert "no sidecar at" in tail.stderr.read().decode()


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


# -- loop exec ---------------------------------------------------------------------------------

# Prints bytes that are not text (NUL, invalid UTF-8, a lone CR, an escape sequence), numbered lines on
# stdout and a few on stderr; then exits with the code it is given.
NOISY = textwrap.dedent(r"""
    import os, sys
    out = os.fdopen(1, "wb", buffering=0)
    out.write(b"\x00\xff\xfe binary\r\x1b[31mred\x1b[0m \xe2\x82\xac\n")
    for i in range(3000):
        out.write(b"line %05d\n" % i)
        if i % 1000 == 0:
            os.write(2, b"progress %d\n" % i)
    out.write(b"no newline at the end")
    sys.exit(int(sys.argv[1]))
""")


def loop_exec(server_url, *args, env=None, stdin=None, timeout=60):
    return subprocess.run([*LOOP, "exec", "--server", server_url, *args], capture_output=True, timeout=timeout,
                          stdin=stdin, env={**os.environ, **(env or {})})


def isolated(tmp_path) -> dict:
    """Story logs, the embedded sidecar's record and its history under the test's own directory."""
    return {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_DATA_HOME": str(tmp_path / "data")}


def test_exec_passes_output_through_byte_exact_and_streams_all_of_it_in_order(tmp_path, server):
    direct = subprocess.run([sys.executable, "-c", NOISY, "0"], capture_output=True)
    r = loop_exec(server.url, "--run", "exec-bytes", "--", sys.executable, "-c", NOISY, "0", env=isolated(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout == direct.stdout                   # byte for byte, as if loop were not there
    assert r.stderr == direct.stderr                   # not a tty: no line of loop's own
    events = wait_for(lambda: finished(server, "exec-bytes"))
    text = {s: "".join(e["data"]["text"] for e in events if e["type"] == "output" and e["data"]["stream"] == s)
            for s in ("stdout", "stderr")}
    assert text["stdout"] == direct.stdout.decode("utf-8", "replace")    # every line, in order
    assert text["stderr"] == direct.stderr.decode()
    done = events[-1]["data"]
    assert events[-1]["type"] == "task_completed" and done["status"] == "passed" and done["exit_code"] == 0
    assert done["output_bytes"] == len(direct.stdout) + len(direct.stderr)
    assert len(Path(done["log"]).read_bytes()) == done["output_bytes"]   # all of it, on the runner's disk
    assert events[0]["type"] == "task_started" and events[0]["data"]["command"].endswith("0")
    assert isinstance(done["duration_ms"], int)

    r = loop_exec(server.url, "--run", "exec-log", "--", "sh", "-c", f"{sys.executable} -c '{NOISY}' 0 2>/dev/null",
                  env=isolated(tmp_path))
    assert r.returncode == 0 and r.stdout == direct.stdout
    assert Path(wait_for(lambda: finished(server, "exec-log"))[-1]["data"]["log"]).read_bytes() == direct.stdout


def test_exec_exits_with_the_commands_exit_code_or_128_plus_its_signal(tmp_path, server):
    for run, argv, code in (("exec-0", ["true"], 0), ("exec-3", ["sh", "-c", "exit 3"], 3),
                            ("exec-term", ["sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
                            ("exec-kill", ["sh", "-c", "kill -KILL $$"], 128 + signal.SIGKILL),
                            ("exec-none", ["no-such-command-here"], 127)):
        r = loop_exec(server.url, "--run", run, "--", *argv, env=isolated(tmp_path))
        assert r.returncode == code, (run, r.stderr)
        last = wait_for(lambda run=run: finished(server, run))[-1]
        assert last["type"] == "task_completed" and last["data"]["exit_code"] == code
        assert last["data"]["status"] == ("passed" if code == 0 else "failed")
    assert b"no-such-command-here: command not found" in r.stderr


def test_exec_reads_loops_stdin_so_pipelines_work(tmp_path, server):
    p = subprocess.run(f"printf 'a\\nc\\nb\\n' | {' '.join(LOOP)} exec --server {server.url} --run exec-pipe -- sort -r",
                       shell=True, capture_output=True, env={**os.environ, **isolated(tmp_path)})
    assert p.returncode == 0 and p.stdout == b"c\nb\na\n"


def _start_exec(server_url, tmp_path, *args):
    return subprocess.Popen([*LOOP, "exec", "--server", server_url, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **isolated(tmp_path)})


# A command that prints its pid and its grandchild's, says "ready", and ignores SIGINT when told to.
STUBBORN = textwrap.dedent(r"""
    import os, signal, subprocess, sys, time
    if sys.argv[1] == "ignore":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    grandchild = subprocess.Popen(["sleep", "300"])
    print(f"pids {os.getpid()} {grandchild.pid}", flush=True)
    print("ready", flush=True)
    time.sleep(300)
""")


def _pids_when_ready(server, run):
    events = wait_for(lambda: [e for e in transcript(server, run) if e["type"] == "output"
                               and "ready" in "".join(x["data"]["text"] for x in transcript(server, run)
                                                      if x["type"] == "output")] and transcript(server, run),
                      20, message="the command to be ready")
    text = "".join(e["data"]["text"] for e in events if e["type"] == "output")
    return [int(p) for p in text.split("pids ")[1].split("\n")[0].split()]


def test_exec_sigterm_and_ctrl_c_stop_the_command_with_130(tmp_path, server):
    for run, sig, reason in (("exec-sigterm", signal.SIGTERM, "terminated (SIGTERM)"),
                             ("exec-sigint", signal.SIGINT, "interrupted (Ctrl-C)")):
        proc = _start_exec(server.url, tmp_path, "--run", run, "--", sys.executable, "-c", STUBBORN, "obey")
        pids = _pids_when_ready(server, run)
        proc.send_signal(sig)
        assert proc.wait(20) == 130
        last = wait_for(lambda run=run: finished(server, run))[-1]
        assert last["type"] == "task_stopped" and last["data"]["reason"] == reason
        wait_for(lambda pids=pids: not any(map(pid_alive, pids)), message="no process of the command's group left")


def test_exec_stop_kills_a_command_ignoring_sigint_after_the_grace_period(tmp_path, server):
    proc = _start_exec(server.url, tmp_path, "--run", "exec-stubborn", "--grace", "0.5", "--",
                       sys.executable, "-c", STUBBORN, "ignore")
    pids = _pids_when_ready(server, "exec-stubborn")
    stop = subprocess.run([*LOOP, "stop", "exec-stubborn", "--server", server.url, "--reason", "enough"],
                          capture_output=True, text=True, timeout=20)
    assert stop.returncode == 0, stop.stderr
    assert proc.wait(20) == 130
    last = wait_for(lambda: finished(server, "exec-stubborn"))[-1]
    assert last["type"] == "task_stopped" and last["data"]["reason"] == "enough"
    assert last["data"]["exit_code"] == 128 + signal.SIGKILL
    wait_for(lambda: not any(map(pid_alive, pids)), message="the whole group killed")


def test_exec_without_a_sidecar_behaves_the_same_and_warns_once(tmp_path):
    direct = subprocess.run([sys.executable, "-c", NOISY, "3"], capture_output=True)
    r = loop_exec(f"http://127.0.0.1:{free_port()}", "--no-embed", "--", sys.executable, "-c", NOISY, "3",
                  env=isolated(tmp_path))
    assert r.returncode == 3
    assert r.stdout == direct.stdout
    extra = r.stderr.replace(direct.stderr, b"", 1).decode()
    assert extra.count("\n") == 1 and "no sidecar" in extra, extra


def test_exec_with_a_sidecar_that_hangs_midway_exits_with_the_commands_code(tmp_path, server):
    go = tmp_path / "go"
    proc = _start_exec(server.url, tmp_path, "--run", "exec-hung", "--", "sh", "-c",
                       f"echo ready; while [ ! -e {go} ]; do sleep 0.05; done; seq 1 500; exit 4")
    wait_for(lambda: any("ready" in e["data"].get("text", "") for e in transcript(server, "exec-hung")), 20)
    os.killpg(server.proc.pid, signal.SIGSTOP)
    try:
        go.touch()
        out, err = proc.communicate(timeout=30)     # the deadline: a client waiting on the sidecar would hang
    finally:
        os.killpg(server.proc.pid, signal.SIGCONT)
    assert proc.returncode == 4
    assert out == b"ready\n" + b"".join(b"%d\n" % i for i in range(1, 501))
    assert err.decode().count("loop: ") == 1, err      # one warning


def test_exec_inside_another_run_is_a_run_of_its_own_and_its_output_reaches_both(tmp_path, server):
    inner = f"{' '.join(LOOP)} exec --server {server.url} --run exec-inner -- echo from-inner"
    r = loop_exec(server.url, "--run", "exec-outer", "--", "sh", "-c", f"echo from-outer; {inner}",
                  env=isolated(tmp_path))
    assert r.returncode == 0 and r.stdout == b"from-outer\nfrom-inner\n", r.stderr
    outer, inner_events = wait_for(lambda: finished(server, "exec-outer")), wait_for(
        lambda: finished(server, "exec-inner"))
    assert [e["type"] for e in outer].count("task_started") == 1
    assert "".join(output_texts(outer)) == "from-outer\nfrom-inner\n"
    assert "".join(output_texts(inner_events)) == "from-inner\n"
    r = loop_exec(server.url, "--", "true", env={**isolated(tmp_path), "LOOP_RUN": "exec-outer"})
    assert r.returncode == 0 and len(finished(server, "exec-outer")) == len(outer)   # LOOP_RUN is not its run


def test_exec_with_no_sidecar_starts_one_that_outlives_it_as_loop_run_does(tmp_path):
    env = isolated(tmp_path)
    r = loop_exec(f"http://127.0.0.1:{free_port()}", "--run", "exec-embed", "--", "echo", "hello", env=env)
    assert r.returncode == 0 and r.stdout == b"hello\n", r.stderr
    record = __import__("json").loads((tmp_path / "state" / "loop" / "sidecar.json").read_text())
    try:
        import requests

        events = wait_for(lambda: requests.get(record["url"] + "/api/runs/exec-embed/transcript", timeout=5)
                          .json().get("events"), message="the run on the embedded sidecar")
        assert events[-1]["type"] == "task_completed" and output_texts(events) == ["hello\n"]
    finally:
        os.kill(record["pid"], signal.SIGTERM)


def test_tail_with_a_sidecar_that_hangs_midway_still_follows_and_exits(tmp_path, server):
    log = tmp_path / "h.log"
    log.write_text("")
    tail, out = start_tail(log, server.url, "--run", "tail-hung", "--until", "^END$")
    wait_for(lambda: transcript(server, "tail-hung"), message="task_started")
    os.killpg(server.proc.pid, signal.SIGSTOP)
    try:
        with open(log, "a") as f:
            f.write("".join(f"line {i}\n" for i in range(200)) + "END\n")
        assert tail.wait(30) == 0        # the deadline: a tail waiting on the sidecar would hang here
    finally:
        os.killpg(server.proc.pid, signal.SIGCONT)
    assert b"".join(out.lines) == ("".join(f"line {i}\n" for i in range(200)) + "END\n").encode()
