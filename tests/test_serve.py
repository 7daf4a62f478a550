"""`loop serve`: gunicorn + one gevent worker, its refusals, shutdown and clean-up."""
import os
import signal
import subprocess
import sys
import time

from conftest import Server, Subscriber, free_port, wait_for


def pids_in_group(pgid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = open(f"/proc/{name}/stat").read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(int(name))
    return found


def loop_cmd(*args, env=None, timeout=20):
    return subprocess.run([sys.executable, "-m", "loopstream", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_runs_gunicorn_with_one_gevent_worker(server):
    master = server.proc.pid
    children = [p for p in pids_in_group(master) if p != master]
    assert len(children) == 1   # exactly one worker
    cmdline = open(f"/proc/{master}/cmdline").read()
    assert "loopstream" in cmdline
    assert server.get("/healthz").json()["ok"] is True


def test_sigterm_with_open_streams_exits_within_3s_and_leaves_nothing(tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    env = {"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(runtime)}
    server = Server(tmp_path, env=env).start()
    subs = [Subscriber(server.url) for _ in range(3)]
    for s in subs:
        s.next()
    pgid = server.proc.pid
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(10)
    assert time.monotonic() - started < 3.0
    wait_for(lambda: not pids_in_group(pgid), timeout=3, message="every process of the sidecar to exit")
    assert not (runtime / "gunicorn.ctl").exists() and not (tmp_path / ".gunicorn").exists()
    for s in subs:
        s.close()
    server.stop()


def test_more_than_one_worker_is_refused_with_a_reason():
    r = loop_cmd("serve", "--workers", "2", "--port", str(free_port()), "--no-history")
    assert r.returncode == 2
    assert "split the stream" in r.stderr and "Traceback" not in r.stderr


def test_non_loopback_bind_without_token_is_refused():
    r = loop_cmd("serve", "--host", "0.0.0.0", "--port", str(free_port()), "--no-history")
    assert r.returncode == 2      # a usage mistake: one line, exit 2
    assert "--token" in r.stderr and "--insecure" in r.stderr and "Traceback" not in r.stderr


def test_token_from_environment_guards_the_running_server(make_server):
    server = make_server(env={"LOOP_TOKEN": "t0k"})
    assert server.post({"type": "x"}).status_code == 401
    assert server.post({"type": "x"}, headers={"Authorization": "Bearer t0k"}).status_code == 201
    assert server.get("/stream/progress?token=wrong").status_code == 401
    sub = Subscriber(server.url, params={"token": "t0k"})
    assert sub.next()[1] == "hello"
    sub.close()


def test_corrupt_history_file_is_moved_aside_with_one_line_and_the_sidecar_serves(tmp_path):
    db = tmp_path / "h.json"
    db.write_text("{oops")
    server = Server(tmp_path, db=db).start()
    try:
        assert server.get("/api/runs").json()["runs"] == []
    finally:
        server.stop()
    log = server.log.read_text()
    assert f"{db} is not a readable history file" in log and "Traceback" not in log
    assert [p.name.split(".damaged-")[0] for p in tmp_path.glob("h.json.damaged-*")] == ["h.json"]


def test_redis_unreachable_at_start_is_one_clear_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "loopstream", "serve", "--port", str(free_port()),
                          "--backend", f"redis://127.0.0.1:{free_port()}/0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "cannot reach Redis" in out.stderr and "--backend memory" in out.stderr


def test_idle_exit_waits_for_open_streams_then_exits_cleanly(make_server):
    server = make_server("--rate", "0", "--idle-exit", "1", "--heartbeat", "0.3")
    assert server.get("/healthz").json()["pid"] == server.proc.pid      # the master: the one to signal
    sub = Subscriber(server.url)
    for _ in range(8):                                                   # > 2 s with a stream open
        sub.next()
    assert server.proc.poll() is None
    sub.close()
    wait_for(lambda: server.proc.poll() is not None, timeout=15, message="the idle sidecar to exit")
    assert server.proc.returncode == 0


def test_healthz_pid_is_the_process_to_signal(make_server):
    server = make_server("--rate", "0")
    pid = server.get("/healthz").json()["pid"]
    assert pid == server.proc.pid
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: server.proc.poll() is not None, timeout=10, message="the sidecar to stop")


def test_idle_exit_with_several_workers_is_refused_with_a_reason(redis_server):
    r = loop_cmd("serve", "--workers", "2", "--idle-exit", "5", "--port", str(free_port()),
                 "--backend", redis_server.url)
    assert r.returncode == 2 and "--idle-exit" in r.stderr and "Traceback" not in r.stderr
