#!/usr/bin/env python3
"""Record what the real agent CLIs print, driven offline by the stand-in, as fixtures.

    python3 tests/agents/record.py [--cli claude|codex|gemini ...] [--scenario NAME ...] [--out DIR]

For each CLI and scenario: a fresh demo project in a temp dir, the scenario's
script in the stand-in, the CLI run as clis.py runs it, and its stdout saved as
``<out>/<cli>/<scenario>.jsonl`` (Claude's under ``claude-real/``). Claude runs
also carry a command hook for every hook event; what the hooks received is saved
as ``claude-real/hooks-<scenario>.jsonl``. Paths inside the fixtures are the
temp project's (``/tmp/loop-agents-demo/...``).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import clis  # noqa: E402
from standin import StandIn  # noqa: E402

DEMO = Path("/tmp/loop-agents-demo")
LOOPING = "ls build/reports"                # fails the same way every time
SUBAGENT_PROMPT = "Count the files in the project and report the number."

READ_TOOL = {"claude": ("Read", "file_path"), "gemini": ("read_file", "file_path")}
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello\n*** End Patch\n"


def edit_call(cli: str, project: Path) -> dict:
    """A call of the CLI's own file-writing tool that creates hello.txt."""
    if cli == "codex":
        return {"tool": "apply_patch", "input": PATCH}
    name = "Write" if cli == "claude" else "write_file"
    return {"tool": name, "input": {"file_path": str(project / "hello.txt"), "content": "hello\n"}}


def scenarios(cli: str, project: Path) -> dict[str, tuple[str, list[dict]]]:
    """name -> (prompt, script) for one CLI."""
    out: dict[str, tuple[str, list[dict]]] = {
        "text": ("What is 2 + 2? Answer in one sentence.",
                 [{"text": "2 + 2 is 4.", "usage": {"input_tokens": 1200, "output_tokens": 9}}]),
        "shell": ("Run the tests and tell me whether they pass.",
                  [{"text": "I'll run the tests.", "shell": "printf '....\\n4 passed in 0.12s\\n'"},
                   {"text": "All 4 tests pass."}]),
        "tool_error": ("Show me the contents of missing.txt.",
                       [{"text": "Let me look at the file.", "shell": "cat missing.txt"},
                        {"text": "missing.txt does not exist in this project."}]),
        "looping": ("Show the build reports.",
                    [{"shell": LOOPING}, {"shell": LOOPING}, {"shell": LOOPING},
                     {"text": "The build/reports directory does not exist; I keep getting the same error."}]),
    }
    # reasoning, a file written with the CLI's own edit tool, a command; codex also a hosted web search
    first = {"reasoning": "The user wants a hello file; I'll create it and check it.", "text": "Creating hello.txt.",
             **edit_call(cli, project), **({"web_search": "hello file convention"} if cli == "codex" else {})}
    out["edit"] = ("Create hello.txt containing hello, then show it.",
                   [first, {"reasoning": "Now check the file.", "shell": "cat hello.txt"},
                    {"text": "hello.txt now contains hello."}])
    # the same failing call six times: does the CLI's own loop detection step in?
    out["looping_long"] = ("Show the build reports.", [{"shell": LOOPING}] * 6 + [{"text": "Giving up."}])
    # the API refuses the request (400), every time it is asked
    out["api_error"] = ("What is 2 + 2?", [{"error": 400, "message": "scripted: the request was refused",
                                            "times": 20}])
    if cli in READ_TOOL:
        name, key = READ_TOOL[cli]
        out["tool_error"][1].insert(1, {"tool": name, "input": {key: str(project / "missing.txt")}})
    # an MCP server's tool (mcp_echo.py): echo succeeds, fail answers isError
    out["mcp"] = ("Echo hi, then try the fail tool.", mcp_turns(cli) + [{"text": "echo said hi; fail failed."}])
    if cli == "claude":
        out.update(claude_scenarios())
    if cli == "gemini":  # its subagent tool; the subagent ends with complete_task
        out["subagent"] = ("How many files does the project have? Use a subagent.", [
            {"text": "I'll ask a subagent.", "tool": "invoke_agent",
             "input": {"agent_name": "generalist", "prompt": SUBAGENT_PROMPT}},
            {"for": SUBAGENT_PROMPT, "text": "Counting.", "shell": "ls | wc -l"},
            {"for": SUBAGENT_PROMPT, "tool": "complete_task", "input": {"result": {"response": "3 files."}}},
            {"text": "The subagent counted 3 files."}])
    if cli == "codex":   # a model codex has no metadata for: an item of type "error" (a warning) comes first
        out["unknown_model"] = ("What is 2 + 2? Answer in one sentence.", [{"text": "2 + 2 is 4."}])
        # multi_agent_v1 (offered to models outside codex's catalogue, so this run also starts with that warning)
        ns = {"namespace": "multi_agent_v1"}
        out["subagent"] = ("How many files does the project have? Use a subagent.", [
            {"text": "I'll ask a subagent.", "tool": "spawn_agent", **ns, "input": {"message": SUBAGENT_PROMPT}},
            {"tool": "wait_agent", **ns, "input": {"targets": ["$out.agent_id"], "timeout_ms": 20000}},
            {"for": SUBAGENT_PROMPT, "text": "Counting.", "shell": "ls | wc -l"},
            {"for": SUBAGENT_PROMPT, "text": "The project has 3 files."},
            {"text": "The subagent counted 3 files."}])
    return out


