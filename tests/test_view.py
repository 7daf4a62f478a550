"""The terminal view: the pure box, and `loop run --stream` in a real terminal (tmux)."""
import json
import shutil
import subprocess
import sys
import uuid

from rich.cells import cell_len

from conftest import FIXTURES, ROOT, wait_for
from helpers import LOOP
from loopstream.view import clean, plain_line, render_box


def full_run_midway():
    events = json.loads((FIXTURES / "full_run.json").read_text())["events"][:5]
    from loopstream.core import state
    return state.reduce(events)


def test_box_shows_task_progress_story_checklist_and_output():
    lines = render_box(full_run_midway(), width=70, now=104.0, connection="live http://x")
    text = "\n".join(lines)
    assert lines[0].startswith("╔") and lines[-1].startswith("╚")
    assert "Task: User Authentication" in text
    assert "0/3 stories" in text
    assert "Current Story: US-001 - Login" in text
    assert "✅ POST /login" in text and "✅ JWT" in text and "⏳ profile" in text
    assert "> building" in text and "Sidecar: live http://x" in text
    assert "Time: 4s elapsed | ~9m 56s remaining" in text   # from estimated_duration 600


def test_every_line_is_exactly_the_requested_width_in_cells():
    snap = full_run_midway()
    snap["stories"][0]["title"] = "a very long title " * 20 + "界界界"
    for width in (40, 63, 100):
        assert {cell_len(line) for line in render_box(snap, width=width, now=104.0)} == {width}


def test_escape_sequences_and_control_characters_never_reach_the_terminal():
    snap = full_run_midway()
    snap["output"] = "ok\x1b[2J\x1b]0;title\x07\x1b[31mred\x1b[0m\x07\x08done\n"
    snap["task_name"] = "evil\x1b[1Aname"
    text = "\n".join(render_box(snap, width=80, now=104.0))
    assert "\x1b" not in text and "\x07" not in text and "\x08" not in text
    assert "okreddone" in text and "evilname" in text
    assert clean("a\rb") == "b" and clean("tab\there") == "tab    here"


def test_plain_line_is_one_line_per_event():
    line = plain_line({"type": "output", "run": "r", "ts": 0, "data": {"story_id": "S", "stream": "stdout",
                                                                       "text": "a\nb\x1b[1m\n"}})
    assert "\n" not in line and "a ⏎ b" in line and "\x1b" not in line


def test_stream_view_in_a_real_terminal_is_drawn_once_and_updated_in_place(tmp_path, server):
    assert shutil.which("tmux"), "tmux is required (bin/test installs it)"
    prd = tmp_path / "prd.json"
    prd.write_text(json.dumps({"project": "Tmux view", "userStories": [
        {"id": "T-1", "title": "first", "command": "for i in 1 2 3 4 5 6; do echo tick-$i; sleep 0.4; done",
         "acceptanceCriteria": [{"text": "crit one", "check": "true"}, "crit two"], "priority": 1},
        {"id": "T-2", "title": "second", "command": "sleep 1; echo bye", "priority": 2}]}))
    session = f"loop-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exit"
    cmd = (f"cd {ROOT} && python -m loopstream run {prd} --stream --no-update --server {server.url} "
           f"--run tmuxrun; echo $? > {done}; sleep 30")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "40", cmd], check=True)
    try:
        def screen():
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                  text=True).stdout

        first = wait_for(lambda: "tick-2" in screen() and screen(), timeout=30, message="the box with output")
        assert "Current Story: T-1 - first" in first and "⏳ crit one" in first
        subprocess.run(["tmux", "resize-window", "-t", session, "-x", "64"], check=True)
        wait_for(lambda: done.exists(), timeout=40, message="the run to end")
        final = screen()
        history = subprocess.run(["tmux", "capture-pane", "-p", "-S", "-", "-t", session],
                                 capture_output=True, text=True).stdout
        assert done.read_text().strip() == "0"
        assert "[PASSED]" in final and "2/2 stories" in final
        assert history.count("Task: Tmux view") == 1                     # redrawn in place, never scrolled
        assert history.count("╔") == 1
        box = [ln for ln in final.split("\n") if ln.startswith(("║", "╔", "╚", "╠"))]
        assert {cell_len(ln) for ln in box} == {64}                      # fits the resized terminal
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


FORGED = "12:00:00 spoof task_completed passed=9"
BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


