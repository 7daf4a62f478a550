"""`from loopstream import Reporter` and `loopstream.tqdm` against a real sidecar (and a down or hung one)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import loopstream
from conftest import free_port, wait_for
from helpers import finished, transcript
from loopstream import Reporter


def run_script(code: str, env: dict, timeout: float = 60):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


def test_reporter_delivers_every_event_in_order_and_finishes_passed(server):
    with Reporter(run="rep-ok", name="Nightly", server=server.url) as r:
        r.progress(40, "compiling")
        r.output("compiled 12 files\n")
        r.emit("custom", k=1, nested={"a": [1, 2]})
        for i in range(300):
            r.progress(current=i, total=300)
        r.output("x" * 10_000)                     # more than one output event's worth
    events = wait_for(lambda: finished(server, "rep-ok"), message="the run to finish")
    assert [e["type"] for e in events[:4]] == ["task_started", "progress", "output", "custom"]
    assert events[0]["data"]["task_name"] == "Nightly"
    assert events[1]["data"] == {"percent": 40, "message": "compiling"}
    assert events[3]["data"] == {"k": 1, "nested": {"a": [1, 2]}}
    assert [e["data"]["current"] for e in events if "current" in e["data"]] == list(range(300))
    outputs = [e["data"]["text"] for e in events if e["type"] == "output"]
    assert "".join(outputs) == "compiled 12 files\n" + "x" * 10_000 and max(map(len, outputs)) <= 4096
    assert events[-1]["type"] == "task_completed" and events[-1]["data"]["status"] == "passed"
    snap = server.get("/api/runs/rep-ok").json()
    assert snap["status"] == "passed" and snap["task_name"] == "Nightly"


def test_an_exception_fails_the_run_with_its_message_and_still_propagates(server):
    with pytest.raises(RuntimeError, match="disk full"):
        with Reporter(run="rep-fail", server=server.url) as r:
            r.progress(10)
            raise RuntimeError("disk full")
    events = wait_for(lambda: finished(server, "rep-fail"))
    assert events[-1]["data"]["status"] == "failed"
    assert events[-1]["data"]["reason"] == "RuntimeError: disk full"
    snap = server.get("/api/runs/rep-fail").json()
    assert snap["status"] == "failed" and snap["last_error"]["error_message"] == "RuntimeError: disk full"


def test_caller_mistakes_raise_at_the_call_and_leave_the_run_intact(server):
    with Reporter(run="rep-bad", server=server.url) as r:
        with pytest.raises(ValueError, match="event type"):
            r.emit("Not A Type")
        with pytest.raises(ValueError, match="finite"):
            r.progress(float("nan"))
        with pytest.raises(ValueError, match="JSON"):
            r.emit("custom", when=object())
        r.emit("custom", fine=True)
    assert [e["type"] for e in wait_for(lambda: finished(server, "rep-bad"))] == [
        "task_started", "custom", "task_completed"]
    with pytest.raises(ValueError, match="run must match"):
        Reporter(run="bad run", server=server.url)


# The same block of 500 calls, in a process of its own; it prints how long the block and the exit took.
BLOCK = """
    import sys, time
    from loopstream import Reporter
    t0 = time.monotonic()
    with Reporter(run="rep-fault", name="Fault", server=sys.argv[1] if len(sys.argv) > 1 else None) as r:
        for i in range(500):
            r.progress(current=i, total=500)
            r.output(f"line {i}\\n")
        t1 = time.monotonic()
    print(f"block {t1 - t0:.3f} exit {time.monotonic() - t1:.3f}")
