"""No stored byte stops a start or makes a lasting 5xx (issue 21), on both backends.

Real stores are made by a real hub, then damaged the way disks, older versions and other programs
damage them (truncated, nested, types swapped, NaN injected, bytes flipped, foreign Redis data).
A hub then starts on them in-process, with the real History and brokers, and must: be healthy,
list its runs as strict JSON, accept a new event whose id it can read back (above every id issued
before) and find it in the run's transcript, and serve every run whose own data was not damaged
as before. The probe's concrete cases are kept as regression tests; a few boot a real sidecar.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Server, Subscriber, wait_for
from helpers import redis_hub
from loopstream.core import events as ev
from loopstream.sidecar import stored
from loopstream.sidecar.brokers.memory import StoreRefused
from loopstream.sidecar.config import Config
from loopstream.sidecar.history import History
from loopstream.sidecar.hub import Hub, Refused
from loopstream.sidecar.routes.claude_hooks import hook_drafts

FUTURE = 10**9          # ms: the stores are made with ids this far ahead of the clock
RUNS = ("done1", "done2", "live")
DEEP = "[" * 100_000 + "]" * 100_000


def fill(hub: Hub) -> None:
    """Two finished runs and a live one."""
    for run in ("done1", "done2"):
        hub.publish([ev.Draft("task_started", run, {"task_name": run, "story_count": 1}),
                     ev.Draft("story_started", run, {"story_id": "S1", "title": "one", "acceptance_criteria": ["a"]}),
                     ev.Draft("output", run, {"story_id": "S1", "stream": "stdout", "text": f"{run} says hi\n"})])
        hub.publish([ev.Draft("story_completed", run, {"story_id": "S1", "status": "passed"}),
                     ev.Draft("task_completed", run, {"summary": {"passed": 1}})])
    hub.publish([ev.Draft("task_started", "live", {"task_name": "live"}),
                 ev.Draft("progress", "live", {"percent": 40})])


def view(hub: Hub, run: str) -> tuple:
    """What a client sees of a run: its state's identity and its transcript's ids."""
    snap = hub.run_state(run)
    events = hub.transcript(run)
    return (snap["status"], snap["event_count"], snap["last_event_id"], snap["counts"],
            [e["id"] for e in events["events"]], events["complete"])


CATCH_UP_S = 30.0


def check_serves(hub: Hub, baseline: dict[str, tuple], touched: set[str], issued: tuple[int, int]) -> None:
    """The hub serves: healthy, strict JSON, a new event readable back, untouched runs as before."""
    assert hub.health()["ok"], hub.health()
    ev.dumps(hub.run_list())                       # strict: no NaN, nothing that is not JSON
    for run in RUNS:
        try:
            ev.dumps(hub.run_state(run))
        except Refused as e:
            assert run in touched and e.status == 404
    (e,) = hub.publish([ev.Draft("progress", "fresh", {"percent": 1})])
    assert stored.sound_id(e.id) == (e.epoch, e.seq), e.id
    assert (e.epoch, e.seq) > issued, (e.id, issued)   # above every id issued before the damage
    # A new epoch means the follower loads the state again before the replica holds it; on a machine
    # busy enough, that takes longer than the 2 s a request waits (a 503 then): the test waits longer.
    hub.broker.catch_up(timeout=CATCH_UP_S)
    assert [x["id"] for x in hub.transcript("fresh")["events"]][-1] == e.id
    for run in set(RUNS) - touched:
        assert view(hub, run) == baseline[run], run


# -- damage --------------------------------------------------------------------------------------
def paths(value, prefix=()):
    """Every path into a JSON value (at most 200)."""
    out = [prefix]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for k, v in items:
        if len(out) < 200:
            out += paths(v, (*prefix, k))
    return out[:200]


def put(value, path, new):
    if not path:
        return new
    value[path[0]] = put(value[path[0]], path[1:], new)
    return value


ODD = ["x", [], {}, None, 10**25, -1, True, "NaN", DEEP[:200] + DEEP[-200:]]


@st.composite
def damaged(draw, data: bytes) -> bytes:
    """``data`` (stored JSON, or JSON lines) damaged one way."""
    how = draw(st.sampled_from(["truncate", "flip", "nul", "nest", "swap", "nan", "line"]))
    if how == "truncate":
        return data[:draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= draw(st.integers(1, 255))
        return bytes(out)
    if how == "nul":
        return b"\0" * draw(st.sampled_from([1, len(data), 4096]))
    lines = data.split(b"\n") if data.count(b"\n") > 1 else [data]
    i = draw(st.integers(0, len(lines) - 1)) if how == "line" or len(lines) > 1 else 0
    try:
        value = json.loads(lines[i])
    except ValueError:
        return data + b"\0"
    if how == "nest" or how == "line":
        depth = draw(st.sampled_from([1, 40, 100_000]))
        text = "[" * depth + json.dumps(value) + "]" * depth
    else:
        path = draw(st.sampled_from(paths(value)))
        new = draw(st.sampled_from(ODD)) if how == "swap" else draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        text = json.dumps(put(value, list(path), new))
    lines[i] = text.encode()
    return b"\n".join(lines)


# -- the memory backend ------------------------------------------------------------------------
def memory_hub(db: Path, clock=time.time) -> Hub:
    return Hub(Config(db=str(db), rate=0), clock=clock)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A data dir made by a hub whose clock runs FUTURE ahead, and how its runs look after a restart."""
    root = tmp_path_factory.mktemp("pristine")
    hub = memory_hub(root / "history.json", clock=lambda: time.time() + FUTURE / 1000)
    fill(hub)
    issued = hub.broker.head
    hub.close()
    again = memory_hub(root / "history.json")
    baseline = {run: view(again, run) for run in RUNS}
    again.close()
    for f in root.glob("*.damaged-*"):
        raise AssertionError(f"the pristine store is damaged: {f}")
    return root, baseline, issued


