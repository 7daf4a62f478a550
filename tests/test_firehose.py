"""Monitoring never slows or loses the work (issue 10), with real processes: a story printing 1.3 MB against
a sidecar with its default rate limit, refusals, a full disk, SIGTERM/SIGHUP, kill -9 of `loop run`, the
detached sidecar that outlives a run. Speed targets are measured by `python -m bench --only firehose`."""
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import requests

from conftest import ROOT, free_port, wait_for
from helpers import LOOP, pid_alive, story, transcript, write_prd

SEQ = "".join(f"{i}\n" for i in range(1, 200_001))


def run_env(tmp_path, **env):
    """Logs, spool and any sidecar's record under the test's own directory."""
    return {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_DATA_HOME": str(tmp_path / "data"),
            "LOOP_SPOOL_DIR": str(tmp_path / "spool"), **env}


def loop_run(prd, server_url, *args, env=None, timeout=120):
    return subprocess.run([*LOOP, "run", str(prd), "--server", server_url, "--no-update", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


LIFECYCLE = ("task_", "story_", "ac_", "error_occurred")


def test_a_story_printing_1_3_mb_passes_and_its_output_is_elided_visibly_never_silently(tmp_path, make_server):
    server = make_server()                      # the default rate limit: 10 events/s, burst 20
    prd = write_prd(tmp_path, [story("NOISY", "seq 1 200000"), story("AFTER", "echo done-after", priority=2)])
    r = loop_run(prd, server.url, "--run", "firehose", env=run_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "None" not in r.stderr
    snap = server.get("/api/runs/firehose").json()
    assert snap["status"] == "passed"                                   # the final state reached the sidecar
    events = transcript(server, "firehose")
    done = {e["data"]["story_id"]: e["data"] for e in events if e["type"] == "story_completed"}
    noisy = done["NOISY"]
    assert noisy["output_bytes"] == len(SEQ)                            # everything it printed, counted
    assert Path(noisy["log"]).read_text() == SEQ                        # ... and kept whole on disk
    assert Path(done["AFTER"]["log"]).read_text() == "done-after\n"
    outputs = [e["data"] for e in events if e["type"] == "output" and e["data"].get("story_id") == "NOISY"]
    text = "".join(d["text"] for d in outputs)
    assert text.endswith("199999\n200000\n")                            # the story's last lines arrived
    elided = [d["elided"] for d in outputs if d.get("elided")]
    assert elided and all(f"[… {n} bytes elided …]" in text for n in elided)   # visibly, with the count
    shown = len(text.encode()) - sum(len(f"[… {n} bytes elided …]\n".encode()) for n in elided)
    assert shown + sum(elided) == len(SEQ)                              # nothing lost without a marker
    assert max(len(d["text"]) for d in outputs) <= 4096
    assert f"{sum(elided)} bytes of output were elided" in r.stderr
    lifecycle = [e["type"] for e in events if e["type"].startswith(LIFECYCLE)]
    assert lifecycle == ["task_started", "story_started", "story_completed", "story_started", "story_completed",
                         "task_completed"]


def test_output_that_fits_the_rate_is_streamed_whole(tmp_path, server):
    prd = write_prd(tmp_path, [story("SMALL", "for i in $(seq 1 300); do echo line-$i; done")])
    assert loop_run(prd, server.url, "--run", "whole", env=run_env(tmp_path)).returncode == 0
    text = "".join(e["data"]["text"] for e in transcript(server, "whole") if e["type"] == "output")
    assert text == "".join(f"line-{i}\n" for i in range(1, 301)) and "elided" not in text


def test_a_full_disk_for_the_story_log_is_a_warning_not_a_failure(tmp_path, server):
    logs = tmp_path / "logs"
    (logs / "fulldisk").mkdir(parents=True)
    (logs / "fulldisk" / "S.log").symlink_to("/dev/full")             # every write: ENOSPC
    prd = write_prd(tmp_path, [story("S", "echo hello")])
    r = loop_run(prd, server.url, "--run", "fulldisk", env=run_env(tmp_path, LOOP_LOG_DIR=str(logs)))
    assert r.returncode == 0, r.stderr
    events = transcript(server, "fulldisk")
    warning = next(e["data"] for e in events if e["type"] == "error_occurred")
    assert warning["error_type"] == "log_write_failed" and "No space left" in warning["error_message"]
    done = next(e["data"] for e in events if e["type"] == "story_completed")
    assert done["status"] == "passed" and done["output_bytes"] == 6
    assert server.get("/api/runs/fulldisk").json()["status"] == "passed"


def test_an_event_the_sidecar_refuses_is_reported_once_with_its_reason_and_the_run_goes_on(tmp_path, server):
    huge = "x" * 70_000                                                 # story_started over the 64 KB body limit
    prd = write_prd(tmp_path, [story("BIG", "echo fine", description=huge), story("OK", "echo ok", priority=2)])
    r = loop_run(prd, server.url, "--run", "refused", env=run_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("refused 1 event: 413") == 1 and "(None)" not in r.stderr
    assert "1 event refused by the sidecar" in r.stderr and "413" in r.stderr.split("refused by the sidecar")[1]
    kinds = [e["type"] for e in transcript(server, "refused")]
    assert kinds.count("story_started") == 1 and kinds.count("story_completed") == 2 and kinds[-1] == "task_completed"


def test_a_wrong_token_is_reported_once_not_per_event(tmp_path, make_server):
    server = make_server(env={"LOOP_TOKEN": "right"})
    prd = write_prd(tmp_path, [story("A", "echo a"), story("B", "echo b", priority=2)])
    r = loop_run(prd, server.url, "--run", "tokenless", "--token", "wrong", env=run_env(tmp_path))
    assert r.returncode == 0
    assert r.stderr.count("the sidecar refused") == 1 and "401" in r.stderr
    assert "events refused by the sidecar" in r.stderr


STUBBORN = "trap '' INT; echo $$ > {pidfile}; sleep 60 & echo $! > {pidfile}.bg; wait"


@pytest.mark.parametrize("sig, reason", [(signal.SIGTERM, "terminated (SIGTERM)"), (signal.SIGHUP, "hangup (SIGHUP)")])
def test_sigterm_and_sighup_stop_the_run_as_ctrl_c_does(tmp_path, server, sig, reason):
    pidfile = tmp_path / "pid"
    prd = write_prd(tmp_path, [story("LONG", STUBBORN.format(pidfile=pidfile)), story("NEXT", "true", priority=2)])
    proc = subprocess.Popen([*LOOP, "run", str(prd), "--server", server.url, "--run", "signalled", "--grace", "1",
                             "--no-update"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=run_env(tmp_path))
    wait_for(lambda: Path(f"{pidfile}.bg").exists() and Path(f"{pidfile}.bg").read_text().strip(), timeout=30,
             message="the story to start")
    child, grandchild = int(pidfile.read_text()), int(Path(f"{pidfile}.bg").read_text())
    proc.send_signal(sig)
    assert proc.wait(30) == 130
    assert not pid_alive(child) and not pid_alive(grandchild)          # the grace path: SIGINT, then SIGKILL
    events = transcript(server, "signalled")
    assert events[-1]["type"] == "task_stopped" and events[-1]["data"]["reason"] == reason
    status = {e["data"]["story_id"]: e["data"]["status"] for e in events if e["type"] == "story_completed"}
    assert status == {"LONG": "cancelled", "NEXT": "cancelled"}


def test_timeout_of_a_streaming_run_restores_the_terminal(tmp_path, server):
    prd = write_prd(tmp_path, [story("SLOW", "echo started; sleep 60")])
    session = f"loop-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit"
    cmd = (f"cd {ROOT} && XDG_STATE_HOME={tmp_path}/state timeout --preserve-status 5 {sys.executable} -m loopstream "
           f"run {prd} --stream --no-update --grace 1 --server {server.url} --run timed; echo $? > {done}; sleep 60")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "90", "-y", "40", cmd], check=True)

    def pane(fmt: str) -> str:
        return subprocess.run(["tmux", "display-message", "-p", "-t", session, fmt], capture_output=True,
                              text=True).stdout.strip()
    try:
        wait_for(lambda: pane("#{alternate_on}") == "1", timeout=30, message="the live view (alternate screen)")
        wait_for(done.exists, timeout=40, message="timeout to stop the run")
        assert done.read_text().strip() == "130"
        assert pane("#{alternate_on}") == "0"                           # back on the main screen
        assert pane("#{cursor_flag}") == "1"                            # cursor shown
        screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
        assert "[STOPPED]" in screen                                    # the last frame stays, once
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert transcript(server, "timed")[-1]["data"]["reason"] == "terminated (SIGTERM)"


def test_a_quiet_run_announces_its_heartbeat_and_keeps_it(tmp_path, server):
    prd = write_prd(tmp_path, [story("QUIET", "sleep 2")])
    r = loop_run(prd, server.url, "--run", "quiet", "--heartbeat", "0.3", env=run_env(tmp_path))
    assert r.returncode == 0
    events = transcript(server, "quiet")
    assert events[0]["type"] == "task_started" and events[0]["data"]["heartbeat_s"] == 0.3
    alive = [e for e in events if e["type"] == "task_alive"]
    assert len(alive) >= 3 and all(e["data"] == {} for e in alive)
    assert events[-1]["type"] == "task_completed"                       # none after the end


def test_kill_9_of_loop_run_leaves_no_ghost(tmp_path, make_server):
    server = make_server("--rate", "0", "--stale-after", "2")
    prd = write_prd(tmp_path, [story("HANG", "echo going; sleep 60")])
    proc = subprocess.Popen([*LOOP, "run", str(prd), "--server", server.url, "--run", "ghost", "--no-update",
                             "--heartbeat", "0.5"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=run_env(tmp_path), start_new_session=True)
    try:
        wait_for(lambda: "going" in (server.get("/api/runs/ghost").json().get("output") or ""), timeout=30,
                 message="the story to run")
        os.killpg(proc.pid, signal.SIGKILL)                             # loop run and its story, no goodbye
        proc.wait()
        snap = wait_for(lambda: (s := server.get("/api/runs/ghost").json())["status"] != "running" and s,
                        timeout=30, message="the sidecar to finish the silent run")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert snap["status"] == "interrupted"
    last = transcript(server, "ghost")[-1]
    assert last["type"] == "task_interrupted" and last["data"]["reason"] and last["data"]["silent_s"] >= 1.5


def healthz_pid(url: str) -> int | None:
    try:
        return requests.get(url + "/healthz", timeout=1).json().get("pid")
    except requests.RequestException:
        return None


def test_the_sidecar_a_run_starts_outlives_it_detached_and_is_reused(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    env = run_env(tmp_path)
    prd = write_prd(tmp_path, [story("E", "echo embedded")])
    record = tmp_path / "state" / "loop" / "sidecar.json"
    try:
        first = loop_run(prd, url, "--run", "first", env=env, timeout=60)
        assert first.returncode == 0, first.stderr
        assert f"dashboard: {url}/" in first.stderr and "started a sidecar" in first.stderr
        pid = json.loads(record.read_text())["pid"]
        assert healthz_pid(url) == pid                                  # still serving after the run
        assert requests.get(url + "/api/runs/first", timeout=5).json()["status"] == "passed"
        assert os.getsid(pid) == pid                                    # its own session: no terminal, no SIGHUP
        assert "--idle-exit" in Path(f"/proc/{pid}/cmdline").read_text()
        second = loop_run(prd, url, "--run", "second", env=env, timeout=60)
        assert second.returncode == 0 and "started a sidecar" not in second.stderr
        assert healthz_pid(url) == pid                                  # the same one
        assert requests.get(url + "/api/runs/second", timeout=5).json()["status"] == "passed"
    finally:
        if record.exists():
            os.kill(json.loads(record.read_text())["pid"], signal.SIGTERM)
    wait_for(lambda: healthz_pid(url) is None, timeout=15, message="the detached sidecar to stop")


def test_a_detached_sidecar_exits_once_idle(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    prd = write_prd(tmp_path, [story("E", "echo embedded")])
    env = run_env(tmp_path, LOOP_SIDECAR_IDLE_EXIT="2")
    record = tmp_path / "state" / "loop" / "sidecar.json"
    try:
        assert loop_run(prd, url, "--run", "idle", env=env, timeout=60).returncode == 0
        pid = json.loads(record.read_text())["pid"]
        # The run's control stream counts as activity until the sidecar notices it closed: at its next
        # heartbeat write (15 s), or the one after.
        wait_for(lambda: not pid_alive(pid), timeout=90, interval=0.5, message="the idle sidecar to exit")
    finally:
        if record.exists() and pid_alive(json.loads(record.read_text())["pid"]):
            os.kill(json.loads(record.read_text())["pid"], signal.SIGTERM)


def test_what_a_hung_sidecar_could_not_take_is_handed_to_the_spool_and_delivered_after_the_run(tmp_path, server):
    gate = tmp_path / "gate"
    prd = write_prd(tmp_path, [story("A", f"while [ ! -f {gate} ]; do sleep 0.05; done; echo a-done"),
                               story("B", "echo b-done", priority=2)])
    env = run_env(tmp_path, LOOP_SHIP_IDLE="1")
    proc = subprocess.Popen([*LOOP, "run", str(prd), "--server", server.url, "--run", "handoff", "--no-update"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    wait_for(lambda: server.get("/api/runs/handoff").ok, timeout=30, message="the run to reach the sidecar")
    os.killpg(server.proc.pid, signal.SIGSTOP)               # hung: accepts connections, answers nothing
    try:
        gate.write_text("go")
        assert proc.wait(60) == 0                            # the run ends on time, with its stories' outcome
        err = proc.stderr.read()
        assert "not delivered" in err and "queued in" in err
    finally:
        os.killpg(server.proc.pid, signal.SIGCONT)
    snap = wait_for(lambda: (s := server.get("/api/runs/handoff").json())["status"] != "running" and s,
                    timeout=60, message="the run's end to arrive through the spool")
    assert snap["status"] == "passed"
    kinds = [e["type"] for e in transcript(server, "handoff") if e["type"].startswith(LIFECYCLE)]
    assert kinds == ["task_started", "story_started", "story_completed", "story_started", "story_completed",
                     "task_completed"]
    for pidfile in (tmp_path / "spool").glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


def test_a_sidecar_started_elsewhere_because_the_port_was_taken_is_found_and_reused(tmp_path):
    import socket

    env = run_env(tmp_path)
    prd = write_prd(tmp_path, [story("E", "echo embedded")])
    record = tmp_path / "state" / "loop" / "sidecar.json"
    with socket.socket() as squatter:                    # something else (not a sidecar) holds the wanted port
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        wanted = f"http://127.0.0.1:{squatter.getsockname()[1]}"
        try:
            first = loop_run(prd, wanted, "--run", "elsewhere-1", env=env, timeout=60)
            assert first.returncode == 0 and "started a sidecar" in first.stderr
            rec = json.loads(record.read_text())
            assert rec["wanted"] == wanted and rec["url"] != wanted
            second = loop_run(prd, wanted, "--run", "elsewhere-2", env=env, timeout=60)
            assert second.returncode == 0 and "reusing the sidecar" in second.stderr
            assert f"dashboard: {rec['url']}/" in second.stderr
            assert requests.get(rec["url"] + "/api/runs/elsewhere-2", timeout=5).json()["status"] == "passed"
        finally:
            if record.exists():
                os.kill(json.loads(record.read_text())["pid"], signal.SIGTERM)


def test_a_batch_waiting_for_its_turn_under_the_rate_limit_is_spooled_not_lost_at_exit(tmp_path, make_server):
    # At 0.5 event/s the outbox paces its batches for longer than the run's close budget: the batch
    # still waiting for its turn must go to the spool with the rest, never be lost or sent twice.
    server = make_server("--rate", "0.5", "--burst", "2", "--client-rate", "0")
    prd = write_prd(tmp_path, [story(f"S{i}", f"echo s{i}", priority=i) for i in range(1, 7)])
    env = run_env(tmp_path, LOOP_SHIP_IDLE="1")
    done = loop_run(prd, server.url, "--run", "paced", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = ["task_started"] + ["story_started", "story_completed"] * 6 + ["task_completed"]

    def lifecycle():
        r = server.get("/api/runs/paced/transcript")
        events = r.json()["events"] if r.ok else []
        return [e["type"] for e in events if e["type"].startswith(LIFECYCLE) and e["type"] != "task_alive"]

    wait_for(lambda: len(lifecycle()) >= len(expected), timeout=90, message="every lifecycle event to arrive")
    assert lifecycle() == expected
    for pidfile in (tmp_path / "spool").glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass
