"""Runs as OpenTelemetry traces (sidecar/otlp_out*.py): the mapping of events to spans (pure), and the
export for real — `loop serve --otlp-endpoint` sending to Arize Phoenix (tests/phoenix_server.py), the spans read
back through Phoenix's REST API: a `loop run` with an agent story, a `loop exec`, a Claude Code hook
session, a run exported while it runs, Phoenix stopped and started again mid-run, a sidecar restarted
mid-run, a fleet on Redis, and backends that are down or answer garbage."""
from __future__ import annotations

import http.server
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests

from conftest import free_port, wait_for
from helpers import AGENTS, LOOP, REAL, loop, story, write_prd
from loopstream.sidecar.config import otlp_traces_url
from loopstream.sidecar.otlp.trace_map import ATTR_TEXT, Mapper, SpanRecord
from phoenix_server import phoenix  # noqa: F401  (a session fixture)

FAKE = f"{sys.executable} {AGENTS / 'fake_claude.py'}"


# -- the mapping (pure) -------------------------------------------------------------------------------
def events_of(run: str, items: list[tuple[str, dict]], t0: float = 1000.0, epoch: int = 7) -> list[dict]:
    return [{"id": f"{epoch}-{i + 1}", "type": t, "run": run, "ts": t0 + i, "data": d} for i, (t, d) in enumerate(items)]


AGENT_RUN = [
    ("task_started", {"task_name": "Ship it", "story_count": 2}),
    ("story_started", {"story_id": "S-1", "title": "login", "attempt": 1}),
    ("agent_init", {"story_id": "S-1", "model": "claude-x", "session_id": "sess-1"}),
    ("tool_call", {"story_id": "S-1", "tool": "Task", "id": "t1", "summary": "Find it", "subagent_type": "Explore"}),
    ("tool_call", {"story_id": "S-1", "tool": "Grep", "id": "g1", "summary": "def login", "parent_id": "t1"}),
    ("tool_result", {"story_id": "S-1", "tool": "Grep", "id": "g1", "is_error": False, "summary": "1 match",
                     "parent_id": "t1"}),
    ("tool_result", {"story_id": "S-1", "tool": "Task", "id": "t1", "is_error": False, "summary": "found"}),
    ("tool_call", {"story_id": "S-1", "tool": "Bash", "id": "b1", "summary": "pytest -q"}),
    ("tool_result", {"story_id": "S-1", "tool": "Bash", "id": "b1", "is_error": True, "summary": "1 failed"}),
    ("agent_result", {"story_id": "S-1", "is_error": False, "num_turns": 3, "cost_usd": 0.25, "input_tokens": 100,
                      "output_tokens": 20}),
    ("output", {"story_id": "S-1", "stream": "stdout", "text": "", "final": True, "exit_code": 0}),
    ("ac_completed", {"story_id": "S-1", "ac_index": 0, "ac_text": "works", "duration_ms": 500}),
    ("ac_failed", {"story_id": "S-1", "ac_index": 1, "ac_text": "fast", "error": "check exited 3: slow"}),
    ("verification_completed", {"story_id": "S-1", "name": "lint", "command": "ruff", "status": "passed",
                                "exit_code": 0, "duration_ms": 100}),
    ("story_started", {"story_id": "S-1", "title": "login", "attempt": 2}),
    ("story_completed", {"story_id": "S-1", "status": "passed", "attempts": 2}),
    ("story_completed", {"story_id": "S-2", "status": "skipped"}),
    ("task_completed", {"summary": {"passed": 1}}),
]


def spans_of(events: list[dict], mapper: Mapper | None = None) -> list[SpanRecord]:
    mapper = mapper or Mapper()
    return [s for e in events for s in mapper.feed(e)]


