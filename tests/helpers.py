"""Plain helpers the test files share (fixtures and the server/subscriber classes are in conftest.py):
the `loop` command line, PRD files, a run's transcript, whether a process still lives."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, wait_for

LOOP = [sys.executable, "-m", "loopstream"]      # the `loop` of this interpreter (the venv the tests run in)
AGENTS = ROOT / "tests" / "agents"               # recorded agent sessions, the fake CLI, the stand-in model API
REAL = AGENTS / "claude-real"                    # sessions recorded from the real Claude Code


def loop(*args, env=None, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    """`loop ARGS` run to its end; text output captured; env adds to this process's environment."""
    return subprocess.run([*LOOP, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


def write_prd(tmp_path: Path, stories, name: str = "prd.json", project: str = "Test project", **extra) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"project": project, **extra, "userStories": stories}, indent=1))
    return path


def story(sid, command="true", criteria=(), priority=1, deps=(), **kw) -> dict:
    """A PRD story that runs `command` (a shell line)."""
    return {"id": sid, "title": f"title {sid}", "acceptanceCriteria": list(criteria), "priority": priority,
            "passes": False, "dependencies": list(deps), "command": command, **kw}


def transcript(server, run) -> list[dict]:
    """Every event the sidecar holds for `run`, in order ([] while it knows no such run)."""
    r = server.get(f"/api/runs/{run}/transcript")
    return r.json()["events"] if r.ok else []


def finished(server, run) -> list[dict] | None:
    """The run's transcript once its last event ends it (completed or stopped), else None."""
    events = transcript(server, run)
    return events if events and events[-1]["type"] in ("task_completed", "task_stopped") else None


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ")[1][0] != "Z"



def redis_hub(url: str):
    """A Hub (in this process) on the Redis broker at `url`, once the broker has loaded."""
    from loopstream.sidecar.config import Config
    from loopstream.sidecar.hub import Hub

    hub = Hub(Config(backend=url, rate=0))
    wait_for(lambda: hub.broker.healthy, message="the Redis broker to load")
    return hub
