"""bin/loop-emit and bin/loop-progress.sh, run by real bash and curl against a real sidecar.

A hook queues the event in a spool file and returns; a detached shipper (bin/loop-emit --ship) delivers
the spool in order. So tests wait for delivery with a deadline, and every test gets its own spool
directory, whose shippers are killed at the end.
"""
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, Server, free_port, wait_for

EMIT = str(ROOT / "bin" / "loop-emit")
LIB = str(ROOT / "bin" / "loop-progress.sh")


def hook_env(spool, server_url, **env):
    return {**os.environ, "LOOP_SERVER": server_url, "LOOP_SPOOL_DIR": str(spool), "LOOP_SHIP_IDLE": "1", **env}


def bash(script, spool, server_url, **env):
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          env=hook_env(spool, server_url, **env))


def hang(server):
    """SIGSTOP the whole sidecar (gunicorn's master and its worker): it accepts connections, answers nothing."""
    os.killpg(server.proc.pid, signal.SIGSTOP)


def resume(server):
    os.killpg(server.proc.pid, signal.SIGCONT)


def events(server):
    return server.get("/api/events").json()["events"]


def delivered(server, count, run=None, timeout=30.0):
    """The events stored on the sidecar (of ``run``, from its transcript), once there are ``count``."""
    def get():
        evs = server.get(f"/api/runs/{run}/transcript").json().get("events", []) if run else events(server)
        return evs if len(evs) >= count else None
    return wait_for(get, timeout=timeout, interval=0.1, message=f"{count} events to be delivered")


@pytest.mark.parametrize("text", [
    'say "hi"', "back\\slash", "new\nline", "tab\there", "ünïcödé ✅ 😀", "ctrl\x01\x1f\x7f", "{json: [1]}",
    "'single'", "$HOME `ls` $(date)", "",
])
def test_loop_emit_builds_valid_json_from_any_text(server, spool, text):
    r = subprocess.run([EMIT, "note", f"message={text}", "n:=5", "flag:=true"], capture_output=True, text=True,
                       env=hook_env(spool, server.url, LOOP_RUN="sh-run"), timeout=30)
    assert r.returncode == 0 and r.stderr == ""
    (e,) = delivered(server, 1)
    assert e["data"] == {"message": text, "n": 5, "flag": True} and e["run"] == "sh-run"


def test_loop_emit_lists_with_brackets(server, spool):
    subprocess.run([EMIT, "story_started", "story_id=S", "acceptance_criteria[]=one", "acceptance_criteria[]=t\"wo"],
                   env=hook_env(spool, server.url), check=True, timeout=30)
    assert delivered(server, 1)[0]["data"] == {"story_id": "S", "acceptance_criteria": ["one", 't"wo']}


def test_a_dead_sidecar_never_fails_the_script_unless_strict(spool):
    url = f"http://127.0.0.1:{free_port()}"
    r = bash(f'set -euo pipefail; {EMIT} progress percent:=5; echo still-running', spool, url)
    assert r.returncode == 0 and "still-running" in r.stdout and r.stderr == ""
    assert '"percent":5' in next(spool.glob("*.jsonl")).read_text()       # kept for when it answers
    strict = bash(f"{EMIT} progress", spool, url, LOOP_STRICT="1", LOOP_STRICT_WAIT="1")
    assert strict.returncode == 1 and "not delivered" in strict.stderr
    wait_for(lambda: list(spool.glob("*.down")), message="the shipper to find the sidecar down")
    later = bash(f"{EMIT} progress; {EMIT} progress", spool, url)
    assert later.returncode == 0 and later.stderr.count("not reachable") == 1     # said once, not per call


def test_rate_limited_events_are_delivered_in_order(make_server, spool):
    server = make_server("--rate", "2", "--burst", "1")
    r = bash(f"for i in 1 2 3 4 5 6; do {EMIT} progress current:=$i total:=6 || exit 9; done", spool, server.url,
             LOOP_RUN="limited")
    assert r.returncode == 0, r.stderr
    assert [e["data"]["current"] for e in delivered(server, 6, run="limited")] == [1, 2, 3, 4, 5, 6]


