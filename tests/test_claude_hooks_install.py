"""`loop hooks install|uninstall|status`, and the installed hook run exactly as Claude Code runs it: the
command string from the settings file, through `sh -c`, the recorded payload on stdin; with the sidecar
up, hung (SIGSTOP) and down; and the real Claude Code CLI with the settings `loop hooks install` wrote."""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, wait_for
from helpers import AGENTS, REAL, loop
from loopstream.cli.claude_settings import telemetry_env
from loopstream.core.formats.hook_session import HOOK_EVENTS

# A whole session with a subagent, one with a permission wait, one with a failing tool.
SESSIONS = ["hooks-subagent.jsonl", "hooks-interactive.jsonl", "hooks-mcp.jsonl"]


def payload_lines(name: str) -> list[str]:
    return (REAL / name).read_text().splitlines()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A user of their own: HOME, Claude's config dir, loop's spool; the shippers the hooks start are
    ended at teardown (by the pid each wrote)."""
    env = {"HOME": str(tmp_path / "home"), "CLAUDE_CONFIG_DIR": str(tmp_path / "home" / ".claude"),
           "LOOP_SPOOL_DIR": str(tmp_path / "spool"), "LOOP_SHIP_IDLE": "1", "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    (tmp_path / "home").mkdir()
    agents = os.environ.get("LOOP_TEST_AGENTS_DIR") or str(Path.home() / ".cache" / "loop-test-agents")
    monkeypatch.setenv("LOOP_TEST_AGENTS_DIR", agents)     # where the real CLIs are, before HOME moves
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("LOOP_TOKEN", raising=False)
    monkeypatch.delenv("LOOP_SERVER", raising=False)
    yield tmp_path
    for pidfile in (tmp_path / "spool").glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        except (ValueError, ProcessLookupError):
            pass


def user_settings(home: Path) -> Path:
    return home / "home" / ".claude" / "settings.json"


def commands(settings: dict) -> dict[str, list[str]]:
    return {ev: [h["command"] for g in groups for h in g["hooks"]] for ev, groups in settings["hooks"].items()}


# -- the settings file ---------------------------------------------------------------------------

THEIRS = {"model": "opus", "permissions": {"allow": ["Bash(ls:*)"]},
          "hooks": {"PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "my-guard.sh"}]}],
                    "Stop": [{"hooks": [{"type": "command", "command": "notify-send done"}]}]},
          "env": {"FOO": "bar"}}


def test_install_keeps_everything_else_and_a_second_install_changes_no_byte(home):
    path = user_settings(home)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(THEIRS, indent=2) + "\n")
    r = loop("hooks", "install", "--server", "http://127.0.0.1:9")
    assert r.returncode == 0, r.stderr
    assert str(path) in r.stdout
    settings = json.loads(path.read_text())
    assert {k: settings[k] for k in ("model", "permissions")} == {k: THEIRS[k] for k in ("model", "permissions")}
    assert settings["env"] == {"FOO": "bar", **telemetry_env("http://127.0.0.1:9")}   # Claude's OTLP logs to us
    cmds = commands(settings)
    assert set(cmds) == set(HOOK_EVENTS)
    assert cmds["PreToolUse"][0] == "my-guard.sh" and cmds["Stop"][0] == "notify-send done"
    ours = {c for cs in cmds.values() for c in cs if "--hook" in c}
    assert len(ours) == 1 and "http://127.0.0.1:9" in ours.pop()
    first, mtime = path.read_bytes(), path.stat().st_mtime_ns
    assert loop("hooks", "install", "--server", "http://127.0.0.1:9").returncode == 0
    assert path.read_bytes() == first and path.stat().st_mtime_ns == mtime
    r = loop("hooks", "uninstall")
    assert r.returncode == 0 and "removed" in r.stdout
    assert json.loads(path.read_text()) == THEIRS
    assert path.read_text() == json.dumps(THEIRS, indent=2) + "\n"
    assert "were not in" in loop("hooks", "uninstall").stdout


def test_telemetry_is_wired_unless_told_not_or_already_set_otherwise(home, monkeypatch):
    path = user_settings(home)
    r = loop("hooks", "install", "--no-telemetry")
    assert r.returncode == 0 and "env" not in json.loads(path.read_text())
    path.write_text(json.dumps({"env": {"OTEL_LOGS_EXPORTER": "console"}}))
    r = loop("hooks", "install")
    assert r.returncode == 0 and "telemetry not wired" in r.stderr and "OTEL_LOGS_EXPORTER" in r.stderr
    assert json.loads(path.read_text())["env"] == {"OTEL_LOGS_EXPORTER": "console"}
    assert loop("hooks", "uninstall").returncode == 0
    assert json.loads(path.read_text()) == {"env": {"OTEL_LOGS_EXPORTER": "console"}}
    path.unlink()
    assert loop("hooks", "install", "--server", "http://127.0.0.1:1").returncode == 0
    r = loop("hooks", "install", "--server", "http://127.0.0.1:2")        # another sidecar: loop's own values move
    assert r.returncode == 0 and "telemetry not wired" not in r.stderr
    settings = json.loads(path.read_text())
    assert settings["env"]["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"] == "http://127.0.0.1:2/v1/logs"
    assert {c for cs in commands(settings).values() for c in cs} == {installed_command_for(settings)}
    path.unlink()
    monkeypatch.setenv("LOOP_TOKEN", "tok-0123456789abcdef")
    assert loop("hooks", "install", "--server", "http://127.0.0.1:9").returncode == 0
    settings = json.loads(path.read_text())
    assert settings["env"]["OTEL_EXPORTER_OTLP_LOGS_HEADERS"] == "Authorization=Bearer tok-0123456789abcdef"
    token_file = home / "cfg" / "loop" / "hook-token"
    assert token_file.read_text() == "tok-0123456789abcdef\n" and token_file.stat().st_mode & 0o777 == 0o600
    assert "tok-0123456789abcdef" not in json.dumps(settings["hooks"])     # the command names the file
    assert loop("hooks", "uninstall").returncode == 0
    assert json.loads(path.read_text()) == {}


def installed_command_for(settings: dict) -> str:
    [cmd] = {c for cs in commands(settings).values() for c in cs if "--server http://127.0.0.1:2" in c}
    return cmd


def test_a_settings_file_that_is_not_json_is_refused_naming_the_place_and_left_untouched(home):
    path = user_settings(home)
    path.parent.mkdir(parents=True)
    broken = '{\n  "model": "opus",\n  "hooks": {,}\n}\n'
    path.write_text(broken)
    for args in (["install"], ["uninstall"]):
        r = loop("hooks", *args)
        assert r.returncode == 2 and r.stdout == ""
        [line] = r.stderr.strip().splitlines()
        assert str(path) in line and "line 3, column 13" in line
        assert path.read_text() == broken
    path.write_text('["a list"]')
    r = loop("hooks", "install")
    assert r.returncode == 2 and "not a JSON object" in r.stderr and path.read_text() == '["a list"]'
    odd = '{"hooks": {"Stop": "not a list"}}'
    path.write_text(odd)
    r = loop("hooks", "install")
    assert r.returncode == 2 and "not an object of lists" in r.stderr and path.read_text() == odd


def test_project_and_local_settings_and_status(home):
    proj = home / "proj"
    proj.mkdir()
    assert loop("hooks", "install", "--project", str(proj), "--prompts", "--server", "http://127.0.0.1:9").returncode == 0
    assert loop("hooks", "install", "--local", cwd=proj).returncode == 0
    shared = json.loads((proj / ".claude" / "settings.json").read_text())
    local = json.loads((proj / ".claude" / "settings.local.json").read_text())
    assert all(c.endswith("--prompts") for cs in commands(shared).values() for c in cs)
    assert not any("--prompts" in c for cs in commands(local).values() for c in cs)
    assert not user_settings(home).exists()
    r = loop("hooks", "status", "--server", f"http://127.0.0.1:{free_port()}", cwd=proj)
    assert r.returncode == 0
    assert "user: not installed" in r.stdout
    assert f"project: installed in {proj / '.claude' / 'settings.json'} ({len(HOOK_EVENTS)} hook events; " \
           "prompts: text kept)" in r.stdout
    assert "local: installed in" in r.stdout and "not answering" in r.stdout


def test_status_says_the_sidecar_answers(home, server):
    assert loop("hooks", "install", "--server", server.url).returncode == 0
    r = loop("hooks", "status", "--server", server.url, cwd=home)
    assert "user: installed in" in r.stdout and f"sidecar at {server.url}: answers (loop " in r.stdout


# -- the hook command, as Claude Code runs it ------------------------------------------------------

def installed_command(home: Path, server_url: str, *extra: str) -> str:
    r = loop("hooks", "install", "--server", server_url, *extra)
    assert r.returncode == 0, r.stderr
    cmds = commands(json.loads(user_settings(home).read_text()))
    [cmd] = {c for cs in cmds.values() for c in cs}
    return cmd


def run_hook(cmd: str, line: str) -> None:
    """One hook call as Claude Code makes it: `sh -c COMMAND`, the JSON on stdin, which is a socket
    (node's stdio pipes are socket pairs: /dev/stdin cannot be opened again). It must print nothing
    and exit 0 (the timeout only guards the test run against a hang)."""
    ours, theirs = socket.socketpair()
    with ours:
        p = subprocess.Popen(["sh", "-c", cmd], stdin=theirs, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        theirs.close()
        ours.sendall(line.encode("utf-8", "surrogateescape"))
        ours.shutdown(socket.SHUT_WR)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and out == b"", (p.returncode, out, err)


def run_sessions(cmd: str) -> dict[str, list[str]]:
    sent: dict[str, list[str]] = {}
    for name in SESSIONS:
        for line in payload_lines(name):
            run_hook(cmd, line)
            sent.setdefault(json.loads(line)["session_id"], []).append(json.loads(line)["hook_event_name"])
    return sent


def delivered(server, sid: str, n: int) -> list[dict] | None:
    r = server.get(f"/api/runs/{sid}/transcript")
    if r.status_code != 200:
        return None
    events = r.json()["events"]
    return events if len(events) >= n else None


def expected_types(name: str) -> list[str]:
    from loopstream.core.formats.hook_session import session_events
    return [t for line in payload_lines(name) for t, _ in session_events(json.loads(line))[1]]


def check_sessions_arrived_in_order(server):
    for name in SESSIONS:
        sid = json.loads(payload_lines(name)[0])["session_id"]
        want = expected_types(name)
        n = len(want)
        events = wait_for(lambda sid=sid, n=n: delivered(server, sid, n), 60, message=f"{name} delivered")
        assert [e["type"] for e in events] == want
        snap = server.get(f"/api/runs/{sid}").json()
        assert snap["session"]["state"] == "ended"
        prompt = json.loads(payload_lines(name)[1])["prompt"]
        assert prompt not in json.dumps(events) + json.dumps(snap)


def test_the_hook_with_the_sidecar_up_delivers_whole_sessions_in_order(home, server):
    cmd = installed_command(home, server.url)
    run_sessions(cmd)
    check_sessions_arrived_in_order(server)
    sub = server.get("/api/runs/" + json.loads(payload_lines(SESSIONS[0])[0])["session_id"]).json()
    assert sub["session"]["subagents"][0]["tool_calls"] == 1
    mcp = server.get("/api/runs/" + json.loads(payload_lines(SESSIONS[2])[0])["session_id"]).json()
    assert mcp["agent"]["tool_errors"] == 1


def test_the_hook_with_the_sidecar_down_spools_and_delivers_later_in_order(home, make_server):
    port = free_port()
    cmd = installed_command(home, f"http://127.0.0.1:{port}")
    run_sessions(cmd)
    spooled = "".join(p.read_text() for p in (home / "spool").glob("*.jsonl"))
    assert spooled.count("\n") == sum(len(payload_lines(n)) for n in SESSIONS)
    for name in SESSIONS:                               # the prompt's text never touched the disk
        assert json.loads(payload_lines(name)[1])["prompt"] not in spooled
    server = make_server("--rate", "0", port=port)
    check_sessions_arrived_in_order(server)


def test_the_hook_with_the_sidecar_hung_returns_and_delivers_once_it_wakes(home, server):
    cmd = installed_command(home, server.url)
    os.killpg(server.proc.pid, signal.SIGSTOP)
    try:
        run_sessions(cmd)
    finally:
        os.killpg(server.proc.pid, signal.SIGCONT)
    check_sessions_arrived_in_order(server)


def test_bad_input_on_stdin_still_exits_0_silently(home, server):
    cmd = installed_command(home, server.url)
    big = {"session_id": "big-1", "hook_event_name": "PostToolUse", "tool_name": "Read", "tool_use_id": "toolu_9",
           "tool_input": {"file_path": "/x"}, "tool_response": {"content": "x" * 200_000}}
    for line in ["", "not json", "[1,2]", '{"hook_event_name": "Stop"}', '{"session_id": "../x"}',
                 "\x00\xff" * 100, json.dumps(big)]:
        run_hook(cmd, line)
    events = wait_for(lambda: delivered(server, "big-1", 1), 30, message="the big payload, cut")
    assert [(e["type"], e["data"]["id"]) for e in events] == [("tool_result", "toolu_9")]


def test_the_prompt_text_goes_through_only_when_installed_with_prompts(home, server):
    cmd = installed_command(home, server.url, "--prompts")
    lines = payload_lines("hooks-shell.jsonl")
    for line in lines:
        run_hook(cmd, line)
    sid = json.loads(lines[0])["session_id"]
    events = wait_for(lambda: delivered(server, sid, len(expected_types("hooks-shell.jsonl"))), 30)
    assert json.loads(lines[1])["prompt"] in json.dumps(events)


def test_the_real_claude_code_reports_to_a_real_sidecar(home, server):
    sys.path.insert(0, str(AGENTS))
    from clis import ensure_installed, run_claude
    ensure_installed("claude")            # a missing CLI is installed, never a skip
    proj = home / "proj"
    proj.mkdir()
    (proj / "README.md").write_text("hello\n")
    r = loop("hooks", "install", "--project", str(proj), "--server", server.url)
    assert r.returncode == 0, r.stderr
    settings = json.loads((proj / ".claude" / "settings.json").read_text())
    result = run_claude("Run the tests, then read a missing file.", [
        {"text": "Running them.", "shell": "echo 4 passed"},
        {"tool": "Read", "input": {"file_path": str(proj / "missing.txt")}},
        {"text": "Done: 4 passed."}], cwd=proj, settings=settings,
        env={"LOOP_SPOOL_DIR": str(home / "spool"), "LOOP_SHIP_IDLE": "1", "DISABLE_TELEMETRY": None})
    assert result.returncode == 0, result.stderr
    sid = next(e["session_id"] for e in result.events if e.get("type") == "system" and e.get("subtype") == "init")

    def ended():
        r = server.get(f"/api/runs/{sid}")
        return r.json() if r.status_code == 200 and r.json().get("session", {}).get("state") == "ended" else None

    snap = wait_for(ended, 60, message="the session's end")
    assert snap["session"]["project"] == "proj" and snap["agent"]["tool_calls"] == 2
    assert snap["agent"]["tool_errors"] == 1
    events = server.get(f"/api/runs/{sid}/transcript").json()["events"]
    calls = [e["data"] for e in events if e["type"] == "tool_call"]
    assert calls[0]["tool"] == "Bash" and calls[0]["summary"] == "echo 4 passed"
    assert "Run the tests" not in json.dumps(events)
    assert any(e["type"] == "agent_text" and "4 passed" in e["data"]["text"] for e in events)
    # the settings' env sent Claude Code's own OTLP logs to /v1/logs: what it cost, on the same run
    usage = wait_for(lambda: server.get(f"/api/runs/{sid}").json()["cost_usd"], 60, message="the session's cost")
    assert usage > 0 and server.get(f"/api/runs/{sid}").json()["input_tokens"] > 0


def test_mistakes_in_install_are_one_line_and_change_nothing(home, monkeypatch):
    typo = home / "no" / "such" / "dir"
    for args, words in ((["hooks", "install", "--project", str(typo)], "no such directory"),
                        (["hooks", "uninstall", "--project", str(typo)], "no such directory"),
                        (["hooks", "status", "--project", str(typo)], "no such directory")):
        r = loop(*args)
        assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    assert not (home / "no").exists()                        # a typo never makes a directory tree
    bad = home / "token"
    bad.write_bytes(b"\xff\xfe\x00")
    r = loop("hooks", "install", "--token-file", str(bad))
    assert r.returncode == 2 and f"{bad}: not a text file" in r.stderr and "Traceback" not in r.stderr
    assert not user_settings(home).exists()


def test_a_token_in_the_settings_env_makes_the_file_its_owners_only(home, monkeypatch):
    monkeypatch.setenv("LOOP_TOKEN", "sekrit-0123456789")
    assert loop("hooks", "install").returncode == 0
    path = user_settings(home)
    assert "Bearer sekrit-0123456789" in path.read_text()            # the OTLP header Claude Code sends
    assert path.stat().st_mode & 0o077 == 0
