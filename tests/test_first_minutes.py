"""A new user's first five minutes: every mistake is one clear line with the right exit code, on a
terminal and in a pipe; a sidecar that cannot start says why; `loop runs` fits a terminal and pipes
JSON Lines; `loop watch` keeps to the run it picked."""
import errno
import json
import os
import pty
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from fcntl import ioctl

import click
from rich.cells import cell_len

from conftest import ROOT, free_port, wait_for
from helpers import LOOP, loop

SGR = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")


def one_line(r) -> str:
    """The stderr of a refused command: exactly one line, no traceback."""
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    return r.stderr.strip()


class OnTerminal:
    """A command whose stdin, stdout and stderr are a pseudo-terminal of ``cols`` columns, as a person runs it."""

    def __init__(self, args, env=None, cols=100, rows=30):
        self.master, slave = pty.openpty()
        ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                                     env={**environ, "TERM": "xterm-256color", **(env or {})}, start_new_session=True)
        os.close(slave)
        self.raw = b""

    def read(self, timeout=0.2) -> str:
        """What the terminal showed so far (escape sequences left in)."""
        while select.select([self.master], [], [], timeout)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError as e:      # EIO: the command ended and closed the terminal
                if e.errno == errno.EIO:
                    break
                raise
            if not chunk:
                break
            self.raw += chunk
            timeout = 0.05
        return self.raw.decode("utf-8", "replace")

    def text(self) -> str:
        return SGR.sub("", self.read())

    def wait(self, timeout=30) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read(0.1)
        code = self.proc.wait(max(deadline - time.monotonic(), 0.1))
        self.read(0.1)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)


def test_usage_mistakes_are_one_line_and_exit_2(tmp_path):
    (tmp_path / "bad.json").write_text("{bad")
    cases = [
        (["serve", "--bogus"], "loop serve: No such option '--bogus'"),
        (["bogus"], "loop: No such command 'bogus'"),
        (["serve", "--port", "abc"], "loop serve: Invalid value for '--port'"),
        (["run", str(tmp_path / "missing.json")], "missing.json: no such file"),
        (["run", str(tmp_path / "bad.json")], "bad.json: invalid JSON at line 1, column 2"),
        (["watch", "a b"], "loop watch: Invalid value for RUN"),
        (["serve", "--host", "0.0.0.0"], "refusing to bind 0.0.0.0 without a token"),
    ]
    for args, words in cases:
        r = loop(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert words in one_line(r), (args, r.stderr)


def test_serve_on_a_taken_port_says_in_one_line_who_holds_it(server):
    r = loop("serve", "--port", str(server.port), timeout=10)
    assert r.returncode == 2
    assert one_line(r) == (f"loop: a loop sidecar already answers at {server.url}/ — use it "
                           f"(LOOP_SERVER={server.url}), or pick another --port")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        r = loop("serve", "--port", str(port), timeout=10)
    assert r.returncode == 2
    assert one_line(r) == f"loop: port {port} on 127.0.0.1 is in use by another program; pick another --port"


def test_ctrl_c_in_serve_after_serving_requests_ends_it_without_a_traceback(tmp_path):
    port = free_port()
    term = OnTerminal([*LOOP, "serve", "--port", str(port), "--db", str(tmp_path / "h.json")])
    try:
        import requests

        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url), timeout=20, message="the sidecar to answer")
        assert requests.post(url + "/api/events", json={"type": "note"}, timeout=5).status_code == 201
        with requests.get(url + "/stream/progress", stream=True, timeout=5) as stream:
            next(stream.iter_lines())
        requests.get(url + "/api/runs", timeout=5)
        os.killpg(term.proc.pid, signal.SIGINT)       # what the terminal's Ctrl-C does: the whole group
        assert term.wait(20) == 0
        shown = term.text()
        assert "Traceback" not in shown and "SystemExit" not in shown and "failed with" not in shown, shown
    finally:
        term.close()


