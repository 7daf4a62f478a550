"""The README's snippets, run as written against a real sidecar. Every ```python and ```bash block is
either run here or named in NOT_RUN with the reason; a new snippet nobody runs fails the first test."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, wait_for

BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.S)

NOT_RUN = {
    "# 1. Install, and run the demo PRD": "installs the package: tests/test_install.py runs it in a clean venv",
    "python3 -m pip install -e .": "installs the package: tests/test_install.py",
    "loop hooks install                   # ~/.claude": "changes the user's Claude Code settings: "
                                                  "tests/test_claude_claude_settings.py runs each in a temp home",
    "loop serve --host 127.0.0.1 --port 8765 --db /var/lib/loop": "one host's deployment (its port, /var/lib)",
    "# Redis, keeping every accepted event": "a fleet's deployment (the addresses of other hosts)",
    "pip install 'loopstream[otel]'": "installs the extra and serves on a fixed port: tests/test_otlp_out.py runs "
                                      "loop serve --otlp-endpoint against a real Phoenix",
    "# the sidecar behind it": "a host's deployment (port 8765, /etc/loop/token): tests/test_proxy.py starts the "
                               "sidecar behind the README's nginx block with LOOP_TOKEN and --forwarded-allow-ips",
}
RUN = {
    "# all_done, next_prompt and next_story": "test_the_adapt_loop_reports_the_agent",
    "bin/loop-emit progress": "test_the_shell_hook_snippets_report_their_runs",
    "source bin/loop-progress.sh": "test_the_shell_hook_snippets_report_their_runs",
    "loop exec --run nightly": "test_the_exec_snippet_passes_the_output_through_and_reports_the_command",
    "loop tail /var/log/nightly.log": "test_the_tail_snippet_ends_at_its_marker_line",
    "from loopstream import Reporter": "test_the_python_snippets_report_their_runs",
    "import loopstream": "test_the_python_snippets_report_their_runs",
    "curl -sS -H 'Content-Type: application/json'": "test_the_curl_snippet_posts_an_event_and_a_stop",
}


def blocks():
    return BLOCK.findall((ROOT / "README.md").read_text())


def snippet(start: str) -> str:
    found = [body for _, body in blocks() if body.startswith(start)]
    assert len(found) == 1, f"README snippets starting {start!r}: {len(found)}"
    return found[0]


@pytest.fixture
def env(server, tmp_path):
    """The snippets' world: `loop` is this checkout's, LOOP_SERVER the test's sidecar, a private spool."""
    shims = tmp_path / "bin"
    shims.mkdir()
    loop = shims / "loop"
    loop.write_text(f'#!/bin/sh\nexec {sys.executable} -m loopstream "$@"\n')
    loop.chmod(0o755)
    return {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "LOOP_SERVER": server.url,
            "LOOP_SPOOL_DIR": str(tmp_path / "spool"), "LOOP_SHIP_IDLE": "1", "LOOP_LOG_DIR": str(tmp_path / "logs")}


