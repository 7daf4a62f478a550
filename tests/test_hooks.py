"""bin/loop-emit and bin/loop-progress.sh, run by real bash and curl against a real sidecar."""
import os
import subprocess

import pytest

from conftest import ROOT, free_port

EMIT = str(ROOT / "bin" / "loop-emit")
LIB = str(ROOT / "bin" / "loop-progress.sh")


def bash(script, server_url, **env):
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "LOOP_SERVER": server_url, **env})


def events(server):
    return server.get("/api/events").json()["events"]


@pytest.mark.parametrize("text", [
    'say "hi"', "back\\slash", "new\nline", "tab\there", "ünïcödé ✅ 😀", "ctrl\x01\x1f\x7f", "{json: [1]}",
    "'single'", "$HOME `ls` $(date)", "",
])
def test_loop_emit_builds_valid_json_from_any_text(server, text):
    r = subprocess.run([EMIT, "note", f"message={text}", "n:=5", "flag:=true"], capture_output=True, text=True,
                       env={**os.environ, "LOOP_SERVER": server.url, "LOOP_RUN": "sh-run"}, timeout=30)
    assert r.returncode == 0 and r.stderr == ""
    (e,) = events(server)
    assert e["data"] == {"message": text, "n": 5, "flag": True} and e["run"] == "sh-run"


def test_loop_emit_lists_with_brackets(server):
    subprocess.run([EMIT, "story_started", "story_id=S", "acceptance_criteria[]=one", "acceptance_criteria[]=t\"wo"],
                   env={**os.environ, "LOOP_SERVER": server.url}, check=True, timeout=30)
    assert events(server)[0]["data"] == {"story_id": "S", "acceptance_criteria": ["one", 't"wo']}


def test_a_dead_sidecar_never_fails_the_script_unless_strict():
    url = f"http://127.0.0.1:{free_port()}"
    r = bash(f'set -euo pipefail; {EMIT} progress percent:=5; echo still-running', url)
    assert r.returncode == 0 and "still-running" in r.stdout and "not reachable" in r.stderr
    strict = bash(f"{EMIT} progress", url, LOOP_STRICT="1")
    assert strict.returncode == 1


def test_rate_limited_events_are_retried_by_curl_until_stored(make_server):
    server = make_server("--rate", "2", "--burst", "1")
    r = bash(f"for i in 1 2 3 4; do {EMIT} progress current:=$i total:=4 || exit 9; done", server.url,
             LOOP_RUN="limited")
    assert r.returncode == 0, r.stderr
    assert [e["data"]["current"] for e in events(server)] == [1, 2, 3, 4]
    assert 'loop_events_rejected_total{reason="rate_limited"}' in server.get("/metrics").text


def test_bad_usage_says_how_to_fix_it(server):
    for args, words in [(["Bad"], "bad event type"), (["x", "novalue"], "KEY=TEXT"), ([], "usage")]:
        r = subprocess.run([EMIT, *args], capture_output=True, text=True,
                           env={**os.environ, "LOOP_SERVER": server.url})
        assert r.returncode == 2 and words in r.stderr
    assert events(server) == []


def test_the_library_reports_a_whole_task_and_leaves_the_callers_shell_alone(server):
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
    r = bash(script, server.url)
    assert r.returncode == 0, r.stderr + r.stdout
    leaked = [ln for ln in r.stdout.split("\n") if ln.startswith(">")]
    assert leaked == ["> LOOP_RUN"], leaked          # the one documented variable
    run = r.stdout.strip().split("run=")[1]
    kinds = [(e["type"], e["run"]) for e in events(server)]
    assert [k for k, _ in kinds] == ["task_started", "story_started", "ac_completed", "ac_failed", "output",
                                     "story_completed", "progress", "error_occurred", "task_completed"]
    assert {r_ for _, r_ in kinds} == {run}
    snap = server.get(f"/api/runs/{run}").json()
    assert snap["status"] == "failed" and snap["task_name"] == "Nightly build"
    assert [a["status"] for a in snap["stories"][0]["acceptance_criteria"]] == ["passed", "failed"]
    assert snap["output"] == "line one\nline two" and snap["last_error"]["retryable"] is True