def _answers(url: str) -> bool:
    import requests

    try:
        return requests.get(url + "/healthz", timeout=1).ok
    except requests.RequestException:
        return False


def test_watch_without_a_sidecar_is_the_same_one_line_with_or_without_a_run_on_a_terminal_and_piped():
    dead = f"http://127.0.0.1:{free_port()}"
    named = loop("watch", "r1", "--server", dead, timeout=20)
    unnamed = loop("watch", "--server", dead, timeout=20)
    assert named.returncode == unnamed.returncode == 1
    assert "cannot reach the sidecar at" in one_line(named) and "cannot reach the sidecar at" in one_line(unnamed)
    for args in (["watch"], ["watch", "r1"]):
        term = OnTerminal([*LOOP, *args, "--server", dead])
        try:
            assert term.wait(20) == 1
            lines = [ln for ln in term.text().splitlines() if ln.strip()]
            assert len(lines) == 1 and "cannot reach the sidecar at" in lines[0], lines
        finally:
            term.close()


def test_watch_without_a_run_keeps_to_the_run_it_picked_and_exits_with_its_outcome(server):
    server.post({"type": "task_started", "run": "picked", "data": {"task_name": "First", "story_count": 1}})
    watch = subprocess.Popen([*LOOP, "watch", "--server", server.url], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: server.get("/healthz").json()["subscribers"] >= 1, timeout=20, message="watch to connect")
        server.post([{"type": "task_started", "run": "newer", "data": {"task_name": "Second", "story_count": 1}},
                     {"type": "story_started", "run": "newer", "data": {"story_id": "N-1", "title": "not mine"}},
                     {"type": "story_started", "run": "picked", "data": {"story_id": "P-1", "title": "mine"}},
                     {"type": "story_completed", "run": "picked", "data": {"story_id": "P-1", "status": "failed"}},
                     {"type": "task_completed", "run": "picked", "data": {}}])
        out, err = watch.communicate(timeout=30)
    finally:
        watch.kill()
    assert watch.returncode == 1, err            # the picked run failed; the newer one is still running
    assert "mine" in out and "not mine" not in out and "Second" not in out


def test_runs_fits_the_terminal_colours_statuses_and_pipes_json_lines(server):
    long_name = "a-run-with-a-name-that-goes-on-and-on-" + "x" * 24
    server.post([{"type": "task_started", "run": long_name, "data": {"task_name": "作業 " * 30, "story_count": 2}},
                 {"type": "task_started", "run": "ok", "data": {"task_name": "Passing"}},
                 {"type": "task_completed", "run": "ok", "data": {}}])
    piped = loop("runs", "--server", server.url)
    rows = [json.loads(line) for line in piped.stdout.splitlines()]
    assert piped.returncode == 0 and {r["run"] for r in rows} == {long_name, "ok"}
    assert {r["run"] for r in json.loads(loop("runs", "--json", "--server", server.url).stdout)} == {long_name, "ok"}
    for env, coloured in (({}, True), ({"NO_COLOR": "1"}, False)):
        term = OnTerminal([*LOOP, "runs", "--server", server.url], env=env, cols=60)
        try:
            assert term.wait(20) == 0
            shown = term.read()
        finally:
            term.close()
        assert ("\x1b[32m" in shown and "\x1b[33m" in shown) is coloured, shown
        lines = [ln for ln in SGR.sub("", shown).splitlines() if ln.strip()]
        assert len(lines) == 3 and all(cell_len(ln) <= 60 for ln in lines), lines
        assert lines[0].startswith("RUN") and any(ln.startswith("a-run-with") and "…" in ln for ln in lines)


def test_every_option_with_an_env_var_names_it_in_help():
    from loopstream.cli import cli

    for name, command in cli.commands.items():
        text = command.get_help(click.Context(command, info_name=name))
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                assert f"env var: {param.envvar}" in re.sub(r"\s+", " ", text), (name, param.name)
    assert "starts one" in loop("run", "--help").stdout