def claude_scenarios() -> dict[str, tuple[str, list[dict]]]:
    agent = {"description": "Count project files", "prompt": SUBAGENT_PROMPT, "subagent_type": "general-purpose"}
    sub = [{"for": SUBAGENT_PROMPT, "text": "Counting.", "shell": "ls | wc -l"},
           {"for": SUBAGENT_PROMPT, "text": "The project has 3 files."}]
    return {
        # a subagent in the foreground: the parent waits for its result
        "subagent": ("How many files does the project have? Use a subagent.",
                     [{"text": "I'll ask a subagent.", "tool": "Agent", "input": dict(agent, run_in_background=False)},
                      *sub, {"text": "The subagent counted 3 files."}]),
        # Claude Code's default: the subagent runs in the background and the parent is told when it ends
        "subagent_background": ("How many files does the project have? Use a subagent.",
                                [{"text": "I'll ask a subagent.", "tool": "Agent", "input": agent},
                                 *sub, {"text": "Waiting for the subagent."},
                                 {"text": "The subagent counted 3 files."}]),
        # without --dangerously-skip-permissions: -p cannot ask, the call is denied (PermissionRequest hook)
        "permission": ("Delete the build directory.",
                       [{"text": "Removing it.", "shell": "rm -rf build"},
                        {"text": "I could not remove build/: the command needs approval."}]),
    }


def mcp_turns(cli: str) -> list[dict]:
    """Calls of mcp_echo.py's two tools as each CLI names them (codex finds them with tool_search first)."""
    if cli == "codex":
        return [{"tool_search": "echo"},
                {"tool": "echo", "namespace": "mcp__echo", "input": {"text": "hi"}},
                {"tool": "fail", "namespace": "mcp__echo", "input": {"text": "boom"}}]
    sep = "__" if cli == "claude" else "_"
    return [{"tool": f"mcp{sep}echo{sep}echo", "input": {"text": "hi"}},
            {"tool": f"mcp{sep}echo{sep}fail", "input": {"text": "boom"}}]


def mcp_kwargs(cli: str) -> dict:
    server = {"command": sys.executable, "args": [str(HERE / "mcp_echo.py")]}
    if cli == "codex":
        return {"config": clis.codex_mcp_echo()}
    if cli == "claude":
        return {"args": ("--mcp-config", json.dumps({"mcpServers": {"echo": server}}))}
    return {"settings": dict(clis.GEMINI_SETTINGS, mcpServers={"echo": dict(server, trust=True)})}


