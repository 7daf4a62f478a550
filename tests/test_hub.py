"""The hub without Flask or a server: the memory broker, an injected clock."""
from __future__ import annotations

import json

import pytest

from loopstream.core import events as ev
from loopstream.sidecar.brokers.memory import HELLO_LIVE, Filter
from loopstream.sidecar.config import Config
from loopstream.sidecar.hub import Hub, Refused
from loopstream.sidecar.streams import Stream


class Clock:
    def __init__(self, t: float = 1_700_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


def make_hub(clock, **cfg) -> Hub:
    return Hub(Config(**cfg), clock=clock, monotonic=clock)


def started(run: str, **data) -> ev.Draft:
    return ev.Draft("task_started", run, {"task_name": run, **data})


def hello_of(hub: Hub, flt: Filter | None = None, cursor=None) -> tuple[str, dict]:
    """The hello frame's id and data, as a subscriber would read them."""
    sub = Stream(flt or Filter(), cursor)
    frame = hub.hello(sub).decode()
    fields = dict(line.split(": ", 1) for line in frame.strip().splitlines())
    assert fields["event"] == "hello"
    return fields["id"], json.loads(fields["data"])


def test_publish_is_in_the_next_hello_and_the_poll(clock):
    hub = make_hub(clock, rate=0)
    (e,) = hub.publish([started("r")])
    assert e.id == f"{hub.broker.epoch}-1" and e.ts == round(clock.t, 3)
    cursor, hello = hello_of(hub)
    assert cursor == e.id and hello["cursor"] == e.id and not hello["resumed"]
    assert [s["run"] for s in hello["runs"]] == ["r"] and hello["runs"][0]["status"] == "running"
    polled = json.loads(hub.poll(Filter(), None, 1000))
    assert [x["id"] for x in polled["events"]] == [e.id] and polled["reset"] is False
    assert hub.metrics.accepted == 1


def test_a_resumed_hello_carries_no_snapshots(clock):
    hub = make_hub(clock, rate=0)
    (e,) = hub.publish([started("r")])
    _, hello = hello_of(hub, cursor=ev.parse_id(e.id))
    assert hello["resumed"] and "runs" not in hello and hello["cursor"] == e.id


def test_a_batch_the_reducer_rejects_changes_nothing(clock, monkeypatch):
    hub = make_hub(clock, rate=0)
    hub.publish([started("r")])
    real = hub.broker.reduce

    def buggy(snapshot, event):
        if event["data"].get("boom"):
            raise TypeError("a bug in the reducer")
        return real(snapshot, event)

    monkeypatch.setattr(hub.broker, "reduce", buggy)
    before = (hub.poll(Filter(), None, 1000), hub.snapshots_json(Filter()), hub.metrics.accepted)
    with pytest.raises(TypeError):
        hub.publish([ev.Draft("output", "r", {"text": "x\n"}), ev.Draft("output", "r", {"boom": True}),
                     started("other")])
    assert (hub.poll(Filter(), None, 1000), hub.snapshots_json(Filter()), hub.metrics.accepted) == before
    with pytest.raises(Refused) as refused:
        hub.run_state("other")
    assert refused.value.status == 404


def test_control_is_idempotent(clock):
    hub = make_hub(clock, rate=0)
    hub.publish([started("r")])
    first = hub.control("r", "stop", "enough")
    again = hub.control("r", "stop", "enough")
    assert first["requested"] is True and again == {"run": "r", "action": "stop", "requested": False,
                                                     "status": "running"}
    stops = [x for x in json.loads(hub.poll(Filter(), None, 1000))["events"] if x["type"] == "stop_requested"]
    assert len(stops) == 1 and stops[0]["data"] == {"reason": "enough"}
    assert hub.control("r", "resume")["requested"] is False           # not paused: nothing to resume
    assert hub.control("r", "pause")["requested"] is True
    assert hub.control("r", "pause")["requested"] is False


def test_control_of_an_unknown_run_or_action_is_refused(clock):
    hub = make_hub(clock, rate=0)
    hub.publish([started("r")])
    for run, action in [("nobody", "stop"), ("r", "explode")]:
        with pytest.raises(Refused) as refused:
            hub.control(run, action)
        assert refused.value.status == 404
    assert hub.metrics.accepted == 1


def test_rate_limit_charges_the_run_and_refuses_without_charging(clock):
    hub = make_hub(clock, rate=1, burst=2, client_rate=100, client_burst=1000)
    batch = [started("r"), ev.Draft("progress", "r", {"percent": 1})]
    hub.admit(batch, explicit_run=True, addr="1.2.3.4")             # takes the whole burst
    with pytest.raises(Refused) as refused:
        hub.admit(batch[:1], explicit_run=True, addr="1.2.3.4")
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
    assert "run:r" in refused.value.message and hub.metrics.rate_limited == 1
    clock.t += 1                                                     # one token back
    hub.admit(batch[:1], explicit_run=True, addr="1.2.3.4")
    with pytest.raises(Refused):                                     # and spent again
        hub.admit(batch[:1], explicit_run=True, addr="1.2.3.4")
    hub.admit(batch[:1], explicit_run=False, addr="1.2.3.4")         # unnamed: charged to the address


def test_the_client_budget_is_charged_whatever_the_run_names(clock):
    hub = make_hub(clock, rate=100, burst=100, client_rate=1, client_burst=3)
    for i in range(3):
        hub.admit([started(f"r{i}")], explicit_run=True, addr="1.2.3.4")
    with pytest.raises(Refused) as refused:
        hub.admit([started("fresh")], explicit_run=True, addr="1.2.3.4")
    assert "--client-rate" in refused.value.message
    hub.admit([started("fresh")], explicit_run=True, addr="9.9.9.9")   # another client has its own


def test_a_batch_past_max_live_runs_is_refused_whole(clock):
    hub = make_hub(clock, rate=0, max_live_runs=2)
    hub.publish([started("a")])
    with pytest.raises(Refused) as refused:
        hub.admit([started("b"), started("c")], explicit_run=True, addr="x")
    assert refused.value.status == 503 and hub.broker.live_count() == 1
    hub.admit([started("a"), started("b")], explicit_run=True, addr="x")


def test_hello_is_bounded_however_many_runs(clock):
    hub = make_hub(clock, rate=0, buffer=10)
    live = HELLO_LIVE + 50
    hub.publish([started(f"live{i}") for i in range(live)])
    for i in range(30):
        hub.publish([started(f"done{i}"), ev.Draft("task_completed", f"done{i}", {})])
    _, hello = hello_of(hub)
    runs = [s["run"] for s in hello["runs"]]
    finished = [r for r in runs if r.startswith("done")]
    running = [r for r in runs if r.startswith("live")]
    assert finished == [f"done{i}" for i in range(20, 30)]              # the 10 latest finished
    assert running == [f"live{i}" for i in range(live - HELLO_LIVE, live)]   # the 200 latest live
    assert len(hub.run_list()) == live + 30                             # all of them: the run list


def test_a_stream_resets_a_cursor_evicted_from_the_buffer(clock):
    hub = make_hub(clock, rate=0, buffer=3)
    (first,) = hub.publish([started("r")])
    for i in range(5):
        hub.publish([ev.Draft("progress", "r", {"percent": i})])
    sub = Stream(Filter(), ev.parse_id(first.id))
    hub.hello(sub)
    frame = hub.next_frames(sub).decode()
    assert "event: reset" in frame and '"reason":"evicted"' in frame and hub.metrics.resets == 1
    assert sub.pos == hub.broker.head


def test_open_streams_are_counted_per_client_and_released(clock):
    hub = make_hub(clock, rate=0, max_streams_per_client=2)
    hub.open_stream("a")
    hub.open_stream("a")
    with pytest.raises(Refused) as refused:
        hub.open_stream("a")
    assert refused.value.status == 429
    hub.open_stream("b")
    hub.close_stream("a")
    hub.open_stream("a")
    assert hub.metrics.subscribers == 3 and hub.metrics.streams_by_client == {"a": 2, "b": 1}


def test_the_reaper_finishes_a_silent_run_once(clock):
    hub = make_hub(clock, rate=0)
    hub.publish([started("r", heartbeat_s=5)])
    assert hub.reap() == 0
    clock.t += 16
    assert hub.reap() == 1 and hub.run_state("r")["status"] == "interrupted"
    assert hub.reap() == 0 and hub.metrics.reaped == 1


def test_both_brokers_are_what_the_hub_relies_on_and_redis_reads_nothing_before_start():
    from loopstream.sidecar.brokers.memory import Broker, MemoryBroker
    from loopstream.sidecar.brokers.redis import RedisBroker

    assert isinstance(MemoryBroker(), Broker)
    told = []
    redis = RedisBroker("redis://127.0.0.1:9/0", on_down=lambda: told.append("down"))   # nothing listens
    try:
        assert isinstance(redis, Broker)
        assert not redis.healthy and redis.seq == 0 and told == []   # constructing connects to nothing
    finally:
        redis.close()


def test_control_requests_are_charged_like_events(clock):
    hub = make_hub(clock, rate=1, burst=3, client_rate=100, client_burst=1000)
    hub.publish([started("r")])
    hub.control("r", "pause", addr="1.2.3.4")
    hub.control("r", "resume", addr="1.2.3.4")
    hub.control("r", "pause", addr="1.2.3.4")                        # the run's burst of 3 is spent
    with pytest.raises(Refused) as refused:
        hub.control("r", "resume", addr="1.2.3.4")
    assert refused.value.status == 429 and "run:r" in refused.value.message
    assert hub.control("r", "pause", addr="1.2.3.4")["requested"] is False   # a no-op is neither charged nor refused
    kinds = [x["type"] for x in json.loads(hub.poll(Filter(), None, 1000))["events"]]
    assert kinds == ["task_started", "pause_requested", "resume_requested", "pause_requested"]


def test_control_requests_spend_the_client_budget_across_runs(clock):
    hub = make_hub(clock, rate=100, burst=100, client_rate=1, client_burst=2)
    hub.publish([started("a"), started("b"), started("c")])
    hub.control("a", "stop", addr="1.2.3.4")
    hub.control("b", "stop", addr="1.2.3.4")
    with pytest.raises(Refused) as refused:
        hub.control("c", "stop", addr="1.2.3.4")
    assert "--client-rate" in refused.value.message
    hub.control("c", "stop", addr="5.6.7.8")


def test_a_batch_is_charged_to_every_run_it_names(clock):
    hub = make_hub(clock, rate=10, burst=20, client_rate=1000, client_burst=10_000)
    hub.publish([started("victim")])

    def batch(i: int) -> list[ev.Draft]:
        return [started(f"decoy-{i}")] + [ev.Draft("progress", "victim", {"percent": 1})] * 9

    hub.admit(batch(0), [True] * 10, "6.6.6.6")
    hub.admit(batch(1), [True] * 10, "6.6.6.6")                     # 18 of the victim's 20
    with pytest.raises(Refused) as refused:
        hub.admit(batch(2), [True] * 10, "6.6.6.6")
    assert "run:victim" in refused.value.message
    hub.admit([started("decoy-2")], [True], "6.6.6.6")              # the refusal charged decoy-2 nothing
    hub.admit(batch(3)[:1] + [ev.Draft("progress", "x", {})], [True, False], "6.6.6.6")   # unnamed: the address


def test_one_client_cannot_fill_the_live_runs_of_all(clock):
    hub = make_hub(clock, rate=0, max_live_runs=10, max_live_runs_per_client=4)
    hub.admit([started(f"a{i}") for i in range(4)], True, "1.1.1.1")
    hub.publish([started(f"a{i}") for i in range(4)])
    with pytest.raises(Refused) as refused:
        hub.admit([started("a4")], True, "1.1.1.1")
    assert refused.value.status == 429 and "--max-live-runs-per-client" in refused.value.message
    hub.admit([started("b0")], True, "2.2.2.2")                       # another client starts its run
    hub.admit([ev.Draft("progress", "a0", {})], True, "1.1.1.1")     # and runs already live go on
    hub.publish([ev.Draft("task_completed", "a0", {})])
    hub.admit([started("a4")], True, "1.1.1.1")                       # a finished run frees its slot


def test_a_run_only_named_once_is_finished_after_ghost_after(clock):
    hub = make_hub(clock, rate=0, ghost_after=60, max_live_runs=3)
    hub.publish([started("ghost"), ev.Draft("progress", "ghost", {"percent": 1})])   # one request
    hub.publish([started("real")])
    clock.t += 30
    hub.publish([ev.Draft("progress", "real", {"percent": 5})])
    clock.t += 31
    assert hub.reap() == 1
    assert hub.broker.snapshot("ghost")["status"] == "interrupted"
    assert hub.broker.snapshot("real")["status"] == "running"        # updated after it started: not a ghost
    hub.publish([ev.Draft("progress", "ghost", {"percent": 2})])       # a ghost that speaks again is live again
    assert hub.broker.snapshot("ghost")["status"] == "running"


def session(run: str) -> ev.Draft:
    return ev.Draft("session_started", run, {"cwd": "/w/app", "project": "app", "source": "startup"})


def test_claude_sessions_never_shut_a_clients_own_runs_out_and_a_gone_one_frees_its_slot(clock):
    hub = make_hub(clock, rate=0, max_live_runs_per_client=3, max_live_runs=8)
    for i in range(5):                                   # five sessions on this machine, one crashed long ago
        drafts = [session(f"s{i}")]
        hub.admit(drafts, True, "127.0.0.1")
        hub.publish(drafts)
    for i in range(3):                                   # the machine's own loop runs still start
        hub.admit([started(f"run{i}")], True, "127.0.0.1")
        hub.publish([started(f"run{i}")])
    with pytest.raises(Refused):                         # its own runs are capped as before
        hub.admit([started("run3")], True, "127.0.0.1")
    clock.t += 23 * 3600
    for i in range(1, 5):                                # four sessions go on (idle, then working again)
        hub.publish([ev.Draft("session_state", f"s{i}", {"state": "working"})])
    hub.reap()                                           # (the loop runs, named once, go as ghosts)
    assert all(hub.broker.snapshot(f"s{i}")["status"] == "running" for i in range(5))   # s0: 23 h idle, kept
    clock.t += 3600                                      # s0 silent for 24 h: gone, its slot freed
    hub.reap()
    assert hub.broker.snapshot("s0")["status"] == "interrupted"
    assert all(hub.broker.snapshot(f"s{i}")["status"] == "running" for i in range(1, 5))   # never lost sooner
    hub.publish([ev.Draft("session_state", "s0", {"state": "working"})])                  # it comes back
    assert hub.broker.snapshot("s0")["status"] == "running"