def store_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and ".damaged" not in p.name)


def run_of(root: Path, path: Path) -> str | None:
    return None if path.parent == root else path.name.split(".")[0]


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_memory_boots_and_serves_over_any_damaged_file(pristine, tmp_path_factory, data):
    root, baseline, issued = pristine
    work = tmp_path_factory.mktemp("damaged")
    shutil.copytree(root, work, dirs_exist_ok=True)
    target = data.draw(st.sampled_from(store_files(work)), label="file")
    target.write_bytes(data.draw(damaged(target.read_bytes()), label="damage"))
    hub = memory_hub(work / "history.json")
    try:
        touched = {run_of(work, target)} - {None}
        check_serves(hub, baseline, touched, issued)
    finally:
        hub.close()
    shutil.rmtree(work)


def probe(root: Path, name: str, text: bytes) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text)
    return path


def index_with(root: Path, change) -> bytes:
    raw = json.loads((root / "history.json").read_text())
    change(raw)
    return json.dumps(raw).encode()


def nan_summary(raw):
    next(iter(raw["index"].values()))["summary"]["elapsed_s"] = math.nan


def text_updated_at(raw):
    for row in raw["index"].values():
        row["summary"]["updated_at"] = "yesterday"


def huge_epoch(raw):
    raw["meta"]["1"]["epoch"] = 10**25


def superscript_row(raw):
    raw["index"]["\u00b2"] = next(iter(raw["index"].values()))   # "²".isdigit(), but int("²") raises


