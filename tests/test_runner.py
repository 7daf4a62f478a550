"""`loop run` for real: subprocess runner, real sidecar, real children and process groups."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT, Server, on_both_backends, wait_for
from helpers import LOOP, pid_alive, story, transcript, write_prd


def loop_run(prd_path, server, *args, env=None, timeout=60):
    return subprocess.run([*LOOP, "run", str(prd_path), "--server", server.url, *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def start_loop(prd_path, server, *args):
    return subprocess.Popen([*LOOP, "run", str(prd_path), "--server", server.url, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def types(events):
    return [e["type"] for e in events]


def test_a_run_reports_every_step_in_order_and_writes_passes_back(tmp_path, server):
    path = write_prd(tmp_path, [
        story("US-2", "echo second", priority=2, deps=["US-1"]),
        story("US-1", "echo hello; echo oops >&2", ["has output", {"text": "check passes", "check": "true"}],
              priority=1),
    ], verificationCommands={"lint": "true"})
    r = loop_run(path, server, "--run", "ok-run")
    assert r.returncode == 0, r.stderr
    events = transcript(server, "ok-run")
    assert types(events)[0] == "task_started" and types(events)[-1] == "task_completed"
    started = [e["data"]["story_id"] for e in events if e["type"] == "story_started"]
    assert started == ["US-1", "US-2"]                      # priority and dependency order
    ts = next(e for e in events if e["type"] == "task_started")["data"]
    assert ts["task_name"] == "Test project" and ts["story_count"] == 2 and "estimated_duration" in ts
    ac = [e["data"] for e in events if e["type"] == "ac_completed"]
    assert ac == [{"story_id": "US-1", "ac_index": 1, "ac_text": "check passes", "duration_ms": ac[0]["duration_ms"]}]
    out = {(e["data"]["stream"], e["data"]["text"]) for e in events if e["type"] == "output" and e["data"]["text"]}
    assert ("stdout", "hello\n") in out and ("stderr", "oops\n") in out
    done = [e["data"] for e in events if e["type"] == "story_completed"]
    assert [(d["story_id"], d["status"], d["attempts"]) for d in done] == [("US-1", "passed", 1), ("US-2", "passed", 1)]
    summary = events[-1]["data"]["summary"]
    assert summary["passed"] == 2 and summary["failed"] == 0
    assert all(s["passes"] for s in json.loads(path.read_text())["userStories"])
    snap = server.get("/api/runs/ok-run").json()
    assert snap["status"] == "passed" and snap["stories"][0]["acceptance_criteria"][0]["status"] == "passed"


def test_failures_exit_1_skip_dependents_and_leave_the_prd_alone_with_no_update(tmp_path, server):
    path = write_prd(tmp_path, [
        story("A", "echo trying", [{"text": "must hold", "check": "echo nope >&2; exit 3"}]),
        story("B", "true", deps=["A"], priority=2),
        story("C", "exit 4", priority=3),
    ])
    before = path.read_text()
    r = loop_run(path, server, "--run", "bad-run", "--no-update")
    assert r.returncode == 1
    events = transcript(server, "bad-run")
    failed = next(e["data"] for e in events if e["type"] == "ac_failed")
    assert failed["ac_index"] == 0 and "exited 3" in failed["error"] and "nope" in failed["error"]
    status = {e["data"]["story_id"]: e["data"]["status"] for e in events if e["type"] == "story_completed"}
    assert status == {"A": "failed", "B": "skipped", "C": "failed"}
    err = next(e["data"] for e in events if e["type"] == "error_occurred" and e["data"]["story_id"] == "C")
    assert err["error_type"] == "command_failed" and err["error_message"].startswith("exit 4")
    assert path.read_text() == before


def test_the_child_gets_the_story_on_stdin_and_loop_variables_and_can_emit(tmp_path, server):
    script = tmp_path / "agent.sh"
    script.write_text(f"""cat > {tmp_path}/stdin.json