def bash(script: str, env: dict, cwd=ROOT, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", "set -o pipefail\n" + script], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def run_state(server, run):
    r = server.get(f"/api/runs/{run}")
    return r.json() if r.ok else None


def test_every_snippet_is_run_or_says_why_not():
    for lang, body in blocks():
        assert any(body.startswith(start) for start in [*NOT_RUN, *RUN]), \
            f"a README {lang} snippet that nothing runs: {body[:80]!r}"
    for start in RUN:
        snippet(start)                # each one that is run is there, once


def test_the_python_snippets_report_their_runs(server, env, tmp_path):
    for start in ("from loopstream import Reporter", "import loopstream"):
        r = subprocess.run([sys.executable, "-c", snippet(start)], env=env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, f"{start}:\n{r.stderr}"
    nightly = run_state(server, "nightly")
    assert nightly["status"] == "passed" and nightly["task_name"] == "Nightly"
    assert nightly["output"] == "compiled 12 files\n" and nightly["progress"]["message"] == "compiling"
    train = run_state(server, "train")
    assert train["status"] == "passed" and train["progress"]["percent"] == 100
    runs = server.get("/api/runs").json()["runs"]
    assert any(r["run"].startswith("resize-") and r["status"] == "passed" for r in runs)


def test_the_shell_hook_snippets_report_their_runs(server, env):
    r = bash(snippet("bin/loop-emit progress"), env)
    assert r.returncode == 0, r.stderr
    r = bash(snippet("source bin/loop-progress.sh"), {**env, "LOOP_RUN": "readme-hooks"})
    assert r.returncode == 0, r.stderr
    # The hooks queue and return; their shipper delivers shortly after.
    hooks = wait_for(lambda: (s := run_state(server, "readme-hooks")) and s["status"] == "failed" and s,
                     timeout=30, message="the loop-progress.sh run")
    assert hooks["task_name"] == "Nightly build" and hooks["last_error"]["error_type"] == "upload_failed"
    assert [ac["status"] for ac in hooks["stories"][0]["acceptance_criteria"]] == ["passed", "failed"]
    emitted = wait_for(lambda: run_state(server, "nightly-42"), timeout=30, message="the loop-emit run")
    assert emitted["stories"][0]["acceptance_criteria"][0] == {"text": "compiles", "status": "passed",
                                                                "duration_ms": None, "error": None}


def test_the_exec_snippet_passes_the_output_through_and_reports_the_command(server, env, tmp_path):
    (tmp_path / "Makefile").write_text("test:\n\t@echo running 3 tests\n\t@echo 3 passed\n")
    r = bash(snippet("loop exec --run nightly"), env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (tmp_path / "test.log").read_text() == "running 3 tests\n3 passed\n"
    snap = run_state(server, "nightly")
    assert (snap["status"], snap["command"], snap["exit_code"], snap["task_name"]) == \
        ("passed", "make -k test", 0, "Nightly tests")


def test_the_tail_snippet_ends_at_its_marker_line(server, env, tmp_path):
    log = tmp_path / "nightly.log"
    proc = subprocess.Popen(["bash", "-c", snippet("loop tail /var/log/nightly.log").replace(
        "/var/log/nightly.log", str(log))], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        wait_for(lambda: run_state(server, "nightly"), timeout=30, message="the tail's run to start")
        log.write_text("step 1\n=== Run Complete ===\n")
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out == "step 1\n=== Run Complete ===\n"
    assert run_state(server, "nightly")["status"] == "passed"


def test_the_curl_snippet_posts_an_event_and_a_stop(server, env):
    r = bash(snippet("curl -sS -H 'Content-Type: application/json'").replace("http://127.0.0.1:8765", server.url),
             env)
    assert r.returncode == 0, r.stderr
    snap = run_state(server, "ci-42")
    assert snap["percent"] == 40 and snap["control"]["stop_requested"] == "wrong branch"


def test_the_adapt_loop_reports_the_agent(server, env, tmp_path):
    """The bash loop around Claude Code, with the reader's own functions and `claude` stubbed."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    claude = stubs / "claude"
    claude.write_text(f"#!/bin/sh\ncat {ROOT / 'tests' / 'agents' / 'clean.jsonl'}\n")
    claude.chmod(0o755)
    todo = tmp_path / "todo"
    todo.touch()
    functions = (f'all_done() {{ [ ! -e {todo} ]; }}\nnext_prompt() {{ rm -f {todo}; echo "fix the login"; }}\n'
                 "next_story() { echo US-1; }\n")
    r = bash(functions + snippet("# all_done, next_prompt and next_story"),
             {**env, "PATH": f"{stubs}:{env['PATH']}"}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "agent done" in r.stdout
    snap = wait_for(lambda: (s := run_state(server, "nightly")) and s["cost_usd"] and s, timeout=30,
                    message="the agent's result")
    assert [s["id"] for s in snap["stories"]] == ["US-1"] and snap["stories"][0]["agent"]["tool_calls"] > 0