def test_a_carriage_return_in_a_field_cannot_forge_or_hide_the_start_of_a_plain_line():
    line = plain_line({"type": "note", "run": "spoof", "ts": 0, "data": {"message": f"ok\r{FORGED}\u202eevil"}})
    assert "\r" not in line and "\u202e" not in line
    assert line.split(" ")[1:3] == ["spoof", "note"] and line.endswith(f"ok {FORGED}evil")


def test_every_box_row_and_runs_row_is_free_of_cr_c1_and_bidi_controls():
    from loopstream.view import runs_table
    snap = full_run_midway()
    nasty = f"a\rb\x85c\x9bd{BIDI}e\x1b]0;x"
    snap["task_name"] = nasty
    snap["stories"][0]["title"] = nasty
    snap["last_error"] = {"error_type": nasty, "error_message": {"k": nasty}}
    snap["control"]["stop_requested"] = nasty
    rows = render_box(snap, width=80, now=104.0) + runs_table([{**snap, "status": nasty}], 80)[1:]
    text = "\n".join(rows)
    assert not any(ch in text for ch in "\r\x85\x9b\x1b" + BIDI)
    assert "Task: a b" in text and "Current Story: US-001 - a b" in text
    assert {cell_len(line) for line in rows[:-1]} == {80}