def test_a_run_maps_to_one_tree_run_story_checks_agent_tools_with_subagents_under_their_task_call():
    spans = spans_of(events_of("r1", AGENT_RUN))
    by_name = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    (root,) = [s for s in spans if s.parent_id is None]
    assert root.name == "run Ship it" and root.kind == "CHAIN" and root.error is None
    assert root.attributes["loop.status"] == "passed" and root.attributes["gen_ai.usage.cost"] == 0.25
    assert root.attributes["loop.stories.passed"] == 1 and root.attributes["loop.stories.skipped"] == 1
    assert len({s.trace_id for s in spans}) == 1 and len({s.span_id for s in spans}) == len(spans)
    first, second = by_name["story S-1 login"]
    assert first.attributes["loop.story.attempt"] == 1 and first.error        # its next attempt began: it failed
    assert second.attributes["loop.story.status"] == "passed" and second.error is None
    (agent,) = by_name["invoke_agent claude-x"]
    assert agent.kind == "AGENT" and agent.parent_id == first.span_id
    assert agent.attributes["gen_ai.request.model"] == "claude-x" and agent.attributes["session.id"] == "sess-1"
    assert agent.attributes["gen_ai.usage.input_tokens"] == 100 and agent.attributes["llm.token_count.total"] == 120
    (task,) = by_name["execute_tool Task"]
    (grep,) = by_name["execute_tool Grep"]
    (bash,) = by_name["execute_tool Bash"]
    assert task.parent_id == agent.span_id and grep.parent_id == task.span_id and bash.parent_id == agent.span_id
    assert bash.error == "1 failed" and grep.error is None and task.kind == "TOOL"
    assert grep.attributes["gen_ai.tool.name"] == "Grep" and grep.attributes["input.value"] == "def login"
    (ok,) = by_name["check works"]
    (bad,) = by_name["check fast"]
    (lint,) = by_name["verify lint"]
    assert {ok.parent_id, bad.parent_id, lint.parent_id} == {first.span_id}
    assert ok.end_ns - ok.start_ns == 500_000_000 and bad.attributes["loop.check.exit_code"] == 3
    assert bad.error.startswith("check exited 3") and lint.attributes["loop.verification.exit_code"] == 0
    (skipped,) = by_name["story S-2"]
    assert skipped.attributes["loop.story.status"] == "skipped" and skipped.start_ns == skipped.end_ns
    assert all(s.start_ns <= s.end_ns for s in spans)
    assert spans[-1] is root                                   # the root goes last, when the run ends


def test_ids_come_from_run_and_event_ids_so_a_mapper_that_folds_the_start_again_goes_on_with_the_same_spans():
    events = events_of("r2", AGENT_RUN)
    whole = spans_of(events)
    assert [(s.trace_id, s.span_id) for s in whole] == [(s.trace_id, s.span_id) for s in spans_of(events)]
    for cut in (3, 7, 12, 15):
        restarted = Mapper()
        spans_of(events[:cut], restarted)                      # folded from the transcript, nothing sent
        sent_before = [s for s in whole if s.end_key <= (7, cut)]
        assert sent_before + spans_of(events[cut:], restarted) == whole
    other = spans_of(events_of("r3", AGENT_RUN))
    assert not {s.trace_id for s in other} & {s.trace_id for s in whole}


def test_an_event_fed_twice_or_after_a_later_one_is_ignored_not_a_failed_attempt_and_a_duplicate_span():
    events = events_of("twice", AGENT_RUN)
    m = Mapper()
    once = spans_of(events[:2], m)
    assert spans_of([events[1], events[0]], m) == [] and once == []     # story_started again: nothing ends
    rest = spans_of(events[2:], m)
    assert rest == spans_of(events)                                       # as if each came once, in order
    assert len([s for s in rest if s.name == "story S-1 login"]) == 2     # its two attempts, not three
    assert m.last("twice") == (7, len(events)) and m.last("other") == (0, 0)


def test_no_span_starts_before_its_parent_whatever_duration_or_time_an_event_says():
    events = events_of("early", [
        ("task_started", {}), ("story_started", {"story_id": "S"}),
        ("ac_completed", {"story_id": "S", "ac_index": 0, "ac_text": "huge", "duration_ms": 1e15}),
        ("verification_completed", {"story_id": "S", "name": "v", "status": "passed", "duration_ms": 9e14}),
        ("tool_call", {"story_id": "S", "tool": "Read", "id": "r"}), ("tool_result", {"story_id": "S", "id": "r"}),
        ("task_completed", {})])
    events[4]["ts"] = events[5]["ts"] = 3.0                     # a clock that went back
    spans = spans_of(events)
    starts = {s.span_id: s.start_ns for s in spans}
    assert {s.name for s in spans} >= {"check huge", "verify v", "execute_tool Read", "story S"}
    for s in spans:
        assert s.start_ns <= s.end_ns and (s.parent_id is None or s.start_ns >= starts[s.parent_id]), s.name
    assert min(s.start_ns for s in spans) == 1000 * 10**9        # the root's start, not 1970


def test_a_finished_run_started_again_is_a_new_trace_and_late_events_stay_in_the_old_one():
    first = events_of("again", [("task_started", {}), ("task_completed", {})])
    late = events_of("again", [("tool_call", {"tool": "Read", "id": "x"}), ("tool_result", {"id": "x"})], epoch=8)
    second = events_of("again", [("task_started", {}), ("task_stopped", {"reason": "enough"})], epoch=9)
    m = Mapper()
    a, b, c = spans_of(first, m), spans_of(late, m), spans_of(second, m)
    assert b[0].trace_id == a[0].trace_id and c[0].trace_id != a[0].trace_id
    assert c[-1].attributes["loop.status"] == "stopped" and c[-1].error is None


