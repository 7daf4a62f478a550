"""A smoke run of the benchmark command, so it cannot rot: every server starts, takes load, reports."""
import json
import subprocess
import sys

from conftest import ROOT

NAMES = ["loop", "loop (history on)", "loop (Redis, 2 workers)", "sse-starlette + uvicorn", "Flask-SSE + Redis (gunicorn/gevent)",
         "queue per client (Flask/gevent)", "asyncio relay (floor)"]


def test_the_benchmark_smoke_measures_every_server(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
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
    faults = results["faults"]
    assert faults["kill9"]["output_complete"] and faults["kill9"]["ordered"] and faults["kill9"]["finished"]
    assert faults["storm"]["back_to_zero"] and faults["restart"]["reset_seen"]
    assert (tmp_path / "latency.png").stat().st_size > 10_000
    assert [row["mode"] for row in results["fsync"]["rows"]] == ["never", "everysec", "always"]
    assert all(row["single_per_s"] > 0 and row["concurrent_per_s"] > 0 for row in results["fsync"]["rows"])
    hose = results["firehose"]                                      # the noisy run finished, the hooks delivered
    assert hose["throughput"]["finished"] and hose["overhead"]["exit"] == 0 and hose["hooks"]["delivered_in_order"]


def test_the_hook_latency_row_measures_every_case_and_delivers_the_backlog(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "hook-latency", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    hooks = json.loads((tmp_path / "results.json").read_text())["hook_latency"]
    assert list(hooks["rows"]) == ["no-op hook (cat >/dev/null)", "loop, sidecar up", "loop, sidecar hung (SIGSTOP)",
                                   "loop, sidecar down"]
    assert all(row["calls"] == 30 and 0 < row["p50"] <= row["p99"] for row in hooks["rows"].values())
    assert hooks["delivered"] and "| loop, sidecar hung (SIGSTOP) |" in r.stdout
