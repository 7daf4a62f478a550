"""The README's bash-loop recipe, run for real: a ralph-style loop of `fake_claude | loop adapt claude
--story …` iterations makes a run whose stories start, finish and count as in `loop run`, `--last`
finishes the run, and a stop requested for the run ends the pipeline with 130 so the loop ends."""
import os
import shlex
import signal
import subprocess
import sys
import textwrap

from conftest import wait_for
from helpers import AGENTS, LOOP

FAKE = shlex.join([sys.executable, str(AGENTS / "fake_claude.py")])


def bash_loop(server, run: str, sessions: list[str], delay: float = 0.01) -> subprocess.Popen:
    """The recipe: one `claude | loop adapt` per story, the last with --last; a 130 ends the loop."""
    script = textwrap.dedent(f"""\
        set -o pipefail
        stories=({' '.join(f'US-{i + 1}' for i in range(len(sessions)))})
        sessions=({' '.join(sessions)})
        for i in "${{!stories[@]}}"; do
          last=(); [ "$i" -eq $(( ${{#stories[@]}} - 1 )) ] && last=(--last)
          {FAKE} "${{sessions[$i]}}" --delay {delay} \\
            | {shlex.join(LOOP)} adapt claude --server {server.url} --run {run} --story "${{stories[$i]}}" \\
                --title "Story $i" "${{last[@]}}" >/dev/null
          code=$?
          [ "$code" -eq 130 ] && exit 130
        done
        exit 0
        """)
    env = {k: v for k, v in os.environ.items() if k not in ("LOOP_RUN", "LOOP_STORY")}
    return subprocess.Popen(["bash", "-c", script], env=env, start_new_session=True, stderr=subprocess.PIPE,
                            text=True)


def test_a_bash_loop_of_two_iterations_makes_a_run_as_loop_run_would(server):
    server.post({"type": "task_started", "run": "ralph", "data": {"task_name": "Nightly", "story_count": 2}})
    loop = bash_loop(server, "ralph", ["clean.jsonl", "error_result.jsonl"])
    assert loop.wait(60) == 0, loop.stderr.read()
    run = server.get("/api/runs/ralph").json()
    assert run["status"] == "failed"                    # the second agent's result is an error
    assert [(s["id"], s["title"], s["status"]) for s in run["stories"]] == [
        ("US-1", "Story 0", "passed"), ("US-2", "Story 1", "failed")]
    assert run["counts"]["completed"] == 1 and run["counts"]["failed"] == 1 and run["current_story"] is None
    assert run["stories"][0]["agent"]["tool_calls"] >= 1 and run["finished_at"] is not None


def test_a_run_made_only_of_adapt_calls_passes_and_finishes_with_last(server):
    loop = bash_loop(server, "only-adapt", ["clean.jsonl", "clean.jsonl"])
    assert loop.wait(60) == 0, loop.stderr.read()
    run = server.get("/api/runs/only-adapt").json()
    assert run["status"] == "passed" and [s["status"] for s in run["stories"]] == ["passed", "passed"]


def test_a_story_is_running_with_its_agent_line_while_the_agent_works(server):
    loop = bash_loop(server, "working", ["clean.jsonl"], delay=0.4)
    try:
        def running():
            run = server.get("/api/runs/working").json()
            story = (run.get("stories") or [{}])[0]
            return run if story.get("status") == "running" and (story.get("agent") or {}).get("last_tool") else None

        run = wait_for(running, timeout=30, message="the story to run with a tool call")
        assert run["current_story"] == "US-1" and run["status"] == "running"
        assert loop.wait(60) == 0
    finally:
        if loop.poll() is None:
            os.killpg(loop.pid, signal.SIGKILL)


def test_a_stop_for_the_run_ends_the_pipeline_with_130_and_the_loop_with_it(server):
    loop = bash_loop(server, "stoppable", ["clean.jsonl", "clean.jsonl"], delay=1.0)
    try:
        wait_for(lambda: server.get("/api/runs/stoppable").status_code == 200, timeout=30,
                 message="the first story to start")
        r = subprocess.run([*LOOP, "stop", "stoppable", "--reason", "wrong branch", "--server", server.url],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert loop.wait(30) == 130                    # the loop ended: no second story started
        err = loop.stderr.read()
        assert "stopped: wrong branch" in err
    finally:
        if loop.poll() is None:
            os.killpg(loop.pid, signal.SIGKILL)
    run = server.get("/api/runs/stoppable").json()
    assert run["status"] == "stopped" and run["stop_reason"] == "wrong branch"
    assert [(s["id"], s["status"]) for s in run["stories"]] == [("US-1", "cancelled")]


def test_a_stop_without_a_story_stops_the_run_and_a_later_adapt_of_that_run_runs(server):
    env = {k: v for k, v in os.environ.items() if k not in ("LOOP_RUN", "LOOP_STORY")}
    first = subprocess.Popen([*LOOP, "adapt", "claude", "--run", "fixed", "--server", server.url],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=env)
    try:
        first.stdin.write((AGENTS / "clean.jsonl").read_text().splitlines()[0] + "\n")
        first.stdin.flush()
        wait_for(lambda: server.get("/api/runs/fixed").status_code == 200, 30, message="the run to exist")
        subprocess.run([*LOOP, "stop", "fixed", "--server", server.url], check=True, capture_output=True)
        assert first.wait(30) == 130
    finally:
        first.kill()
    assert server.get("/api/runs/fixed").json()["status"] == "stopped"      # the stop was answered
    again = subprocess.run([*LOOP, "adapt", "claude", "--run", "fixed", "--server", server.url],
                           input=(AGENTS / "clean.jsonl").read_text(), capture_output=True,
                           text=True, timeout=60, env=env)
    assert again.returncode == 0, again.stderr                              # no stale stop ends the next one


def test_an_agent_that_prints_nothing_is_a_failed_story_and_last_still_finishes_the_run(server):
    env = {k: v for k, v in os.environ.items() if k not in ("LOOP_RUN", "LOOP_STORY")}
    r = subprocess.run([*LOOP, "adapt", "claude", "--run", "silent-agent", "--story", "US-9", "--last",
                        "--server", server.url], input="", capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    run = wait_for(lambda: (s := server.get("/api/runs/silent-agent")).status_code == 200 and s.json(), 30,
                   message="the run")
    assert run["status"] == "failed" and [(s["id"], s["status"]) for s in run["stories"]] == [("US-9", "failed")]