def test_a_run_that_fails_or_is_interrupted_has_an_error_status_with_the_message():
    failed = spans_of(events_of("f", [("task_started", {"command": "make"}), ("task_completed", {"exit_code": 3})]))
    assert failed[-1].error == "exit code 3" and failed[-1].attributes["loop.exit_code"] == 3
    reaped = spans_of(events_of("i", [("progress", {}), ("task_interrupted", {"reason": "silent for 30 s"})]))
    assert reaped[-1].error == "interrupted: silent for 30 s" and reaped[-1].attributes["loop.status"] == "interrupted"


def test_a_hook_session_is_a_root_with_a_span_per_turn_subagents_and_tool_calls():
    from loopstream.core.formats.hook_session import session_events

    items = [json.loads(line) for line in (REAL / "hooks-subagent.jsonl").read_text().splitlines()]
    events = []
    for p in items:
        run, evs = session_events(p)
        events += [{"id": f"5-{len(events) + i + 1}", "type": t, "run": run, "ts": 50.0 + len(events) + i, "data": d}
                   for i, (t, d) in enumerate(evs)]
    spans = spans_of(events)
    names = {s.name: s for s in spans}
    root = names["session subagent"]
    turn = names["turn 1"]
    sub = names["invoke_agent general-purpose"]
    assert root.parent_id is None and root.attributes["session.id"] == items[0]["session_id"]
    assert turn.parent_id == root.span_id and turn.kind == "AGENT" and sub.parent_id == turn.span_id
    assert names["execute_tool Agent"].parent_id == turn.span_id
    assert names["execute_tool Bash"].parent_id == sub.span_id


WEIRD = ["x" * 100_000, ["a", {"b": None}], {"deep": [1, 2]}, float("nan"), float("inf"), -1e300, 10**40, True, None,
         "\x00\x1b[31m\u202e", 3]


@pytest.mark.parametrize("value", WEIRD, ids=range(len(WEIRD)))
def test_no_event_makes_an_invalid_span_text_is_cut_and_bad_numbers_are_left_out(value):
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from loopstream.sidecar.otlp.traces_out import TraceExport

    fields = ("story_id", "title", "attempt", "tool", "id", "summary", "parent_id", "model", "session_id", "cost_usd",
              "input_tokens", "duration_ms", "ac_text", "ac_index", "error", "exit_code", "status", "name",
              "task_name", "agent_id", "prompt_length", "state", "reason", "is_error", "subagent_type")
    data = {k: value for k in fields}
    kinds = ["task_started", "story_started", "agent_init", "tool_call", "tool_result", "ac_completed", "ac_failed",
             "verification_completed", "session_started", "session_state", "session_subagent", "agent_usage",
             "agent_result", "story_completed", "session_ended", "task_completed"]
    events = events_of("weird", [(k, dict(data)) for k in kinds])
    events[3]["ts"] = 5.0                                   # a time that goes back
    spans = spans_of(events)
    assert spans
    for s in spans:
        assert 0 < s.span_id < 2**64 and 0 < s.trace_id < 2**128 and s.start_ns <= s.end_ns
        assert len(s.name) <= 200 and (s.error is None or len(s.error) <= ATTR_TEXT)
        for v in s.attributes.values():
            assert isinstance(v, (str, bool, int, float))
            assert not isinstance(v, float) or math.isfinite(v)
            assert not isinstance(v, str) or len(v) <= ATTR_TEXT
    export = TraceExport.__new__(TraceExport)               # only its conversion to the SDK's spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    export.resource, export.scope = Resource.create({}), InstrumentationScope("t")
    assert encode_spans([export.readable(s) for s in spans]).SerializeToString()


