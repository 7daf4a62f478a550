"""The dashboard row: Chromium's main-thread busy time while a run prints continuously.

A real sidecar (`loop serve`) and a real headless Chromium (selenium): the page watches a run
whose output tail is already 100 KB, while that run streams `rate` output events per second
(one line each). The Chrome DevTools Protocol's Performance.getMetrics gives TaskDuration (time
the renderer's main thread spent in tasks: script, style, layout, paint); its growth over the
window, divided by the window, is the busy share. Target: under 20 %.

    python -m bench.dashboard [--seconds 10] [--rate 50] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .client import KeepAlive
from .targets import ROOT, free_port, wait_http

TARGET_BUSY = 0.20
RUN = "bench-dash"


def prefill(client: KeepAlive, kilobytes: int = 100) -> None:
    """task_started, then enough output that the run's kept tail is full (100 KB)."""
    client.post("/api/events", json.dumps({"type": "task_started", "run": RUN,
                                           "data": {"task_name": "Printing", "story_count": 1}}).encode())
    chunk = ("x" * 79 + "\n") * 50       # 4000 characters
    for _ in range(kilobytes // 4 + 2):
        client.post("/api/events", json.dumps({"type": "output", "run": RUN, "data": {"text": chunk}}).encode())


def publish(port: int, rate: float, seconds: float, done: threading.Event) -> int:
    client = KeepAlive(port)
    count = int(rate * seconds)
    start = time.monotonic()
    for i in range(count):
        wait = start + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        line = f"step {i:06d}: compiled module_{i % 97} in {i % 13}.{i % 10}s, {i * 7 % 1000} warnings\n"
        client.post("/api/events", json.dumps({"type": "output", "run": RUN,
                                               "data": {"story_id": "S1", "stream": "stdout", "text": line}}).encode())
    client.close()
    done.set()
    return count


def browser(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--window-size=1280,1100", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def metrics(driver) -> dict:
    return {m["name"]: m["value"] for m in driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]}


def measure(seconds: float = 10.0, rate: float = 50.0) -> dict:
    """Start a sidecar and Chromium, stream, and return the busy share and its parts."""
    tmp = tempfile.mkdtemp(prefix="bench-dashboard-")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "loopstream", "serve", "--port", str(port), "--rate", "0",
                               "--no-history"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    driver = None
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        prefill(KeepAlive(port))
        driver = browser(tmp + "/profile")
        driver.get(f"http://127.0.0.1:{port}/?run={RUN}")
        deadline = time.monotonic() + 20
        while not driver.execute_script(
                "return document.getElementById('connection').dataset.state === 'live' && "
                "document.getElementById('output').textContent.length >= 99000"):
            if time.monotonic() > deadline:
                raise RuntimeError("the dashboard did not show the run")
            time.sleep(0.1)
        driver.execute_cdp_cmd("Performance.enable", {"timeDomain": "threadTicks"})
        done = threading.Event()
        sent = [0]
        worker = threading.Thread(target=lambda: sent.__setitem__(0, publish(port, rate, seconds, done)))
        before = metrics(driver)
        worker.start()
        done.wait(seconds * 3 + 30)
        worker.join()
        after = metrics(driver)
        shown, last = False, time.monotonic() + 5   # the last line reaches the page a frame later
        while not shown and time.monotonic() < last:
            shown = driver.execute_script(
                "return document.getElementById('output').textContent.includes(arguments[0])",
                f"step {sent[0] - 1:06d}:")
            time.sleep(0.05)
        wall = after["Timestamp"] - before["Timestamp"]
        part = {k: (after.get(k, 0) - before.get(k, 0)) / wall
                for k in ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")}
        return {"seconds": wall, "rate": rate, "events": sent[0], "busy": part["TaskDuration"],
                "script": part["ScriptDuration"], "layout": part["LayoutDuration"],
                "style": part["RecalcStyleDuration"], "last_line_shown": bool(shown), "target": TARGET_BUSY}
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def report(r: dict) -> str:
    verdict = "met" if r["busy"] < r["target"] else "missed"
    return ("| dashboard (headless Chromium) | main thread busy while a run streams "
            f"{r['rate']:.0f} output events/s with a 100 KB tail | {r['busy'] * 100:.1f} % "
            f"(script {r['script'] * 100:.1f} %, style {r['style'] * 100:.1f} %, layout {r['layout'] * 100:.1f} %) "
            f"| target < {r['target'] * 100:.0f} %: {verdict}; last line shown: {r['last_line_shown']} |")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=50.0, help="output events per second")
    p.add_argument("--out", default="artifacts/bench")
    args = p.parse_args(argv)
    r = measure(args.seconds, args.rate)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dashboard.json").write_text(json.dumps(r, indent=1))
    print("| what | measured | value | target |\n|---|---|---|---|")
    print(report(r))


if __name__ == "__main__":
    main()