def make_project(cli: str, scenario: str) -> Path:
    project = DEMO / cli / scenario
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    (project / "README.md").write_text("# demo\n")
    (project / "app.py").write_text("print('hello')\n")
    (project / "test_app.py").write_text("def test_ok():\n    assert True\n")
    return project


def run(cli: str, scenario: str, hooks: Path | None = None) -> clis.Result:
    project = make_project(cli, scenario)
    prompt, script = scenarios(cli, project)[scenario]
    kwargs: dict = {}
    if cli == "codex" and scenario in ("unknown_model", "subagent"):
        kwargs["model"] = "gpt-standin"
    if scenario == "mcp":
        kwargs.update(mcp_kwargs(cli))
    if cli == "claude":
        kwargs["skip_permissions"] = scenario != "permission"
        if hooks:
            kwargs["settings"] = clis.hooks_settings(hooks)
    r = clis.RUNNERS[cli](prompt, script, project, **kwargs)
    summary = {"cli": cli, "scenario": scenario, "hooks": bool(hooks), "rc": r.returncode, "lines": len(r.lines),
               "model_requests": sum(1 for q in r.requests if q["method"] == "POST"), "stray": r.stray}
    print(json.dumps(summary), flush=True)
    if r.returncode:
        print(r.stderr[-2000:], file=sys.stderr)
    return r


