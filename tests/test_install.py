"""The README's first command, the way a new user meets it: installed into a clean virtual environment
*without* the test extra (from a built wheel with no source tree beside it, and as an editable install),
`loop run prds/demo.json --stream` starts its own sidecar, the dashboard URL it prints answers with the
run on it, the shell hooks are found and work, and the outbox's hand-over to the spool delivers.

A runtime dependency that only the test extra brings (gunicorn's gevent worker needs `packaging`) fails
here, as it would for the user."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import requests

from conftest import ROOT, free_port, wait_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def clean_env() -> dict:
    """Our environment without what would point a new venv's Python back at this checkout."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("LOOP_", "PYTHON", "VIRTUAL_ENV"))}


def sh(*args, timeout=900, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", clean_env())
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the committed-or-not tracked files, as a clean clone would have them (no egg-info, no build/)."""
    dest = tmp_path_factory.mktemp("checkout") / "loop"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def clean_venv(where: Path) -> Path:
    venv.create(where, with_pip=True, clear=True)
    return where / "bin"


def pip_install(bindir: Path, *what) -> None:
    sh(bindir / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", *what)


@pytest.fixture(scope="module")
def from_wheel(checkout, tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check", "-w", dist, checkout)
    (wheel,) = dist.glob("loopstream-*.whl")
    bindir = clean_venv(tmp_path_factory.mktemp("wheel-venv") / "venv")
    pip_install(bindir, wheel)
    shutil.rmtree(dist)
    return bindir


@pytest.fixture(scope="module")
def editable(checkout, tmp_path_factory) -> Path:
    bindir = clean_venv(tmp_path_factory.mktemp("editable-venv") / "venv")
    pip_install(bindir, "-e", checkout)
    return bindir


def demo_in(bindir: Path, workdir: Path) -> None:
    """The README's first command (bar the install) in ``workdir``, then everything a user does next."""
    env = clean_env()
    env.update(PATH=f"{bindir}{os.pathsep}{env['PATH']}", XDG_STATE_HOME=str(workdir / "state"),
               XDG_DATA_HOME=str(workdir / "data"), LOOP_SERVER=f"http://127.0.0.1:{free_port()}")
    prd = workdir / "prds" / "demo.json"
    prd.parent.mkdir(parents=True)
    shutil.copy(ROOT / "prds" / "demo.json", prd)
    run = subprocess.run(["loop", "run", "prds/demo.json", "--stream", "--no-update", "--max-attempts", "2"],
                         capture_output=True, text=True, timeout=300, cwd=workdir, env=env)
    try:
        assert run.returncode == 0, run.stderr
        assert "started a sidecar at" in run.stderr, run.stderr
        (url,) = re.findall(r"dashboard: (http://\S+)", run.stderr)
        run_id = url.rsplit("?run=", 1)[1]
        page = requests.get(url, timeout=10)
        assert page.status_code == 200 and "<title>" in page.text and 'type="module"' in page.text
        base = url.split("/?", 1)[0]
        assert requests.get(base + "/app.js", timeout=10).status_code == 200
        assert requests.get(f"{base}/api/runs/{run_id}", timeout=10).json()["status"] == "passed"
        check_hooks(bindir, workdir, base, env)
    finally:
        stop_embedded(workdir)


def check_hooks(bindir: Path, workdir: Path, base: str, env: dict) -> None:
    """The shell hooks are found (`loop shell-hooks`) and deliver; so does the outbox's hand-over to the spool."""
    env = {**env, "LOOP_SERVER": base, "LOOP_SPOOL_DIR": str(workdir / "spool")}
    library = sh(bindir / "loop", "shell-hooks", env=env).stdout.strip()
    assert Path(library).is_file() and not Path(library).is_relative_to(ROOT)
    sh("bash", "-c", f'source "{library}" && LOOP_RUN=from-hooks loop_progress 40 compiling && LOOP_STRICT=1 '
       f'"$(loop shell-hooks --emit)" note message=hi', env={**env, "LOOP_RUN": "from-hooks"})
    spooled = sh(bindir / "python", "-c",
                 "import sys; from loopstream.client.spool import hand_to_spool; "
                 "print(hand_to_spool(sys.argv[1], 'handed', [{'type': 'note', 'run': 'handed', 'data': {}}]))",
                 base, env=env).stdout.strip()
    assert spooled != "None", "hand_to_spool found no loop-emit"
    for run, count in (("from-hooks", 2), ("handed", 1)):
        def arrived(run=run, count=count) -> bool:
            return len(requests.get(f"{base}/api/events", params={"run": run}, timeout=5).json()["events"]) == count

        wait_for(arrived, timeout=30, message=f"the {run} events to arrive")


def stop_embedded(workdir: Path) -> None:
    record = workdir / "state" / "loop" / "sidecar.json"
    if record.exists():
        try:
            os.kill(json.loads(record.read_text())["pid"], signal.SIGTERM)
        except (ProcessLookupError, KeyError, ValueError):
            pass
    for pidfile in (workdir / "spool").glob("*.pid"):
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def test_the_demo_runs_from_a_wheel_in_a_clean_venv_without_the_test_extra(from_wheel, tmp_path):
    demo_in(from_wheel, tmp_path)


def test_the_demo_runs_from_an_editable_install_without_extras(editable, tmp_path):
    demo_in(editable, tmp_path)
