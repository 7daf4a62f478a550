"""A smoke run of the benchmark command, so it cannot rot: every server starts, takes load, reports. The fault
scenarios are left out (--skip-faults): they are tests of their own (test_faults.py, the kill -9 in test_runner.py,
the stalled reader in test_stream.py)."""
import json
import subprocess
import sys

from conftest import ROOT

NAMES = ["loop", "loop (history on)", "loop (Redis, 2 workers)", "sse-starlette + uvicorn", "Flask-SSE + Redis (gunicorn/gevent)",
         "queue per client (Flask/gevent)", "asyncio relay (floor)"]


def test_the_benchmark_smoke_measures_every_server(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--skip-faults", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in NAMES:
        assert f"| {name} |" in r.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["latency"]) == set(NAMES)
    for name, rows in results["latency"].items():
        assert rows[0]["delivery"] == 1.0, name                     # every event reached every subscriber
    assert results["ingest"]["loop"]["batch"] > results["ingest"]["loop"]["single"]
    assert all(v["held"] > 0 for v in results["capacity"].values())
    assert results["soak"]["back_to_zero"] and results["soak"]["subscribers_after"] == 0
    assert "faults" not in results
    assert (tmp_path / "latency.png").stat().st_size > 10_000
    assert [row["mode"] for row in results["fsync"]["rows"]] == ["never", "everysec", "always"]
    assert all(row["single_per_s"] > 0 and row["concurrent_per_s"] > 0 for row in results["fsync"]["rows"])
    hose = results["firehose"]                                      # the noisy run finished, the hooks delivered
    assert hose["throughput"]["finished"] and hose["overhead"]["exit"] == 0 and hose["hooks"]["delivered_in_order"]
    hooks = results["hook_latency"]                                 # every case measured, the backlog delivered
    assert list(hooks["rows"]) == ["no-op hook (cat >/dev/null)", "loop, sidecar up", "loop, sidecar hung (SIGSTOP)",
                                   "loop, sidecar down"]
    assert all(row["calls"] == 30 and 0 < row["p50"] <= row["p99"] for row in hooks["rows"].values())
    assert hooks["delivered"] and "| loop, sidecar hung (SIGSTOP) |" in r.stdout
