"""The hand-over: events a command could not deliver before exiting go to the shell hooks' spool, whose
shipper (bin/loop-emit --ship) delivers them, in order, once the sidecar answers.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path


def spool_path(server: str, run: str | None) -> Path:
    """The spool bin/loop-emit uses for this server and run (the same naming, so one shipper serves both)."""
    base = os.environ.get("LOOP_SPOOL_DIR") or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state"), "loop", "spool")
    host = re.sub(r"[^A-Za-z0-9]", "_", server.split("://", 1)[-1])
    return Path(base) / f"{host}__{re.sub(r'[^A-Za-z0-9._-]', '_', run or '')}.jsonl"


def hand_to_spool(server: str, run: str | None, events: list[dict], token: str | None = None) -> Path | None:
    """Queue ``events`` in the shell hooks' spool and make sure its shipper runs (bin/loop-emit --ship):
    what `loop run` could not deliver before exiting is delivered, in order, once the sidecar answers.
    None when loop-emit is not installed (installed.hook_path) or the spool cannot be written."""
    import fcntl
    import subprocess

    from loopstream.installed import hook_path

    emit = hook_path("loop-emit")
    if not events or emit is None:
        return None
    spool = spool_path(server, run)
    try:
        spool.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{spool}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with open(spool, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events))
            if not _shipper_alive(Path(f"{spool}.pid")):
                with open(f"{spool}.log", "ab") as log:
                    proc = subprocess.Popen(["bash", str(emit), "--ship", str(spool), server], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, **({"LOOP_TOKEN": token} if token else {})})
                Path(f"{spool}.pid").write_text(f"{proc.pid}\n")
    except OSError:
        return None
    return spool


def _shipper_alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
        return True
    except (OSError, ValueError):
        return False