def test_loop_watch_piped_prints_no_forged_line_and_no_bidi_against_a_real_sidecar(server):
    import subprocess
    import sys

    import requests

    server.post({"type": "task_started", "run": "spoof", "data": {"task_name": "real", "story_count": 1}})
    cmd = f"{sys.executable} -m loopstream watch spoof --server {server.url} | cat"
    proc = subprocess.Popen(["bash", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        wait_for(lambda: requests.get(server.url + "/healthz", timeout=2).json()["subscribers"] >= 1,
                 message="loop watch to connect")
        server.post([
            {"type": "note", "run": "spoof", "data": {"message": f"ok\r{FORGED}"}},
            {"type": "output", "run": "spoof", "data": {"stream": "stdout", "text": f"x\r{FORGED}\n"}},
            {"type": "error_occurred", "run": "spoof", "data": {"error_type": "bidi",
                                                                "error_message": f"\u202e{BIDI}gnp.exe"}},
            {"type": "story_completed", "run": "spoof", "data": {"story_id": f"S\r{FORGED}", "status": "passed"}},
            {"type": "task_completed", "run": "spoof", "data": {"summary": {"passed": 1}}}])
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    text = out.decode("utf-8")
    assert "\r" not in text and "\x1b" not in text and not any(ch in text for ch in BIDI)
    lines = text.split("\n")
    typed = [ln.split(" ")[2] for ln in lines if len(ln.split(" ")) > 2 and ln[:2].isdigit()]
    assert typed.count("task_completed") == 1 and typed[-1] == "task_completed"
    assert any(ln.split(" ")[1:3] == ["spoof", "note"] and FORGED in ln for ln in lines)
    assert "gnp.exe" in text


# -- issue 20: runs that are not PRDs read right; a stop says why, last -------------------------------------



def fixture_snapshot(name, upto=None):
    from loopstream.core import state
    return state.reduce(json.loads((FIXTURES / f"{name}.json").read_text())["events"][:upto])


def test_a_command_run_shows_its_command_and_exit_code_and_no_empty_progress():
    running = "\n".join(render_box(fixture_snapshot("exec_failed", 2), width=70, now=3.0))
    assert "Command: make test" in running and "> cc -o app app.c" in running
    assert "Progress" not in running and "estimating" not in running and "stories" not in running
    done = "\n".join(render_box(fixture_snapshot("exec_failed"), width=70, now=60.0))
    assert "Command: make test   [FAILED]" in done and "`make test` failed: exit 3 after 5s" in done
    assert "Progress" not in done and "stories" not in done
    named = "\n".join(render_box(fixture_snapshot("exec_stopped"), width=70, now=60.0))
    assert "Task: Nightly   [STOPPED]" in named and 'Command: ["sleep",60]' in named
    events = json.loads((FIXTURES / "exec_failed.json").read_text())["events"]
    assert plain_line(events[-1]).endswith("make-1 task_completed failed: exit 3 after 5s")


def test_a_run_with_progress_events_keeps_its_bar_and_a_prd_run_its_counts():
    plain = "\n".join(render_box(fixture_snapshot("plain_script"), width=70, now=60.0))
    assert "Progress: [" in plain and "75%" in plain and "Progress: almost" in plain
    prd = "\n".join(render_box(full_run_midway(), width=70, now=104.0))
    assert "0/3 stories" in prd and "Command" not in prd and "exit" not in prd


def test_a_stopped_run_ends_the_box_with_its_reason():
    for name in ("stopped_run", "exec_stopped"):
        rows = render_box(fixture_snapshot(name), width=70, now=60.0, connection="finished http://x")
        assert rows[-2] == "║ " + "Stopped: wrong branch".ljust(66) + " ║", name
    assert render_box(fixture_snapshot("exec_stopped"), width=70, now=60.0)[-2].startswith("║ Stopped: wrong branch")


def _watch_piped(server, run):
    return subprocess.Popen(["bash", "-c", f"set -o pipefail; {sys.executable} -m loopstream watch {run} --server {server.url} | cat"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def test_loop_exec_piped_and_loop_watch_show_the_command_and_its_exit_code(server):
    run = "exec-exit"
    server.post({"type": "note", "run": "other", "data": {"message": "not this one"}})
    r = subprocess.run([*LOOP, "exec", "--stream", "--run", run, "--server", server.url, "--",
                        "sh", "-c", "echo building; echo oops >&2; exit 3"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 3, r.stderr
    lines = r.stdout.strip().split("\n")
    assert lines[0].endswith(f"{run} task_started sh -c 'echo building; echo oops >&2; exit 3'"), lines
    assert "task_completed failed: exit 3 after 0s" in lines[-1], lines
    watch = _watch_piped(server, run)
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 1, err        # the run failed
    box = out.strip().split("\n")[-8:]
    text = "\n".join(box)
    assert "Command: sh -c 'echo building; echo oops >&2; exit 3'   [FAILED]" in text
    assert "║ `sh -c 'echo building; echo oops >&2; exit 3'` failed: exit 3 after 0s" in text
    assert "Progress" not in out and "stories" not in out


def test_a_stopped_loop_run_says_why_on_its_last_line_and_loop_watch_ends_on_it(tmp_path, server):
    prd = tmp_path / "prd.json"
    prd.write_text(json.dumps({"project": "Stop me", "userStories": [
        {"id": "S-1", "title": "slow", "command": "sleep 30", "priority": 1},
        {"id": "S-2", "title": "never", "command": "true", "priority": 2}]}))
    run = "stop-why"
    proc = subprocess.Popen([*LOOP, "run", str(prd), "--stream", "--no-update", "--run", run,
                             "--server", server.url, "--grace", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        wait_for(lambda: server.get(f"/api/runs/{run}").ok
                 and server.get(f"/api/runs/{run}").json()["current_story"] == "S-1", timeout=30,
                 message="the story to start")
        watch = _watch_piped(server, run)
        wait_for(lambda: server.get("/healthz").json()["subscribers"] >= 1, message="loop watch to connect")
        stop = subprocess.run([*LOOP, "stop", run, "--reason", "wrong branch", "--server", server.url],
                              capture_output=True, text=True, timeout=30)
        assert stop.returncode == 0, stop.stderr
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    last = err.strip().split("\n")[-1]
    assert last.startswith(f"loop: run {run} stopped") and last.endswith("— reason: wrong branch"), err
    assert f"/?run={run}" in err.split("\n")[0]            # the dashboard URL opens on this run
    w_out, w_err = watch.communicate(timeout=30)
    assert watch.returncode == 130, w_err
    rows = w_out.rstrip("\n").split("\n")
    assert rows[-1].startswith("╚") and rows[-2].startswith("║ Stopped: wrong branch"), rows[-4:]


def test_loop_runs_says_a_commands_exit_code_and_makes_up_no_percentage():
    from loopstream.core.state import reduce, summarize
    from loopstream.view import runs_table
    quiet = reduce([{"id": "1-1", "type": "task_started", "run": "quiet", "ts": 1, "data": {"task_name": "Quiet"}}])
    snaps = [fixture_snapshot("exec_failed"), fixture_snapshot("exec_stopped"), fixture_snapshot("plain_script"),
             full_run_midway(), quiet]
    done = [line.split()[2] for line in runs_table([summarize(s) for s in snaps], 100)[1:]]
    assert done == ["exit", "exit", "75%", "0/3", "—"]
    lines = runs_table([summarize(s) for s in snaps], 100)
    assert "exit 3" in lines[1] and "exit 130" in lines[2]
