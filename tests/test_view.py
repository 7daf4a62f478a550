"""The terminal view: the pure box, and `loop run --stream` in a real terminal (tmux)."""
import json
import shutil
import subprocess
import uuid

from rich.cells import cell_len

from conftest import ROOT, FIXTURES, wait_for
from loopstream.view import clean, plain_line, render_box


def full_run_midway():
    events = json.loads((FIXTURES / "full_run.json").read_text())["events"][:5]
    from loopstream import state
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