# -- the export worker, under gevent as in `loop serve` -------------------------------------------------
GEVENT_BURST = """
from gevent import monkey; monkey.patch_all()
import json, time, gevent
from opentelemetry.sdk.trace.export import SpanExportResult
from loopstream.core import events as ev
from loopstream.sidecar.otlp.trace_map import Mapper
from loopstream.sidecar.otlp.traces_out import TraceExport

class Instant:
    def export(self, spans): return SpanExportResult.SUCCESS
    def shutdown(self): pass

def settle(t, n):
    deadline = time.monotonic() + 60
    while t.exported + sum(t.dropped.values()) < n and time.monotonic() < deadline:
        gevent.sleep(0.05)

t = TraceExport("http://127.0.0.1:1/v1/traces", lambda *a: [], exporter=Instant())
evs = [ev.Event(1, 1, "task_started", "burst", 1.0, {}), ev.Event(1, 2, "story_started", "burst", 1.0,
       {"story_id": "S"})]
for i in range(5000):
    evs += [ev.Event(1, 3 + 2 * i, "tool_call", "burst", 2.0, {"story_id": "S", "tool": "Bash", "id": f"c{i}"}),
            ev.Event(1, 4 + 2 * i, "tool_result", "burst", 3.0, {"story_id": "S", "id": f"c{i}"})]
t.observe(evs)                   # one burst, mapped between two wakes of the worker
settle(t, 5000)
burst = {"exported": t.exported, "dropped": dict(t.dropped)}
m = Mapper()                     # a lease taken over: KEPT spans handed over at once
kept = [s for i in range(5000) for s in m.feed({"id": f"2-{i + 1}", "type": "tool_call", "run": f"k{i}", "ts": 1.0,
                                                  "data": {"id": "x"}}) + m.feed(
        {"id": f"3-{i + 1}", "type": "task_completed", "run": f"k{i}", "ts": 2.0, "data": {}})]
t.send(kept)
settle(t, 5000 + len(kept))
print(json.dumps({"burst": burst, "kept": len(kept), "exported": t.exported, "dropped": dict(t.dropped)}))
"""