PROBE_CASES = {
    "history.json is []": ("history.json", lambda root: b"[]"),
    "history.json nested 100,000 deep": ("history.json", lambda root: DEEP.encode()),
    "NaN in one summary": ("history.json", lambda root: index_with(root, nan_summary)),
    "updated_at a string": ("history.json", lambda root: index_with(root, text_updated_at)),
    "an epoch of 10^25": ("history.json", lambda root: index_with(root, huge_epoch)),
    "an index row numbered \u00b2": ("history.json", lambda root: index_with(root, superscript_row)),
    "a finished run's file nested deep": ("finished/done1.json", lambda root: DEEP.encode()),
    "a finished run's file with NaN": ("finished/done1.json",
                                       lambda root: (root / "finished/done1.json").read_bytes()
                                       .replace(b'"elapsed_s":', b'"elapsed_s":NaN,"x":', 1)),
    "a finished run's file with Infinity": ("finished/done1.json",
                                            lambda root: (root / "finished/done1.json").read_bytes()
                                            .replace(b'"percent":', b'"percent":-Infinity,"y":', 1)),
    "a journal of NUL bytes": ("runs/live.jsonl", lambda root: b"\0" * 4096),
}


@pytest.mark.parametrize("case", list(PROBE_CASES))
def test_the_probes_damaged_histories_are_quarantined_and_the_rest_served(pristine, tmp_path, case, caplog):
    root, baseline, issued = pristine
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    name, make = PROBE_CASES[case]
    damaged_file = probe(tmp_path, name, make(tmp_path))
    content = damaged_file.read_bytes()
    hub = memory_hub(tmp_path / "history.json")
    try:
        touched = {run_of(tmp_path, damaged_file)} - {None}
        check_serves(hub, baseline, touched, issued)
        assert ev.loads(json.dumps(hub.run_list(), allow_nan=False))   # sortable, strict: /api/runs is a 200
        if damaged_file.name == "done1.json":   # its journal stands in: the run is still there
            assert hub.run_state("done1")["status"] == "passed"
    finally:
        hub.close()
    aside = list(damaged_file.parent.glob(damaged_file.name + ".damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == content, aside
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(damaged_file) in w and "moved it to" in w for w in warnings), warnings


def test_a_journal_ending_in_nul_bytes_keeps_its_lines_and_sets_the_nuls_aside(tmp_path, caplog):
    hub = memory_hub(tmp_path / "history.json")
    (first,) = hub.publish([ev.Draft("task_started", "r", {})])
    hub.close()
    journal = tmp_path / "runs" / "r.jsonl"
    with open(journal, "ab") as f:
        f.write(b"\0" * 512)        # a power cut: the file grew, its data never reached the disk
    hub = memory_hub(tmp_path / "history.json")
    try:
        assert hub.transcript("r")["complete"] is False          # the damage is not silently ignored
        (second,) = hub.publish([ev.Draft("progress", "r", {"percent": 5})])
        assert [e["id"] for e in hub.transcript("r")["events"]] == [first.id, second.id]
    finally:
        hub.close()
    (aside,) = (tmp_path / "runs").glob("r.jsonl.damaged-tail-*")
    assert aside.read_bytes() == b"\0" * 512
    assert any("r.jsonl" in r.getMessage() and "NUL" in r.getMessage() for r in caplog.records)


def test_a_journal_line_whose_time_is_text_is_skipped_and_the_run_list_still_sorts(pristine, tmp_path):
    root, baseline, issued = pristine
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    journal = tmp_path / "runs" / "live.jsonl"
    lines = journal.read_text().splitlines()
    lines[-1] = lines[-1].replace('"ts":', '"ts":"yesterday","was":', 1)
    journal.write_text("\n".join(lines) + "\n")
    hub = memory_hub(tmp_path / "history.json")
    try:
        check_serves(hub, baseline, {"live"}, issued)
        assert hub.transcript("live")["complete"] is False
        assert {"live", "fresh"} <= {r["run"] for r in hub.run_list()}     # sorted by time: no TypeError
    finally:
        hub.close()


def test_a_torn_last_line_is_still_dropped_silently(tmp_path, caplog):
    hub = memory_hub(tmp_path / "history.json")
    (first,) = hub.publish([ev.Draft("task_started", "r", {})])
    hub.close()
    with open(tmp_path / "runs" / "r.jsonl", "ab") as f:
        f.write(b'{"id":"1-2","type":"pro')      # a crash in the middle of a write(): never acknowledged
    hub = memory_hub(tmp_path / "history.json")
    try:
        assert hub.transcript("r") == {"run": "r", "complete": True, "events": hub.transcript("r")["events"]}
        (second,) = hub.publish([ev.Draft("progress", "r", {"percent": 5})])
        assert [e["id"] for e in hub.transcript("r")["events"]] == [first.id, second.id]
    finally:
        hub.close()
    assert not list((tmp_path / "runs").glob("*.damaged*"))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_healthz_says_503_while_the_journal_cannot_be_written_and_200_once_a_publish_succeeds(tmp_path):
    hub = memory_hub(tmp_path / "history.json")
    try:
        (tmp_path / "runs" / "stuck.jsonl").mkdir()        # the journal cannot be opened for writing
        with pytest.raises(Refused) as refused:
            hub.publish([ev.Draft("progress", "stuck", {})])
        assert refused.value.status == 503
        health = hub.health()
        assert not health["ok"] and "journal" in health["error"], health
        hub.publish([ev.Draft("progress", "fine", {})])
        assert hub.health()["ok"]
    finally:
        hub.close()


# -- the Redis backend ---------------------------------------------------------------------------
class Redis:
    """Raw commands, as another program would send them."""

    def __init__(self, url: str):
        import redis

        self.r = redis.Redis.from_url(url)

    def __call__(self, *words):
        return self.r.execute_command(*words)


@pytest.fixture(scope="module")
def redis_pristine(redis_server):
    """A Redis store whose ids run FUTURE ahead, a dump of every key, and its runs as served."""
    redis_server.command("FLUSHALL")
    r = Redis(redis_server.url)
    r("SET", "loop:epoch", str(int(time.time() * 1000) + FUTURE))
    r("SET", "loop:seq", "0")
    hub = redis_hub(redis_server.url)
    fill(hub)
    hub.broker.catch_up()
    wait_for(lambda: r("HLEN", "loop:checkpoint") >= 2, message="the finished runs' checkpoints")
    issued = hub.broker.head
    baseline = {run: view(hub, run) for run in RUNS}
    hub.close()
    dump = {k: r("DUMP", k) for k in r("KEYS", "loop:*")}
    return redis_server.url, dump, baseline, issued


def restore(r: Redis, dump: dict) -> None:
    r("FLUSHALL")
    for k, v in dump.items():
        r("RESTORE", k, 0, v)


FOREIGN = {   # damage that is not a mutation of a stored value
    "foreign stream entry": [("XADD", "loop:stream", "*", "x", "y")],
    "stream id far ahead": [("XADD", "loop:stream", "99999999999999999-5", "x", "y")],
    "stream at the last id Redis allows": [("XADD", "loop:stream", "18446744073709551615-1", "x", "y")],
    "stream of another type": [("DEL", "loop:stream"), ("SET", "loop:stream", "x")],
    "epoch text": [("SET", "loop:epoch", "abc")],
    "epoch huge": [("SET", "loop:epoch", "1" + "0" * 25)],
    "epoch negative": [("SET", "loop:epoch", "-5")],
    "epoch of another type": [("DEL", "loop:epoch"), ("LPUSH", "loop:epoch", "1")],
    "seq text": [("SET", "loop:seq", "abc")],
    "seq huge": [("SET", "loop:seq", "9" * 30)],
    "seq gone": [("DEL", "loop:seq")],
    "runs of another type": [("DEL", "loop:runs"), ("SET", "loop:runs", "x")],
    "run names that are not runs": [("SADD", "loop:runs", "../x", "", "a" * 500)],
    "transcript of another type": [("DEL", "loop:transcript:fresh"), ("SET", "loop:transcript:fresh", "x")],
}


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_redis_boots_and_serves_over_any_damaged_key(redis_pristine, data):
    url, dump, baseline, issued = redis_pristine
    r = Redis(url)
    restore(r, dump)
    where = data.draw(st.sampled_from(["checkpoint", "summary", "transcript", "foreign"]), label="where")
    touched: set[str] = set()
    if where == "foreign":
        for words in FOREIGN[data.draw(st.sampled_from(sorted(FOREIGN)), label="foreign")]:
            r(*words)
    elif where == "transcript":
        run = data.draw(st.sampled_from(RUNS), label="run")
        i = data.draw(st.integers(0, r("LLEN", f"loop:transcript:{run}") - 1), label="entry")
        r("LSET", f"loop:transcript:{run}", i, data.draw(damaged(r("LINDEX", f"loop:transcript:{run}", i))))
        touched.add(run)
    else:
        run = data.draw(st.sampled_from(["done1", "done2"]), label="run")
        r("HSET", f"loop:{where}", run, data.draw(damaged(r("HGET", f"loop:{where}", run)), label="damage"))
        touched.add(run)
    hub = redis_hub(url)
    try:
        check_serves(hub, baseline, touched, issued)
    finally:
        hub.close()


def test_a_foreign_stream_entry_or_a_text_counter_while_running_changes_nothing_for_clients(redis_pristine, caplog):
    url, dump, baseline, issued = redis_pristine
    r = Redis(url)
    restore(r, dump)
    hub = redis_hub(url)
    try:
        for words in (("XADD", "loop:stream", "*", "x", "y"), ("SET", "loop:seq", "abc"), ("SET", "loop:epoch", "?")):
            r(*words)
            hub.broker.catch_up(timeout=CATCH_UP_S)   # the hello's first step: no 500 on a text counter
            check_serves(hub, baseline, set(), issued)
            issued = hub.broker.head
        assert any("a new epoch was chosen" in rec.getMessage() for rec in caplog.records)
    finally:
        hub.close()


# -- real sidecars -------------------------------------------------------------------------------
def test_memory_sidecar_boots_over_the_probes_damage_and_says_what_it_moved_aside(pristine, tmp_path):
    root, baseline, issued = pristine
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    probe(tmp_path, "history.json", index_with(tmp_path, lambda raw: (huge_epoch(raw), text_updated_at(raw))))
    probe(tmp_path, "finished/done2.json", DEEP.encode())
    probe(tmp_path, "runs/live.jsonl", b"\0" * 4096)
    server = Server(tmp_path, args=["--rate", "0"]).start()
    try:
        assert server.get("/healthz").status_code == 200
        runs = server.get("/api/runs")
        assert runs.status_code == 200 and {"done1", "done2"} <= {r["run"] for r in runs.json()["runs"]}
        ids = server.post({"type": "progress", "run": "fresh", "data": {"percent": 1}}).json()["ids"]
        assert stored.sound_id(ids[0]) > issued
        assert server.get("/api/runs/fresh/transcript").json()["events"][0]["id"] == ids[0]
        assert server.get("/api/runs/done2").json()["status"] == "passed"      # its journal stands in
    finally:
        server.stop()
    log = server.log.read_text()
    for name in ("history.json", "done2.json", "live.jsonl"):
        assert f"{name} " in log and f"moved it to {name}.damaged-" in log, (name, log)
    assert "Traceback" not in log


def test_redis_sidecar_boots_over_foreign_data_and_healthz_tells_an_unusable_store(redis_pristine, tmp_path):
    url, dump, baseline, issued = redis_pristine
    r = Redis(url)
    restore(r, dump)
    r("SET", "loop:epoch", "abc")
    r("HSET", "loop:checkpoint", "done1", DEEP)
    r("HSET", "loop:summary", "done2", DEEP)
    r("HSET", "loop:checkpoint", "done2", '{"event_count": NaN}')
    server = Server(tmp_path, backend=url, args=["--rate", "0"]).start()
    try:
        r("XADD", "loop:stream", "*", "x", "y")
        assert server.post({"type": "progress", "run": "fresh", "data": {"percent": 1}}).status_code == 201
        r("SET", "loop:seq", "9" * 30)
        sub = Subscriber(server.url)
        assert sub.take(1)[0][1] == "hello"
        ids = server.post({"type": "progress", "run": "fresh", "data": {"percent": 2}}).json()["ids"]
        assert stored.sound_id(ids[0]) > issued
        first = sub.take(1)[0]      # the new epoch reads as a reset (its snapshot holds the event), or the event
        assert first[1] == "reset" or first[0] == ids[0], first
        sub.close()
        assert server.get("/api/runs/done1").json()["status"] == "passed"
        assert server.get("/healthz").status_code == 200
        r("CONFIG", "SET", "maxmemory", "1")       # every write refused: the store is really unusable
        try:
            assert server.post({"type": "progress", "run": "fresh", "data": {}}).status_code == 503
            health = server.get("/healthz")
            assert health.status_code == 503 and "maxmemory" in health.json()["error"], health.text
        finally:
            r("CONFIG", "SET", "maxmemory", "0")
        assert server.post({"type": "progress", "run": "fresh", "data": {}}).status_code == 201
        assert server.get("/healthz").status_code == 200
    finally:
        server.stop()
    assert "Traceback" not in server.log.read_text()


# -- what a 201 survives: --fsync ----------------------------------------------------------------
def write(history: History, run: str, n: int) -> int:
    e = ev.Event(1, n, "progress", run, 0.0, {"n": n})
    e.json = ev.dumps(e.as_dict())
    return history.record([e])


def test_fsync_always_puts_each_batch_on_disk_before_returning_and_groups_concurrent_ones(tmp_path):
    h = History(tmp_path / "h.json", fsync="always")
    h.open()
    ticket = write(h, "solo", 1)
    assert h.journals._synced < ticket and h.fsyncs == 0        # written, not yet durable
    h.durable(ticket)
    assert h.journals._synced >= ticket and h.fsyncs == 1

    def post(k: int) -> None:
        for i in range(40):
            h.durable(write(h, f"r{k}", i))

    threads = [threading.Thread(target=post, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert h.journals._synced == h.journals._writes == 321 and not h.journals._dirty
    assert h.fsyncs < 321, h.fsyncs                     # batches written meanwhile shared an fsync
    h.close()


def failing_fsync(fd):
    raise OSError(5, "Input/output error")


def test_a_failed_fsync_raises_for_the_batches_it_covered_and_not_for_later_ones(tmp_path, monkeypatch):
    h = History(tmp_path / "h.json", fsync="always")
    h.open()
    try:
        ticket = write(h, "r", 1)
        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(OSError, match="may not be on disk"):
            h.durable(ticket)
        with pytest.raises(OSError):                # asked again: still not durable
            h.durable(ticket)
        monkeypatch.undo()
        h.durable(write(h, "r", 2))                 # a later batch, fsynced: durable
        assert h.sync_errors == 1
    finally:
        h.close()


def test_fsync_always_answers_503_not_201_when_the_fsync_fails_and_healthz_says_so(tmp_path, monkeypatch):
    hub = Hub(Config(db=str(tmp_path / "history.json"), rate=0, fsync="always"))
    try:
        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(Refused) as refused:
            hub.publish([ev.Draft("task_started", "r", {}), ev.Draft("task_completed", "r", {})])
        assert (refused.value.status, refused.value.code) == (503, "journal_not_durable")
        health = hub.health()
        assert not health["ok"] and "fsync" in health["error"], health
        assert "r" in hub.history.index                    # the finished run is still listed
        monkeypatch.undo()
        hub.publish([ev.Draft("progress", "r2", {})])
        assert hub.health()["ok"]
    finally:
        hub.close()


def test_fsync_everysec_catches_up_within_seconds_and_never_does_not_fsync(tmp_path):
    h = History(tmp_path / "a" / "h.json", fsync="everysec")
    h.open()
    h.start_writer(interval=0.05)
    ticket = write(h, "r", 1)
    h.durable(ticket)                                   # returns at once: not this mode's promise
    wait_for(lambda: h.journals._synced >= ticket, timeout=5, message="the history thread's fsync")
    h.close()
    n = History(tmp_path / "b" / "h.json", fsync="never")
    n.open()
    assert write(n, "r", 1) == 0
    n.close()
    assert n.fsyncs == 0


def test_serve_fsync_always_answers_every_post_and_shares_fsyncs(tmp_path):
    server = Server(tmp_path, args=["--rate", "0", "--fsync", "always"]).start()
    try:
        def post(k: int) -> None:
            s = requests.Session()
            for i in range(25):
                r = s.post(server.url + "/api/events", json={"type": "progress", "run": f"r{k}", "data": {"n": i}},
                           timeout=10)
                assert r.status_code == 201, r.text

        threads = [threading.Thread(target=post, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        metrics = dict(line.split(" ") for line in server.get("/metrics").text.splitlines() if line[0] != "#"
                       and " " in line and "{" not in line)
        assert metrics["loop_events_accepted_total"] == "200"
        assert 1 <= int(metrics["loop_journal_fsyncs_total"]) < 200, metrics
        assert sum(1 for _ in open(tmp_path / "runs" / "r3.jsonl")) == 25
    finally:
        server.stop()
    assert os.path.exists(tmp_path / "history.json")


def test_a_write_redis_refuses_for_another_reason_than_the_type_moves_nothing_aside(redis_server):
    redis_server.command("FLUSHALL")
    r = Redis(redis_server.url)
    hub = redis_hub(redis_server.url)
    try:
        hub.publish([ev.Draft("progress", "kept", {"percent": 1})])
    finally:
        hub.close()
    r("ACL", "SETUSER", "norpush", "on", ">pw", "~*", "&*", "+@all", "-rpush")   # an error that is not WRONGTYPE
    refused = redis_hub(redis_server.url.replace("redis://", "redis://norpush:pw@"))
    try:
        with pytest.raises(StoreRefused):
            refused.publish([ev.Draft("progress", "kept", {"percent": 2})])
    finally:
        refused.close()
        r("ACL", "DELUSER", "norpush")
    assert [k for k in r("KEYS", "loop:*") if b".damaged-" in k] == []
    assert r("LLEN", "loop:transcript:kept") == 1


def test_a_finished_run_that_comes_back_keeps_its_journal_when_older_runs_are_pruned(tmp_path):
    """A resumed Claude Code session is a finished run that is live again: pruning the oldest
    finished runs must not unlink the journal it appends to."""
    hub = memory_hub(tmp_path / "history.json")
    hub.history.keep = 2
    start = {"session_id": "back", "hook_event_name": "SessionStart", "source": "startup"}
    try:
        hub.publish(hook_drafts(start, False))
        hub.publish(hook_drafts({"session_id": "back", "hook_event_name": "SessionEnd"}, False))
        assert "back" in hub.history.index
        hub.publish(hook_drafts({**start, "source": "resume"}, False))
        assert hub.run_state("back")["status"] == "running"
        for run in ("x", "y", "z"):                       # three finish after it: past keep
            hub.publish([ev.Draft("task_started", run, {}), ev.Draft("task_completed", run, {})])
        (last,) = hub.publish([ev.Draft("progress", "back", {"percent": 5})])
    finally:
        hub.close()
    again = memory_hub(tmp_path / "history.json")
    try:
        assert again.transcript("back")["events"][-1]["id"] == last.id
    finally:
        again.close()