def test_bad_usage_says_how_to_fix_it_and_queues_nothing(server, spool):
    for args, words in [(["Bad"], "bad event type"), (["x", "novalue"], "KEY=TEXT"), ([], "usage"),
                        (["x", "n:=oops"], "data.n: 'oops' after := is not accepted (not a JSON value"),
                        (["x", "n:={bad"], "data.n"), (["x", "p:=1e999"], "data.p"), (["x", "p:=nope"], "data.p")]:
        r = subprocess.run([EMIT, *args], capture_output=True, text=True, env=hook_env(spool, server.url))
        assert r.returncode == 2 and words in r.stderr
    assert not list(spool.glob("*.jsonl")) and events(server) == []


def test_an_event_the_sidecar_refuses_is_reported_once_and_the_others_arrive_in_order(server, spool):
    # What the hook cannot check itself: a body over the sidecar's 64 KB (413).
    r = bash(f"{EMIT} progress current:=1; {EMIT} progress current:=2 blob=\"$(head -c 70000 /dev/zero | tr '\\0' a)\"; "
             f"{EMIT} progress current:=3", spool, server.url, LOOP_RUN="refusing")
    assert r.returncode == 0
    got = delivered(server, 2, run="refusing")
    assert [e["data"]["current"] for e in got] == [1, 3]
    # The call after the shipper noted the refusal says it, once: the script's third call when the shipper was
    # that quick (a busy machine), else the next call. The note is written before event 3 is delivered.
    said = r.stderr
    if "refused" not in said:
        assert list(spool.glob("*.refused")), "the refusal is noted"
        note = bash(f"{EMIT} progress current:=4", spool, server.url, LOOP_RUN="refusing")
        assert note.returncode == 0
        said = note.stderr
    assert "refused 1 event" in said and "413" in said
    assert "refused" not in bash(f"{EMIT} progress current:=5", spool, server.url, LOOP_RUN="refusing").stderr


def test_the_library_reports_a_whole_task_and_leaves_the_callers_shell_alone(server, spool):
    script = f"""
set -euo pipefail
unset LOOP_RUN
before_opts="$(set -o; shopt -p)"
before_vars="$(compgen -v | grep -v -e '^BASH_' -e '^FUNCNAME$' -e '^_$' -e '^PIPESTATUS$' | sort)"
source {LIB}
cd /
loop_task_start "Nightly build" 2
loop_story_start build "Compile" "compiles" "no warnings"
loop_ac_done build 0 "compiles"
loop_ac_fail build 1 "no warnings" "3 warnings"
loop_output $'line one\\nline two'
loop_story_done build failed 1500
loop_progress 50 "half way"
loop_error deploy_failed "no route to host" true
loop_task_done
after_opts="$(set -o; shopt -p)"
after_vars="$(compgen -v | grep -v -e '^BASH_' -e '^FUNCNAME$' -e '^_$' -e '^PIPESTATUS$' -e '^before_' -e '^after_' | sort)"
[ "$before_opts" = "$after_opts" ] || {{ echo "options changed"; exit 3; }}
diff <(echo "$before_vars" | grep -v -e '^before_') <(echo "$after_vars") | grep '^>' || true
echo "run=$LOOP_RUN"
"""
    r = bash(script, spool, server.url)
    assert r.returncode == 0, r.stderr + r.stdout
    leaked = [ln for ln in r.stdout.split("\n") if ln.startswith(">")]
    assert leaked == ["> LOOP_RUN"], leaked          # the one documented variable
    run = r.stdout.strip().split("run=")[1]
    kinds = [(e["type"], e["run"]) for e in delivered(server, 9, run=run)]
    assert [k for k, _ in kinds] == ["task_started", "story_started", "ac_completed", "ac_failed", "output",
                                     "story_completed", "progress", "error_occurred", "task_completed"]
    assert {r_ for _, r_ in kinds} == {run}
    snap = server.get(f"/api/runs/{run}").json()
    assert snap["status"] == "failed" and snap["task_name"] == "Nightly build"
    assert [a["status"] for a in snap["stories"][0]["acceptance_criteria"]] == ["passed", "failed"]
    assert snap["output"] == "line one\nline two" and snap["last_error"]["retryable"] is True


USAGE_MISTAKES = ["loop_ac_done", "loop_ac_done build", "loop_ac_done build x", "loop_ac_fail", "loop_story_start",
                  "loop_story_done", "loop_story_done s passed soon", "loop_progress", "loop_progress lots",
                  "loop_task_start T many", "loop_error t m maybe", "loop_emit Bad"]