"""


def test_sidecar_down_neither_slows_nor_breaks_the_block(tmp_path):
    r = run_script(BLOCK, {"LOOP_SERVER": f"http://127.0.0.1:{free_port()}"}, timeout=30)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("cannot reach the sidecar") == 2          # warned once, and once at the end:
    assert r.stderr.count("carrying on") == 1
    assert "could not be delivered" in r.stderr                      # and says what was lost
    block, exit_s = map(float, r.stdout.split()[1::2])
    print(f"sidecar down: block {block:.3f} s, exit {exit_s:.3f} s")


def test_hung_sidecar_neither_blocks_the_calls_nor_holds_the_exit(server):
    os.killpg(server.proc.pid, signal.SIGSTOP)     # the master and its gevent worker
    try:
        r = run_script(BLOCK, {"LOOP_SERVER": server.url}, timeout=30)   # the deadline: a blocking call
    finally:                                                            # would cost 5 s per event
        os.killpg(server.proc.pid, signal.SIGCONT)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "could not be delivered" in r.stderr
    block, exit_s = map(float, r.stdout.split()[1::2])
    print(f"sidecar hung: block {block:.3f} s, exit {exit_s:.3f} s")


def test_refusing_sidecar_never_raises(make_server):
    guarded = make_server("--rate", "0", "--token", "s3cret")
    r = run_script(BLOCK, {"LOOP_SERVER": guarded.url, "LOOP_TOKEN": ""}, timeout=30)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "401" in r.stderr
    assert guarded.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).json()["runs"] == []


def test_tqdm_sends_at_most_one_progress_per_second_and_a_final_100(server):
    started = time.monotonic()
    with Reporter(run="rep-tqdm", server=server.url):
        for _ in loopstream.tqdm(range(10_000), desc="work"):
            time.sleep(0.0002)
    took = time.monotonic() - started
    progress = [e["data"] for e in wait_for(lambda: finished(server, "rep-tqdm")) if e["type"] == "progress"]
    print(f"tqdm: {len(progress)} progress events over {took:.2f} s")
    assert 2 <= len(progress) <= int(took) + 2     # one at the start, at most one per second, the final
    assert progress[-1]["percent"] == 100 and progress[-1]["current"] == 10_000 and progress[-1]["total"] == 10_000
    assert progress[-1]["message"].startswith("work: 100%")
    assert all(p["percent"] < 100 for p in progress[:-1])


def test_a_tqdm_bar_without_a_reporter_is_a_run_of_its_own(server):
    r = run_script("""
        import loopstream
        for _ in loopstream.tqdm(range(50), desc="alone", run="bar-own"):
            pass
        for _ in loopstream.tqdm(range(50), desc="cut short", run="bar-short"):
            break
    """, {"LOOP_SERVER": server.url})
    assert r.returncode == 0, r.stderr
    own = wait_for(lambda: finished(server, "bar-own"))
    assert own[0]["data"]["task_name"] == "alone" and own[-1]["data"]["status"] == "passed"
    assert [e["data"]["percent"] for e in own if e["type"] == "progress"][-1] == 100
    short = wait_for(lambda: finished(server, "bar-short"))
    assert short[-1]["data"]["status"] == "failed" and "ended at 0 of 50" in short[-1]["data"]["reason"]


def test_inside_loop_exec_a_bar_reports_into_the_inherited_run(server):
    r = run_script("""
        import loopstream
        for _ in loopstream.trange(5, desc="child"):
            pass
    """, {"LOOP_SERVER": server.url, "LOOP_RUN": "outer-run"})
    assert r.returncode == 0, r.stderr
    events = wait_for(lambda: transcript(server, "outer-run"))
    assert events and {e["type"] for e in events} == {"progress"}     # the run's start and end are not its own
    wait_for(lambda: transcript(server, "outer-run")[-1]["data"].get("percent") == 100)


def test_importing_loopstream_without_tqdm_works(server):
    r = run_script("""
        import sys
        sys.modules["tqdm"] = None          # as if it were not installed
        import loopstream
        from loopstream import Reporter
        with Reporter(run="no-tqdm") as r:
            r.progress(50)
        try:
            loopstream.tqdm
        except ImportError as e:
            print(e)
    """, {"LOOP_SERVER": server.url})
    assert r.returncode == 0, r.stderr
    assert "pip install 'loopstream[tqdm]'" in r.stdout
    assert wait_for(lambda: finished(server, "no-tqdm"))[-1]["data"]["status"] == "passed"


def test_a_quiet_reporter_keeps_its_run_alive_and_a_killed_one_is_finished_as_interrupted(server):
    with Reporter(run="rep-alive", server=server.url, heartbeat_s=0.2) as r:
        r.progress(1)
        wait_for(lambda: "task_alive" in [e["type"] for e in transcript(server, "rep-alive")], 10,
                 message="a task_alive while the block is quiet")
    assert transcript(server, "rep-alive")[0]["data"]["heartbeat_s"] == 0.2

    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time
        from loopstream import Reporter
        with Reporter(run="rep-ghost", heartbeat_s=0.3) as r:
            r.progress(5, "working")
            time.sleep(300)
    """)], env={**os.environ, "LOOP_SERVER": server.url})
    try:
        wait_for(lambda: transcript(server, "rep-ghost"), 20, message="the run to start")
    finally:
        proc.kill()
        proc.wait()
    wait_for(lambda: server.get("/api/runs/rep-ghost").json()["status"] == "interrupted", 20,
             message="the sidecar to finish the silent run as interrupted")
