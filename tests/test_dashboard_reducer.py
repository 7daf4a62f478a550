"""The dashboard's JS reducer and connection logic, run by node against the same golden fixtures."""
import shutil
import subprocess

from conftest import ROOT


def test_js_reducer_and_connection_pass_the_node_tests():
    node = shutil.which("node")
    assert node, "node is required (bin/test installs nodejs)"
    r = subprocess.run([node, "--test", "tests/js/"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "# fail 0" in r.stdout and "reducer matches full_run.json" in r.stdout