def test_a_burst_under_gevent_is_handed_to_the_sdk_as_it_takes_spans_nothing_dropped():
    """The worker yields as it maps a burst and waits while the SDK's queue is full, so the SDK's export
    greenlet keeps up: 10,000 tool events at once, then 15,000 spans kept for a lease, none dropped."""
    r = subprocess.run([sys.executable, "-c", GEVENT_BURST], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    assert got["burst"] == {"exported": 5000, "dropped": {}}
    assert got["kept"] == 15_000 and got["exported"] == 20_000 and got["dropped"] == {}


def collecting(recorded):
    """A TraceExport whose exporter is the SDK's in-memory one; what it collected, by span."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from loopstream.sidecar.otlp.traces_out import TraceExport

    got = InMemorySpanExporter()
    return TraceExport("http://127.0.0.1:1/v1/traces", recorded, exporter=got), got


def as_event(d: dict):
    from loopstream.core import events as ev

    epoch, seq = map(int, d["id"].split("-"))
    return ev.Event(epoch, seq, d["type"], d["run"], d["ts"], d["data"], json=ev.dumps(d))


def test_a_run_met_mid_way_whose_transcript_cannot_be_read_yet_is_held_and_keeps_its_trace_id():
    from loopstream.sidecar.brokers.memory import BackendDown

    events = events_of("blip", AGENT_RUN)
    whole = spans_of(events)
    asked = []

    def recorded(run, after, before):       # the store is away for the first two reads (a Redis blip)
        asked.append((run, after, before))
        if len(asked) <= 2:
            raise BackendDown("Redis: connection refused")
        return [e for e in events if (7, 0) < tuple(map(int, e["id"].split("-"))) < before]

    export, got = collecting(recorded)
    try:
        export.observe([as_event(e) for e in events[5:]])
        spans = wait_for(lambda: (lambda s: s if len(s) == len(whole) else None)(got.get_finished_spans()), 30,
                         message="the run's spans once its transcript could be read")
    finally:
        export.close()
    assert asked == [("blip", (0, 0), (7, 6))] * 3
    assert {s.context.trace_id for s in spans} == {whole[0].trace_id}     # the same trace, not a new one
    assert sorted(s.context.span_id for s in spans) == sorted(s.span_id for s in whole)   # each ends after 7-5


def test_a_run_met_at_its_start_reads_no_transcript_and_one_met_mid_way_reads_only_up_to_the_event(tmp_path):
    from loopstream.sidecar.history import History

    events = events_of("mid", AGENT_RUN)
    history = History(tmp_path / "h.json")
    history.open()
    history.record([as_event(e) for e in events])
    history.close()
    assert [e["id"] for e in history.transcript_before("mid", (7, 4))] == ["7-1", "7-2", "7-3"]
    asked = []

    def recorded(run, after, before):
        asked.append(run)
        return history.transcript_before(run, before)

    export, got = collecting(recorded)
    try:
        export.observe([as_event(e) for e in events_of("fresh", AGENT_RUN, epoch=8)] + [as_event(e) for e in events[9:]])
        whole = spans_of(events)
        mid = [s.span_id for s in whole if s.end_key >= (7, 10)]          # those that end after it was met
        spans = wait_for(lambda: (lambda s: s if len(s) == len(whole) + len(mid) else None)(got.get_finished_spans()),
                         30, message="both runs' spans")
    finally:
        export.close()
    assert asked == ["mid"]
    assert sorted(s.context.span_id for s in spans if s.context.trace_id == whole[0].trace_id) == sorted(mid)


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_with_redis_a_run_goes_on_after_a_resync_with_the_events_published_while_the_follower_was_away(backend):
    """Events published while this worker's follower was away reach it only as the replica is loaded
    again (never through on_events): the traces read each run again after the last event they mapped."""
    from loopstream.core.events import Draft
    from loopstream.sidecar.brokers.redis import RedisBroker
    from loopstream.sidecar.hub_parts import recorded_between

    away = threading.Event()
    export, got = collecting(lambda run, after, before: recorded_between(None, broker, run, after, before))
    broker = RedisBroker(backend, on_events=lambda evs, before, after: None if away.is_set() else export.observe(evs),
                         on_resync=export.resynced)
    broker.start()
    try:
        broker.publish([Draft(t, "resync", d) for t, d in [("task_started", {"task_name": "R"}), *story_events("A")]])
        wait_for(lambda: len(got.get_finished_spans()) == 3, 30, message="story A's spans")
        away.set()                                  # what the follower takes in now is lost, as in an outage
        broker.publish([Draft(t, "resync", d) for t, d in story_events("B")])
        wait_for(lambda: broker.seq == 9, 30, message="the follower past story B")
        away.clear()
        broker._stale = True                        # as a gap or a new epoch does: the follower loads everything
        wait_for(lambda: len(got.get_finished_spans()) == 6, 30, message="story B's spans, read again")
        broker.publish([Draft("task_completed", "resync", {})])
        spans = wait_for(lambda: (lambda s: s if len(s) == 7 else None)(got.get_finished_spans()), 30,
                         message="the root")
    finally:
        broker.close()
        export.close()
    assert sorted(s.name for s in spans) == ["execute_tool Bash", "execute_tool Bash", "invoke_agent",
                                             "invoke_agent", "run R", "story A A", "story B B"]
    assert len({s.context.trace_id for s in spans}) == 1 and len({s.context.span_id for s in spans}) == 7


def test_events_the_full_queue_turns_away_are_counted_under_their_own_reason_not_as_spans():
    from loopstream.sidecar.metrics import metric_lines
    from loopstream.sidecar.otlp.traces_out import QUEUE

    export, _ = collecting(lambda *a: [])
    try:
        export.observe([as_event(e) for e in events_of("flood", [("progress", {})] * (QUEUE + 1))])
    finally:
        export.close()
    counters = export.numbers()
    assert counters == {"otlp_exported": 0, "otlp_dropped:event_queue_full": QUEUE + 1}
    lines = metric_lines(counters, {})
    assert f'loop_otlp_spans_dropped_total{{reason="event_queue_full"}} {QUEUE + 1}' in lines
    assert not [line for line in lines if line.startswith("loop_otlp_spans_dropped_total ")]


# -- configuration ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, env, expected", [
    (None, {}, None),
    ("http://127.0.0.1:6006", {}, "http://127.0.0.1:6006/v1/traces"),
    ("https://cloud.langfuse.com/api/public/otel/", {}, "https://cloud.langfuse.com/api/public/otel/v1/traces"),
    ("http://h:4318/v1/traces", {}, "http://h:4318/v1/traces"),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "http://c:4318/v1/traces"),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x"},
     "http://t/x"),
    ("http://opt:1", {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x"}, "http://opt:1/v1/traces"),
])
def test_the_endpoint_comes_from_the_option_or_the_standard_variables(option, env, expected):
    assert otlp_traces_url(option, env)[0] == expected


def test_an_endpoint_that_is_not_a_url_is_one_line_and_exit_2_at_start():
    for args, env in ((["--otlp-endpoint", "localhost:4318"], {}), (["--otlp-endpoint", "http://:99"], {}),
                      ([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://collector"})):
        r = subprocess.run([*LOOP, "serve", "--port", str(free_port()), "--no-history", *args], capture_output=True,
                           text=True, timeout=30, env={**os.environ, **env})
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "not an http(s) URL" in r.stderr


def test_a_protocol_other_than_http_protobuf_is_said_once_at_start(make_server):
    from loopstream.sidecar.config import otlp_protocol_warning

    assert otlp_protocol_warning({}) is None and otlp_protocol_warning({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}) is None
    assert otlp_protocol_warning({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
                                  "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) is None       # the traces' own wins
    assert "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='http/json' is not supported" in otlp_protocol_warning(
        {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"})
    server = make_server("--otlp-endpoint", f"http://127.0.0.1:{free_port()}",
                         env={"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert server.get("/healthz").ok
    assert len(re.findall(r"OTEL_EXPORTER_OTLP_PROTOCOL='grpc' is not supported; traces are sent as OTLP/HTTP protobuf",
                          server.log.read_text())) == 1


def test_what_the_exporter_said_is_logged_without_terminal_escapes_or_control_characters():
    import logging

    from loopstream.sidecar.otlp.traces_out import _LastMessage

    said = _LastMessage()
    said.emit(logging.LogRecord("x", logging.ERROR, "", 0, "Failed: %s", ("\x1b[2J\x1b]0;title\x07red\x9b31m\x00 ok\x01\x7fgo\rfake",),
                                None))
    assert said.message == "Failed: red31m okgo"     # and the line ends at \r
    said.emit(logging.LogRecord("x", logging.ERROR, "", 0, "first\nsecond \x1b[31m", (), None))
    assert said.message == "first"


# -- against Phoenix -------------------------------------------------------------------------------------
def traced(make_server, phoenix, *args, project: str | None = None, **kw):
    """A sidecar exporting to Phoenix, into a project of its own (the resource's openinference.project.name)."""
    project = project or f"p-{uuid.uuid4().hex[:10]}"
    env = {"OTEL_RESOURCE_ATTRIBUTES": f"openinference.project.name={project}", **kw.pop("env", {})}
    server = make_server("--rate", "0", "--otlp-endpoint", phoenix.url, *args, env=env, **kw)
    server.project = project
    return server


def tree(spans: list[dict]) -> dict[str | None, list[dict]]:
    children: dict[str | None, list[dict]] = {}
    for s in sorted(spans, key=lambda s: s["start_time"]):
        children.setdefault(s["parent_id"], []).append(s)
    return children


def named(spans: list[dict], pattern: str) -> list[dict]:
    return [s for s in spans if re.fullmatch(pattern, s["name"])]


def wait_spans(phoenix, project: str, predicate, timeout: float = 60, message: str = "the spans"):
    return wait_for(lambda: (lambda s: s if predicate(s) else None)(phoenix.spans(project)), timeout, 0.5, message)


def test_loop_run_of_an_agent_story_reads_back_from_phoenix_as_the_run_tree(tmp_path, make_server, phoenix):
    server = traced(make_server, phoenix)
    path = write_prd(tmp_path, [
        story("US-1", f"{FAKE} subagents.jsonl --delay 0", ["says so", {"text": "tests pass", "check": "true"},
                                                            {"text": "no lint", "check": "exit 4"}]),
        story("US-2", "exit 3", priority=2)], project="Traced", agentFormat="claude-stream-json",
        verificationCommands={"lint": "true"})
    r = loop("run", str(path), "--server", server.url, "--run", "traced-run", "--no-update")
    assert r.returncode == 1, r.stderr
    spans = wait_spans(phoenix, server.project, lambda s: named(s, "run Traced"), message="the run's root span")
    kids = tree(spans)
    (root,) = kids[None]
    assert root["name"] == "run Traced" and root["span_kind"] == "CHAIN" and root["status_code"] == "ERROR"
    assert root["status_message"] == "2 stories failed"
    assert _flat(root["attributes"])["loop.status"] == "failed"
    assert len({s["context"]["trace_id"] for s in spans}) == 1
    stories = sorted(kids[root["context"]["span_id"]], key=lambda s: s["name"])
    assert [s["name"] for s in stories] == ["story US-1 title US-1", "story US-2 title US-2"]
    assert all(s["status_code"] == "ERROR" for s in stories)
    assert stories[1]["status_message"].startswith("command_failed: exit 3")
    steps = kids[stories[0]["context"]["span_id"]]
    assert sorted(s["name"] for s in steps) == ["check no lint", "check tests pass",
                                                "invoke_agent claude-sonnet-4-5-20250929", "verify lint"]
    (agent,), (ok,), (bad,), (lint,) = (named(steps, n) for n in ("invoke_agent .*", "check tests pass",
                                                                  "check no lint", "verify lint"))
    assert agent["span_kind"] == "AGENT" and [ok["status_code"], bad["status_code"], lint["status_code"]] == \
        ["OK", "ERROR", "OK"]
    assert bad["status_message"].startswith("check exited 4")
    tools = kids[agent["context"]["span_id"]]          # events of one batch share a time: compare as sets
    assert sorted(t["name"] for t in tools) == ["execute_tool Read", "execute_tool Task", "execute_tool Task"]
    assert all(t["span_kind"] == "TOOL" for t in tools)
    explore, tester = sorted(named(tools, "execute_tool Task"), key=lambda t: _flat(t["attributes"])["input.value"])
    assert sorted(t["name"] for t in kids[explore["context"]["span_id"]]) == ["execute_tool Grep", "execute_tool Read"]
    under_tester = kids[tester["context"]["span_id"]]
    assert [t["name"] for t in under_tester] == ["execute_tool Bash"] * 3
    assert all(t["status_code"] == "ERROR" and t["status_message"] == "1 failed" for t in under_tester)
    flat = {k: v for s in [agent] for k, v in _flat(s["attributes"]).items()}
    assert flat["gen_ai.usage.input_tokens"] == 3100 and flat["gen_ai.usage.cost"] == pytest.approx(0.0912)
    assert flat["gen_ai.request.model"] == "claude-sonnet-4-5-20250929" and flat["session.id"] == "9b1c-task-shape"


def _flat(attrs: dict, prefix: str = "") -> dict:
    """Phoenix's REST API nests dotted attribute names; flat again, as they were sent."""
    out = {}
    for k, v in attrs.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_loop_exec_and_a_hook_session_are_exported_the_same_way(tmp_path, make_server, phoenix):
    server = traced(make_server, phoenix)
    r = subprocess.run([*LOOP, "exec", "--server", server.url, "--run", "traced-exec", "--", "sh", "-c", "exit 3"],
                       capture_output=True, timeout=60, env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")})
    assert r.returncode == 3
    items = (REAL / "hooks-subagent.jsonl").read_text().splitlines()
    body = "[" + ",".join(items) + "]"
    assert requests.post(server.url + "/api/hooks/claude", data=body, timeout=10,
                         headers={"Content-Type": "application/json"}).status_code == 201
    spans = wait_spans(phoenix, server.project, lambda s: named(s, "run sh -c .exit 3.") and named(s, "session .*"),
                       message="the exec run's and the session's roots")
    (exec_root,) = named(spans, "run sh -c .exit 3.")
    attrs = _flat(exec_root["attributes"])
    assert exec_root["status_code"] == "ERROR" and exec_root["status_message"] == "exit code 3"
    assert attrs["loop.exit_code"] == 3 and attrs["loop.status"] == "failed"
    (session,) = named(spans, "session .*")
    kids = tree(spans)
    (turn,) = kids[session["context"]["span_id"]]
    assert turn["name"] == "turn 1" and turn["span_kind"] == "AGENT"
    under_turn = kids[turn["context"]["span_id"]]
    assert sorted(s["name"] for s in under_turn) == ["execute_tool Agent", "invoke_agent general-purpose"]
    (sub,) = named(under_turn, "invoke_agent general-purpose")
    assert [s["name"] for s in kids[sub["context"]["span_id"]]] == ["execute_tool Bash"]
    assert _flat(session["attributes"])["session.id"] == json.loads(items[0])["session_id"]


def post_run(server, run: str, items: list[tuple[str, dict]]) -> None:
    r = server.post([{"type": t, "run": run, "data": d} for t, d in items])
    assert r.status_code == 201, r.text


def story_events(sid: str, status: str = "passed") -> list[tuple[str, dict]]:
    return [("story_started", {"story_id": sid, "title": sid}),
            ("tool_call", {"story_id": sid, "tool": "Bash", "id": f"{sid}-b", "summary": "make"}),
            ("tool_result", {"story_id": sid, "tool": "Bash", "id": f"{sid}-b", "is_error": False, "summary": "ok"}),
            ("story_completed", {"story_id": sid, "status": status})]


def metric(server, name: str) -> float:
    """A counter of the fleet, its series by reason summed."""
    text = server.get("/metrics").text
    return sum(float(n) for n in re.findall(rf"^{name}(?:{{reason=\"[a-z_]+\"}})? (\S+)$", text, re.M))


def test_a_live_run_shows_while_it_runs_and_phoenix_going_away_and_back_costs_the_sidecar_nothing(
        make_server, phoenix):
    server = traced(make_server, phoenix)
    post_run(server, "live", [("task_started", {"task_name": "Live", "story_count": 3}), *story_events("A")])
    spans = wait_spans(phoenix, server.project, lambda s: named(s, "story A A"), message="story A while the run runs")
    assert not named(spans, "run Live") and named(spans, "execute_tool Bash")       # the root comes at the end
    phoenix.stop()
    try:
        for i in range(30):            # the stream and POSTs go on while the backend is away
            post_run(server, "live", [("progress", {"current": i})])
        post_run(server, "live", story_events("B", "failed"))
        assert server.get("/healthz").ok
        wait_for(lambda: metric(server, "loop_otlp_spans_dropped_total") >= 1, 60, 0.5,
                 message="the spans sent while Phoenix was down to be counted as dropped")
    finally:
        phoenix.start()
    post_run(server, "live", [*story_events("C"), ("task_completed", {})])
    spans = wait_spans(phoenix, server.project, lambda s: named(s, "run Live"), message="the root after Phoenix is back")
    assert named(spans, "story C C") and not named(spans, "story B B")    # B was dropped while Phoenix was away
    (root,) = named(spans, "run Live")
    assert {s["context"]["trace_id"] for s in spans} == {root["context"]["trace_id"]}
    log = server.log.read_text()
    assert len(re.findall(r"loop: traces to .* spans dropped so far", log)) == 1    # once a minute at most


def test_a_sidecar_restarted_mid_run_goes_on_with_the_same_trace_and_sends_nothing_twice(
        tmp_path, make_server, phoenix):
    project = f"p-{uuid.uuid4().hex[:10]}"
    first = traced(make_server, phoenix, project=project)
    post_run(first, "restart", [("task_started", {"task_name": "Restarted"}), *story_events("A"),
                                ("story_started", {"story_id": "B", "title": "B"})])
    wait_spans(phoenix, project, lambda s: named(s, "story A A"), message="story A")
    exported_before = metric(first, "loop_otlp_spans_exported_total")
    first.stop()
    second = traced(make_server, phoenix, project=project, port=first.port)
    post_run(second, "restart", [("story_completed", {"story_id": "B", "status": "passed"}), ("task_completed", {})])
    spans = wait_spans(phoenix, project, lambda s: named(s, "run Restarted"), message="the root from the new sidecar")
    (root,) = named(spans, "run Restarted")
    (b,) = named(spans, "story B B")
    assert {s["context"]["trace_id"] for s in spans} == {root["context"]["trace_id"]}
    assert b["parent_id"] == root["context"]["span_id"]
    sent = exported_before + wait_for(lambda: metric(second, "loop_otlp_spans_exported_total") or None, 30)
    assert sent == len(spans) == 5             # run, A, A's agent and tool call, B: nothing twice


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_with_redis_one_worker_of_the_fleet_exports_each_run(make_server, phoenix):
    server = traced(make_server, phoenix, "--workers", "2")
    for i in range(4):                      # on whichever worker accepts them
        post_run(server, f"fleet-{i}", [("task_started", {"task_name": f"Fleet {i}"}), *story_events("A"),
                                        ("task_completed", {})])
    spans = wait_spans(phoenix, server.project, lambda s: len(named(s, "run Fleet .")) == 4, message="four roots")
    assert len(spans) == 16                 # each: run, story, agent, tool call

    def per_worker():
        text = server.get("/metrics").text
        return [float(n) for n in re.findall(r'^loop_worker_otlp_spans_exported_total\{worker="[^"]+"\} (\S+)$',
                                               text, re.M)]
    counts = wait_for(lambda: (lambda c: c if len(c) == 2 and sum(c) >= 16 else None)(per_worker()), 30, 0.5,
                      message="both workers' numbers")
    assert sorted(counts) == [0, 16]


class Answering(http.server.BaseHTTPRequestHandler):
    """A backend that answers every request with the status and body it is given (500, or 200 garbage)."""
    status, body = 500, b"no"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, body", [(500, b"boom"), (400, b"\x00\xff not protobuf"), (None, b"")],
                         ids=["5xx", "4xx", "down"])
def test_a_backend_that_is_down_or_refuses_costs_the_stream_nothing_and_its_drops_are_counted(
        make_server, status, body):
    port = free_port()
    httpd = None
    if status is not None:
        handler = type("H", (Answering,), {"status": status, "body": body})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        server = make_server("--rate", "0", "--otlp-endpoint", f"http://127.0.0.1:{port}")
        t0 = time.monotonic()
        for i in range(20):
            post_run(server, f"down-{i}", [("task_started", {}), *story_events("A"), ("task_completed", {})])
        assert time.monotonic() - t0 < 30          # generous: nothing waits on the exporter
        wait_for(lambda: metric(server, "loop_otlp_spans_dropped_total") >= 1, 60, 0.5, message="drops counted")
        assert server.get("/healthz").ok and server.get("/api/runs/down-19").json()["status"] == "passed"
        log = server.log.read_text()
        assert len(re.findall(r"loop: traces to .* spans dropped so far", log)) == 1 and "Traceback" not in log
    finally:
        if httpd is not None:
            httpd.shutdown()