echo "$LOOP_SERVER $LOOP_RUN $LOOP_STORY" > {tmp_path}/env.txt
{ROOT}/bin/loop-emit ac_completed story_id="$LOOP_STORY" ac_index:=0 ac_text="done by the agent"
""")
    path = write_prd(tmp_path, [story("S-9", None, ["agent says so"], description="the description")],
                     agent=f"bash {script} {{prompt_file}}")
    r = loop_run(path, server, "--run", "agent-run", "--no-update")
    assert r.returncode == 0, r.stderr
    stdin = json.loads((tmp_path / "stdin.json").read_text())
    assert stdin["id"] == "S-9" and stdin["description"] == "the description"
    assert "S-9" in stdin["prompt"] and "agent says so" in stdin["prompt"]
    assert (tmp_path / "env.txt").read_text().split() == [server.url, "agent-run", "S-9"]
    # The agent's hook queued its event and returned; its shipper delivers it (possibly after the run's end).
    ac = wait_for(lambda: [e for e in transcript(server, "agent-run") if e["type"] == "ac_completed"], timeout=30,
                  message="the agent's own event to be delivered")
    assert ac[0]["data"]["ac_text"] == "done by the agent"


def test_output_is_streamed_in_chunks_of_at_most_4kb(tmp_path, server):
    path = write_prd(tmp_path, [story("BIG", "head -c 50000 /dev/zero | tr '\\0' x")])
    assert loop_run(path, server, "--run", "big", "--no-update").returncode == 0
    outs = [e["data"]["text"] for e in transcript(server, "big") if e["type"] == "output"]
    assert "".join(outs) == "x" * 50000
    assert max(len(t) for t in outs) <= 4096


def test_max_attempts_retries_a_failed_story(tmp_path, server):
    flag = tmp_path / "flag"
    path = write_prd(tmp_path, [story("R", f"test -f {flag} || {{ touch {flag}; exit 1; }}")])
    r = loop_run(path, server, "--run", "retry", "--max-attempts", "3", "--no-update")
    assert r.returncode == 0
    events = transcript(server, "retry")
    assert [e["data"]["attempt"] for e in events if e["type"] == "story_started"] == [1, 2]
    assert next(e for e in events if e["type"] == "story_completed")["data"]["attempts"] == 2


def test_jobs_run_independent_stories_at_the_same_time(tmp_path, server):
    marks = tmp_path / "marks"
    cmd = f"echo start $LOOP_STORY >> {marks}; sleep 1; echo end $LOOP_STORY >> {marks}"
    path = write_prd(tmp_path, [story("J1", cmd), story("J2", cmd), story("J3", "true", deps=["J1", "J2"])])
    assert loop_run(path, server, "--run", "jobs", "--jobs", "2", "--no-update").returncode == 0
    lines = marks.read_text().split("\n")
    assert lines[0].startswith("start") and lines[1].startswith("start")   # both began before either ended
    started = [e["data"]["story_id"] for e in transcript(server, "jobs") if e["type"] == "story_started"]
    assert started[-1] == "J3"


STUBBORN = "trap '' INT; echo $$ > {pidfile}; sleep 60 & echo $! > {pidfile}.bg; wait"


@pytest.mark.parametrize("how", ["loop stop", "ctrl-c", "dashboard"])
def test_stop_interrupts_the_group_kills_after_grace_and_leaves_no_orphan(tmp_path, server, how):
    pidfile = tmp_path / "pid"
    path = write_prd(tmp_path, [story("LONG", STUBBORN.format(pidfile=pidfile)), story("NEXT", "true", priority=2)])
    proc = start_loop(path, server, "--run", "stoppable", "--grace", "1", "--no-update")
    wait_for(lambda: Path(f"{pidfile}.bg").exists() and Path(f"{pidfile}.bg").read_text().strip(), timeout=20,
             message="the story to start")
    child, grandchild = int(pidfile.read_text()), int(Path(f"{pidfile}.bg").read_text())
    if how == "loop stop":
        r = subprocess.run([*LOOP, "stop", "stoppable", "--reason", "wrong branch", "--server", server.url],
                           capture_output=True, text=True, timeout=20)
        assert "stop requested" in r.stdout
        reason = "wrong branch"
    elif how == "ctrl-c":
        proc.send_signal(signal.SIGINT)
        reason = "interrupted (Ctrl-C)"
    else:
        wait_for(lambda: server.get("/api/runs/stoppable").ok, message="the run to reach the sidecar")
        assert server.post({"type": "stop_requested", "run": "stoppable", "data": {"reason": "from UI"}}).ok
        reason = "from UI"
    assert proc.wait(30) == 130
    assert not pid_alive(child) and not pid_alive(grandchild)
    events = transcript(server, "stoppable")
    assert types(events)[-1] == "task_stopped" and events[-1]["data"]["reason"] == reason
    status = {e["data"]["story_id"]: e["data"]["status"] for e in events if e["type"] == "story_completed"}
    assert status == {"LONG": "cancelled", "NEXT": "cancelled"}
    again = subprocess.run([*LOOP, "stop", "stoppable", "--server", server.url], capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to do" in again.stdout     # idempotent


def test_pause_lets_the_running_story_finish_and_starts_none_until_resume(tmp_path, server):
    gate = tmp_path / "gate"
    path = write_prd(tmp_path, [story("P1", f"while [ ! -f {gate} ]; do sleep 0.05; done"),
                                story("P2", "true", priority=2)])
    proc = start_loop(path, server, "--run", "pausable", "--no-update")
    wait_for(lambda: server.get("/api/runs/pausable").ok and
             server.get("/api/runs/pausable").json()["current_story"] == "P1", message="P1 to run")
    ctl = lambda action: subprocess.run([*LOOP, action, "pausable", "--server", server.url],  # noqa: E731
                                        capture_output=True, text=True, timeout=20).stdout
    assert "pause requested" in ctl("pause")
    wait_for(lambda: server.get("/api/runs/pausable").json()["status"] == "paused", message="the runner to pause")
    gate.write_text("go")
    wait_for(lambda: server.get("/api/runs/pausable").json()["counts"]["completed"] == 1, message="P1 to finish")
    time.sleep(0.5)  # a window in which P2 must not start
    assert server.get("/api/runs/pausable").json()["counts"]["running"] == 0
    assert "resume requested" in ctl("resume")
    assert proc.wait(30) == 0
    kinds = types(transcript(server, "pausable"))
    assert kinds.index("task_paused") < kinds.index("task_resumed")
    assert kinds.index("task_resumed") < [i for i, e in enumerate(transcript(server, "pausable"))
                                          if e["type"] == "story_started"][1]


@on_both_backends
def test_a_sidecar_killed_mid_run_loses_nothing_once_it_is_back(tmp_path, make_server, backend):
    server = make_server("--rate", "0")
    path = write_prd(tmp_path, [
        story("K1", "for i in $(seq 1 30); do echo line-$i; sleep 0.1; done"),
        story("K2", "for i in $(seq 31 45); do echo line-$i; sleep 0.1; done", priority=2)])
    proc = start_loop(path, server, "--run", "survivor", "--no-update")
    wait_for(lambda: server.get("/api/runs/survivor").ok and
             "line-5" in server.get("/api/runs/survivor").json()["output"], message="output to flow")
    server.kill9()
    time.sleep(1.0)   # the run goes on with the sidecar down
    again = Server(tmp_path, port=server.port, args=["--rate", "0"], backend=backend).start()
    try:
        assert proc.wait(60) == 0
        events = transcript(again, "survivor")
        assert types(events)[0] == "task_started" and types(events)[-1] == "task_completed"
        text = "".join(e["data"]["text"] for e in events if e["type"] == "output")
        assert text == "".join(f"line-{i}\n" for i in range(1, 46))
        ids = [tuple(map(int, e["id"].split("-"))) for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        kinds = types(events)
        assert kinds.count("story_started") == 2 and kinds.count("story_completed") == 2
    finally:
        again.stop()


@on_both_backends
def test_a_rate_limit_delays_events_but_loses_none(tmp_path, make_server):
    server = make_server("--rate", "5", "--burst", "3")
    path = write_prd(tmp_path, [story(f"S{i}", f"echo s{i}", [{"text": "ok", "check": "true"}], priority=i)
                                for i in range(6)])
    assert loop_run(path, server, "--run", "limited", "--no-update").returncode == 0
    events = transcript(server, "limited")
    assert types(events).count("story_completed") == 6 and types(events)[-1] == "task_completed"
    assert "loop_rate_limited_total 0" not in server.get("/metrics").text


def test_plain_lines_when_not_a_terminal(tmp_path, server):
    path = write_prd(tmp_path, [story("PL", "printf 'a\\033[31mred\\033[0m\\n'")])
    r = loop_run(path, server, "--run", "plain", "--stream", "--no-update")
    lines = r.stdout.strip().split("\n")
    assert any("task_started" in ln for ln in lines) and any("story_completed PL passed" in ln for ln in lines)
    assert "\033" not in r.stdout and "ared" in r.stdout
    assert "╔" not in r.stdout


def test_the_demo_prd_from_the_readme_passes_after_one_retry_with_real_output(server):
    path = ROOT / "prds" / "demo.json"
    before = path.read_text()
    r = loop_run(path, server, "--run", "demo", "--no-update", "--max-attempts", "2", timeout=120)
    assert r.returncode == 0, r.stderr
    events = transcript(server, "demo")
    kinds = types(events)
    assert kinds.count("ac_failed") == 1 and kinds.count("story_completed") == 4
    assert "compiling core" in "".join(e["data"].get("text", "") for e in events if e["type"] == "output")
    assert path.read_text() == before


def test_the_shell_example_reports_a_whole_task(server, tmp_path):
    r = subprocess.run([str(ROOT / "examples" / "nightly-build.sh")], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "LOOP_SERVER": server.url, "LOOP_RUN": "nightly",
                            "LOOP_SPOOL_DIR": str(tmp_path / "spool"), "LOOP_SHIP_IDLE": "1"})
    assert r.returncode == 0, r.stderr
    # The hooks queue and return; their shipper delivers the run's end shortly after the script's.
    snap = wait_for(lambda: (s := server.get("/api/runs/nightly").json()).get("status") != "running" and s,
                    timeout=30, message="the script's run to reach the sidecar")
    assert snap["status"] == "failed" and snap["counts"]["completed"] == 1 and snap["counts"]["failed"] == 2