def test_the_sidecar_says_invalid_for_a_value_given_and_required_for_one_missing(server):
    bad = server.post({"type": "Bad Type"})
    missing = server.post({"data": {}})
    bad_run = server.post({"type": "x", "run": "a b"})
    assert (bad.status_code, missing.status_code, bad_run.status_code) == (400, 400, 400)
    assert bad.json()["field"] == "type" and bad.json()["message"].startswith('invalid ("Bad Type")')
    assert missing.json()["message"].startswith("required")
    assert bad_run.json()["field"] == "run" and bad_run.json()["message"].startswith('invalid ("a b")')


def test_a_sidecar_that_cannot_start_says_why_and_where_its_log_is(tmp_path):
    prd = tmp_path / "prd.json"
    prd.write_text(json.dumps({"project": "P", "userStories": [
        {"id": "S-1", "title": "Quick", "acceptanceCriteria": ["done"], "priority": 1, "passes": False,
         "command": "sleep 2; echo hi"}]}))
    env = {"LOOP_SERVER": f"http://127.0.0.1:{free_port()}", "XDG_STATE_HOME": str(tmp_path / "state"),
           "LOOP_DB": str(tmp_path)}          # a directory: the sidecar refuses it and exits
    r = loop("run", str(prd), "--no-update", env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    log = tmp_path / "state" / "loop"
    (said,) = [ln for ln in r.stderr.splitlines() if "failed" in ln and "sidecar" in ln]
    assert "Invalid value for '--db'" in said and f"(log: {log}/sidecar-" in said and "running without one" in said
    term = OnTerminal([*LOOP, "run", str(prd), "--no-update", "--stream"], env=env)
    try:
        wait_for(lambda: "Sidecar: not running (see " in term.text(), timeout=30, message="the box's Sidecar line")
        assert term.wait(30) == 0
    finally:
        term.close()


def test_shell_hooks_prints_the_hooks_it_ships():
    library, emit = loop("shell-hooks").stdout.strip(), loop("shell-hooks", "--emit").stdout.strip()
    assert library == str(ROOT / "bin" / "loop-progress.sh") and emit == str(ROOT / "bin" / "loop-emit")
    r = subprocess.run(["bash", "-c", f'source "$({" ".join(LOOP)} shell-hooks)" && declare -F loop_progress'],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "loop_progress" in r.stdout



def test_status_words_are_coloured_on_a_terminal_and_never_with_no_color_or_piped(tmp_path):
    prd = tmp_path / "prd.json"
    prd.write_text(json.dumps({"project": "Colours", "userStories": [
        {"id": "S-1", "title": "Quick", "acceptanceCriteria": ["done"], "priority": 1, "passes": False,
         "command": "echo hi"}]}))
    args = [*LOOP, "run", str(prd), "--no-update", "--no-embed", "--stream"]
    for env, coloured in (({}, True), ({"NO_COLOR": "1"}, False)):
        term = OnTerminal(args, env=env)
        try:
            assert term.wait(60) == 0
            shown = term.read()
        finally:
            term.close()
        assert ("\x1b[32mpassed\x1b[0m" in shown) is coloured, shown[-500:]            # loop's last line
        assert bool(re.search(r"\x1b\[[0-9;]*32m\[PASSED\]", shown)) is coloured     # the box's status
        assert "run" in SGR.sub("", shown) and "[PASSED]" in SGR.sub("", shown)
    piped = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and "\x1b" not in piped.stdout + piped.stderr and " passed" in piped.stderr


def test_another_server_at_loop_server_is_one_line_never_a_traceback():
    port = free_port()
    other = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _listening(port), timeout=20, message="the other server")
        for args in (["runs"], ["watch"], ["watch", "r1"], ["stop", "r1"], ["emit", "note"]):
            r = loop(*args, "--server", f"http://127.0.0.1:{port}", timeout=30)
            assert r.returncode == 1, (args, r.stderr)
            assert "not a loop sidecar" in one_line(r), (args, r.stderr)
    finally:
        other.kill()
        other.wait()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
