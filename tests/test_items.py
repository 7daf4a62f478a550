"""One table of item grammar cases (tests/fixtures/tables/emit_items.json), run against `loop emit`
(Python, a real sidecar stores the event) and bin/loop-emit (bash, its spool file holds the event)."""
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, free_port
from loopstream.items import ItemError, parse_items

TABLE = json.loads((ROOT / "tests" / "fixtures" / "tables" / "emit_items.json").read_text())["cases"]
EMIT = str(ROOT / "bin" / "loop-emit")


@pytest.mark.parametrize("case", TABLE, ids=[c["name"] for c in TABLE])
def test_parse_items_follows_the_table(case):
    if case.get("error"):
        with pytest.raises(ItemError):
            parse_items(case["items"])
    else:
        assert parse_items(case["items"]) == case["data"]


def test_loop_emit_builds_what_the_table_says(server):
    for n, case in enumerate(TABLE):
        run = f"items-{n}"
        r = subprocess.run([sys.executable, "-m", "loopstream", "emit", "note", *case["items"], "--run", run,
                            "--server", server.url], capture_output=True, text=True, timeout=30)
        stored = server.get("/api/events", params={"run": run}).json()["events"]
        if case.get("error"):
            assert (r.returncode, stored) == (2, []), case["name"]
            assert "Traceback" not in r.stderr, case["name"]
        else:
            assert r.returncode == 0, (case["name"], r.stderr)
            assert [e["data"] for e in stored] == [case["data"]], case["name"]


@pytest.fixture
def spool(tmp_path):
    """A spool directory whose shippers (pointed at a port nobody serves) are killed afterwards."""
    d = tmp_path / "spool"
    yield d
    for pidfile in d.glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


def test_bin_loop_emit_builds_what_the_table_says(spool):
    env = {**os.environ, "LOOP_SERVER": f"http://127.0.0.1:{free_port()}", "LOOP_SPOOL_DIR": str(spool)}
    for n, case in enumerate(TABLE):
        run = f"items-{n}"
        r = subprocess.run([EMIT, "note", *case["items"]], capture_output=True, text=True, timeout=30,
                           env={**env, "LOOP_RUN": run})
        queued = list(spool.glob(f"*__{run}.jsonl"))
        if case.get("error"):
            assert (r.returncode, queued) == (2, []), case["name"]
        else:
            assert r.returncode == 0, (case["name"], r.stderr)
            (line,) = queued[0].read_text().splitlines()
            assert json.loads(line)["data"] == case["data"], case["name"]


def test_loop_emit_help_names_every_item_form():
    r = subprocess.run([sys.executable, "-m", "loopstream", "emit", "--help"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0
    assert "KEY[]=TEXT" in r.stdout and "KEY:=JSON" in r.stdout and "KEY=TEXT" in r.stdout
