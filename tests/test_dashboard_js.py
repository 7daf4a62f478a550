"""The dashboard's JavaScript under node's test runner, one case per file in tests/js/: the reducer against
the golden fixtures, the connection and the shared stream with fakes, the tab title, and the pure helpers
of view.js (what the page says, which run it opens on). The page itself runs in Chromium (test_dashboard*.py)."""
import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NODE_TESTS = sorted((ROOT / "tests" / "js").glob("*.test.mjs"))


@pytest.mark.parametrize("path", NODE_TESTS, ids=[p.name for p in NODE_TESTS])
def test_node_tests_pass(path):
    node = shutil.which("node")
    assert node, "node is required (bin/test installs nodejs)"
    r = subprocess.run([node, "--test", str(path.relative_to(ROOT))], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    passed = re.search(r"^# pass (\d+)$", r.stdout, re.M)
    assert "\n# fail 0\n" in r.stdout and passed and int(passed.group(1)) > 0, r.stdout


def test_the_node_tests_cover_the_helpers_and_the_reducer():
    assert {"view.test.mjs", "reducer.test.mjs", "modules.test.mjs"} <= {p.name for p in NODE_TESTS}


def test_every_dashboard_file_is_installed():
    """A module missing from the wheel's data files is a 404 and a blank page for an installed loop."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    shipped = set(cfg["options.data_files"]["share/loop/dashboard"].split())
    assert shipped == {f"dashboard/{p.name}" for p in (ROOT / "dashboard").iterdir() if p.is_file()}