@pytest.mark.parametrize("call", USAGE_MISTAKES)
def test_a_usage_mistake_is_one_line_and_a_non_zero_return_never_an_exit(server, spool, call):
    r = bash(f"source {LIB}; {call}; echo \"status=$?\"", spool, server.url)
    assert r.stdout.strip() == "status=2" and len(r.stderr.strip().split("\n")) == 1, (r.stdout, r.stderr)
    # Under set -e (and -u, pipefail) the script carries on: a typo in a progress call never ends the work.
    strict = bash(f"set -euo pipefail; source {LIB}; {call}; echo carried-on", spool, server.url)
    assert strict.returncode == 0 and "carried-on" in strict.stdout and strict.stderr == r.stderr
    assert not list(spool.glob("*.jsonl"))          # nothing queued


LOOP_200 = (f"set -euo pipefail; source {LIB}; for i in $(seq 1 200); do loop_output \"line $i\"$'\\n'; done; "
            "echo finished")


def in_order(evs):
    return [e["data"]["text"] for e in evs] == [f"line {i}\n" for i in range(1, 201)]


@pytest.mark.parametrize("state", ["up", "hung", "down"])
def test_200_calls_return_at_once_and_are_delivered_in_order_once_the_sidecar_answers(tmp_path, spool, state):
    port = free_port()
    server = Server(tmp_path, port=port)            # the default rate limit: 10/s, burst 20
    if state != "down":
        server.start()
    if state == "hung":
        hang(server)
    try:
        # The calls end while the sidecar is hung or down: nothing waits on it (no timing here; the
        # cost of 200 calls against no sidecar at all is measured by `python -m bench --only firehose`).
        r = bash(LOOP_200, spool, server.url, LOOP_RUN=f"burst-{state}")
        assert r.returncode == 0 and r.stdout.strip() == "finished", r.stderr
        if state == "hung":
            resume(server)
        if state == "down":
            server.start()
        got = delivered(server, 200, run=f"burst-{state}", timeout=90)
        assert len(got) == 200 and in_order(got)
        wait_for(lambda: not list(spool.glob("*.pid")), timeout=30, message="the shipper to exit once drained")
        assert not list(spool.glob("*.jsonl"))
    finally:
        if server.proc:
            resume(server)
            server.stop()


def test_events_survive_a_sidecar_hung_for_a_minute_and_then_restarted(tmp_path, spool):
    server = Server(tmp_path, args=["--rate", "0"]).start()
    hang(server)
    r = bash(LOOP_200, spool, server.url, LOOP_RUN="long-hang")
    assert r.returncode == 0
    shipper = int(next(spool.glob("*.pid")).read_text())
    try:
        with pytest.raises(AssertionError):     # a minute hung: nothing may arrive, and nothing may be lost
            wait_for(lambda: not Path(f"/proc/{shipper}").exists(), timeout=61, interval=1, message="x")
    finally:
        os.killpg(server.proc.pid, signal.SIGKILL)   # ... then it dies instead of coming back, and restarts
        resume(server)
        server.proc.wait()
        server.proc = None
    again = Server(tmp_path, port=server.port, args=["--rate", "0"]).start()
    try:
        got = delivered(again, 200, run="long-hang", timeout=60)
        assert len(got) == 200 and in_order(got)
    finally:
        again.stop()


def test_the_shipper_outlives_the_script_and_its_session(server, spool):
    """The calling script is gone (and its process group killed) before anything is delivered."""
    hang(server)
    try:
        proc = subprocess.Popen(["bash", "-c", LOOP_200], env=hook_env(spool, server.url, LOOP_RUN="orphaned"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        assert proc.wait(120) == 0
        try:
            os.killpg(proc.pid, signal.SIGKILL)      # whatever is left of the script's process group
        except ProcessLookupError:
            pass
    finally:
        resume(server)
    got = delivered(server, 200, run="orphaned", timeout=60)
    assert in_order(got)


def test_spool_lines_are_json_one_per_event(server, spool):
    hang(server)
    try:
        bash(f"source {LIB}; loop_progress 5 'a \"quoted\" message'; loop_output $'two\\nlines'", spool, server.url,
             LOOP_RUN="lines")
        lines = next(spool.glob("*.jsonl")).read_text().strip().split("\n")
        assert [json.loads(ln)["type"] for ln in lines] == ["progress", "output"]
    finally:
        resume(server)
    delivered(server, 2, run="lines")