def save(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def record(cli: str, scenario: str, out: Path) -> None:
    """The CLI's stdout as users run it; for Claude a second run with a hook on every event."""
    folder = out / ("claude-real" if cli == "claude" else cli)
    folder.mkdir(parents=True, exist_ok=True)
    save(folder / f"{scenario}.jsonl", run(cli, scenario).lines)
    if cli != "claude":
        return
    hooks = DEMO / f"hooks-{cli}-{scenario}.jsonl"
    hooks.unlink(missing_ok=True)
    hooked = run(cli, scenario, hooks)
    if scenario == "shell":   # with hooks configured, stream-json also carries system hook_started/hook_response
        save(folder / f"{scenario}-with-hooks.jsonl", hooked.lines)
    if hooks.exists():
        save(folder / f"hooks-{scenario}.jsonl", [ln for ln in hooks.read_text().splitlines() if ln.strip()])


def record_otlp(out: Path) -> None:
    """Claude Code's OTLP/HTTP export in -p mode: for the shell scenario one logs and one metrics body as JSON
    and the logs body as protobuf (``otlp-logs.pb``, byte for byte what the JavaScript exporter sent); for the
    subagent scenario the logs body (records of the subagent carry ``agent_id``), ``otlp-logs-subagent.json``."""
    folder = out / "claude-real"
    for scenario, protocol, suffix in (("shell", "http/json", ""), ("shell", "http/protobuf", ""),
                                       ("subagent", "http/json", "-subagent")):
        project = make_project("claude", "otlp")
        prompt, script = scenarios("claude", project)[scenario]
        r = clis.run_claude(prompt, script, project, telemetry=True,
                            env={"OTEL_EXPORTER_OTLP_PROTOCOL": protocol})
        sent = {q["path"]: q["body"] for q in r.requests if q["path"] in ("/v1/logs", "/v1/metrics")}
        print(json.dumps({"cli": "claude", "scenario": f"otlp {scenario}", "protocol": protocol,
                          "rc": r.returncode, "bodies": sorted(sent)}), flush=True)
        for path, body in sent.items():
            name = "otlp-" + path.rsplit("/", 1)[-1]
            if suffix and name != "otlp-logs":
                continue
            if protocol == "http/json":
                (folder / f"{name}{suffix}.json").write_text(json.dumps(body) + "\n")
            elif name == "otlp-logs":
                (folder / f"{name}.pb").write_bytes(base64.b64decode(body["_protobuf_base64"]))


def _hook_events(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]


def _wait_hook(log: Path, pred, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for e in _hook_events(log):
            if pred(e):
                return e
        time.sleep(0.2)
    raise SystemExit(f"interactive: no such hook event within {timeout}s; got "
                     f"{[e.get('hook_event_name') for e in _hook_events(log)]}")


def record_interactive(out: Path) -> None:
    """An interactive Claude Code session in tmux (--permission-mode default): it asks to run a command
    (PermissionRequest, Notification permission_prompt), is approved, finishes (Stop), sits idle until Claude
    says it is waiting (Notification idle_prompt, after about 60 s), and is left with /exit (SessionEnd).
    Saves what every hook received as claude-real/hooks-interactive.jsonl."""
    clis.ensure_installed("claude")
    project = make_project("claude", "interactive")
    (project / "build").mkdir()
    log = DEMO / "hooks-claude-interactive.jsonl"
    log.unlink(missing_ok=True)
    home = Path(tempfile.mkdtemp(prefix="loop-claude-tty-"))
    sock = f"loop-agents-record-{os.getpid()}"
    script = [{"text": "Removing it.", "shell": "rm -rf build"}, {"text": "Removed build/."}]
    with StandIn(script) as s:
        (home / ".claude").mkdir()
        (home / "settings.json").write_text(json.dumps(clis.hooks_settings(log)))
        # no first-run screens: onboarding done, the API key approved, the project trusted
        (home / ".claude" / ".claude.json").write_text(json.dumps({
            "hasCompletedOnboarding": True, "theme": "dark",
            "customApiKeyResponses": {"approved": ["sk-ant-standin"[-20:]], "rejected": []},
            "projects": {str(project): {"hasTrustDialogAccepted": True}}}))
        env = clis.claude_env(home, s.url, {"TERM": "xterm-256color", "NO_COLOR": None, "CI": None})
        (home / "env.sh").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
        cmd = (f"source {home / 'env.sh'}; cd {shlex.quote(str(project))}; exec {clis.cli_path('claude')} "
               f"--permission-mode default --settings {home / 'settings.json'} 'Delete the build directory'")
        tmux = ["tmux", "-L", sock]
        subprocess.run([*tmux, "new-session", "-d", "-s", "cc", "-x", "120", "-y", "40",
                        "bash", "--norc", "-c", cmd], check=True)
        try:
            _wait_hook(log, lambda e: e.get("notification_type") == "permission_prompt", 60)
            subprocess.run([*tmux, "send-keys", "-t", "cc", "Enter"], check=True)      # 1. Yes
            _wait_hook(log, lambda e: e["hook_event_name"] == "Stop", 60)
            _wait_hook(log, lambda e: e.get("notification_type") == "idle_prompt", 120)
            subprocess.run([*tmux, "send-keys", "-t", "cc", "-l", "/exit"], check=True)
            time.sleep(0.5)
            subprocess.run([*tmux, "send-keys", "-t", "cc", "Enter"], check=True)
            _wait_hook(log, lambda e: e["hook_event_name"] == "SessionEnd", 30)
        finally:
            subprocess.run([*tmux, "kill-server"], check=False, stderr=subprocess.DEVNULL)
            shutil.rmtree(home, ignore_errors=True)
        stray = [f"{q['method']} {q['path']}" for q in s.requests if q["method"] == "CONNECT"]
    save(out / "claude-real" / "hooks-interactive.jsonl", [json.dumps(e) for e in _hook_events(log)])
    print(json.dumps({"cli": "claude", "scenario": "interactive", "hooks": [e["hook_event_name"]
                      for e in _hook_events(log)], "stray": stray}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--cli", action="append", choices=sorted(clis.RUNNERS))
    p.add_argument("--scenario", action="append")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--otlp", action="store_true", help="record only Claude Code's OTLP export")
    p.add_argument("--interactive", action="store_true",
                   help="record only the hooks of an interactive Claude Code session in tmux (takes ~75 s)")
    args = p.parse_args()
    if args.otlp:
        record_otlp(args.out)
        return 0
    if args.interactive:
        record_interactive(args.out)
        return 0
    for cli in args.cli or sorted(clis.RUNNERS):
        names = scenarios(cli, DEMO)
        for scenario in args.scenario or names:
            if scenario in names:
                record(cli, scenario, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
