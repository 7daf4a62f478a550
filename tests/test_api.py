"""The HTTP API in-process (Flask's test client on the real app): input, limits, runs, control."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BACKENDS, wait_for
from loopstream.sidecar.app import Config, create_app

JSON = "application/json"


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


@pytest.fixture(params=BACKENDS)
def app(request, tmp_path):
    """The app on each backend; with Redis, a real redis-server emptied for the test."""
    backend = None
    if request.param == "redis":
        r = request.getfixturevalue("redis_server")
        r.command("FLUSHALL")
        backend = r.url
    a = create_app(Config(rate=0, db=str(tmp_path / "h.json"), backend=backend))
    yield a
    a.extensions["loop"].broker.close()


@pytest.fixture
def client(app):
    return app.test_client()


def settle(app):
    """With Redis, events reach this worker's replica through its follower: wait until they have."""
    b = app.extensions["loop"].broker
    if not b.fans_out_on_publish:
        target = int(b.client.get(b.prefix + "seq") or 0)
        wait_for(lambda: b.seq >= target, 5, 0.002, "the follower to catch up")


def buffered(app):
    settle(app)
    return len(app.extensions["loop"].broker.buffer)


def post(client, body, path="/api/events", **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    kw.setdefault("content_type", "application/json")
    r = client.post(path, data=data, **kw)
    settle(client.application)
    return r


def test_post_one_event_returns_201_with_its_id(client):
    r = post(client, {"type": "progress", "run": "r", "data": {"percent": 5}})
    assert r.status_code == 201
    (eid,) = r.get_json()["ids"]
    events = client.get("/api/events").get_json()["events"]
    assert events[0]["id"] == eid and events[0]["data"] == {"percent": 5} and events[0]["run"] == "r"
    assert isinstance(events[0]["ts"], float)


def test_batch_and_emit_alias(client):
    r = post(client, [{"type": "a"}, {"type": "b"}], path="/emit", content_type="application/json; charset=utf-8")
    assert r.status_code == 201 and len(r.get_json()["ids"]) == 2


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonp"])
def test_a_post_that_is_not_application_json_gets_415_naming_the_fix(app, client, content_type):
    kw = {"content_type": content_type} if content_type else {}
    r = client.post("/api/events", data=json.dumps({"type": "x", "run": "r"}), **kw)
    assert r.status_code == 415 and "Content-Type: application/json" in r.get_json()["message"]
    assert buffered(app) == 0


@pytest.mark.parametrize("body, status, field", [
    (b"{not json", 400, "body"),
    (b"", 400, "body"),
    ({"type": "x", "data": "str"}, 400, "data"),
    ({"type": "BAD"}, 400, "type"),
    ({"type": "x", "run": "no spaces"}, 400, "run"),
    ([{"type": "ok"}, {"type": "x", "data": 1}], 400, "[1].data"),
    (b"[" * 5000 + b"]" * 5000, 400, "body"),
    (json.dumps({"type": "x", "data": {"t": "y" * 70_000}}).encode(), 413, "body"),
])
def test_bad_input_is_refused_naming_the_field_and_stores_nothing(app, client, body, status, field):
    r = post(client, body)
    assert r.status_code == status
    assert r.get_json()["field"] == field
    assert buffered(app) == 0
    assert app.extensions["loop"].broker.runs == {}


def test_rate_limit_gives_429_with_retry_after_and_stores_nothing(tmp_path):
    mono = Clock()
    app = create_app(Config(rate=10, burst=20, db=None), monotonic=mono)
    c = app.test_client()
    for _ in range(20):
        assert post(c, {"type": "x", "run": "r"}).status_code == 201
    r = post(c, {"type": "x", "run": "r"})
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    body = r.get_json()
    assert body["error"] == "rate_limited" and (body["rate"], body["burst"]) == (10, 20)
    assert body["retry_after"] == 0.1          # one token at 10/s: the exact wait, not the header's whole second
    assert buffered(app) == 20
    assert post(c, {"type": "x", "run": "other"}).status_code == 201   # keys are per run
    mono.t += 0.1
    assert post(c, {"type": "x", "run": "r"}).status_code == 201
    assert "loop_rate_limited_total 1" in c.get("/metrics").get_data(as_text=True)


def test_events_without_a_run_are_limited_per_client_address():
    mono = Clock()
    c = create_app(Config(rate=1, burst=2, db=None), monotonic=mono).test_client()
    assert post(c, {"type": "x"}).status_code == 201
    assert post(c, {"type": "x"}).status_code == 201
    assert post(c, {"type": "x"}).status_code == 429
    assert post(c, {"type": "x"}, environ_base={"REMOTE_ADDR": "127.0.0.9"}).status_code == 201


def test_polling_pages_with_the_same_cursor_as_the_stream(client):
    ids = post(client, [{"type": "p", "data": {"i": i}} for i in range(5)]).get_json()["ids"]
    page = client.get("/api/events?limit=2").get_json()
    assert [e["id"] for e in page["events"]] == ids[:2] and page["cursor"] == ids[1]
    page = client.get(f"/api/events?since={page['cursor']}").get_json()
    assert [e["id"] for e in page["events"]] == ids[2:] and page["reset"] is False
    assert client.get(f"/api/events?since={ids[-1]}").get_json()["events"] == []


def test_polling_a_lost_cursor_returns_a_reset_with_snapshots(tmp_path):
    c = create_app(Config(rate=0, buffer=5, db=None)).test_client()
    first = post(c, {"type": "task_started", "run": "r", "data": {"task_name": "T"}}).get_json()["ids"][0]
    post(c, [{"type": "progress", "run": "r", "data": {"percent": i}} for i in range(10)])
    page = c.get(f"/api/events?since={first}").get_json()
    assert page["reset"] is True and page["events"] == []
    assert page["runs"][0]["run"] == "r" and page["runs"][0]["progress"]["percent"] == 9
    assert page["cursor"].endswith("-11")


@pytest.mark.parametrize("query, field", [("since=zzz", "since"), ("limit=0", "limit"), ("limit=x", "limit"),
                                          ("run=a%20b", "run"), ("types=BAD", "types")])
def test_bad_query_parameters_get_400_naming_them(client, query, field):
    r = client.get("/api/events?" + query)
    assert r.status_code == 400 and r.get_json()["field"] == field


def test_runs_list_and_run_state(client):
    post(client, [{"type": "task_started", "run": "r1", "data": {"task_name": "T", "story_count": 1}},
                  {"type": "story_started", "run": "r1", "data": {"story_id": "S", "acceptance_criteria": ["a"]}}])
    runs = client.get("/api/runs").get_json()["runs"]
    assert runs[0]["run"] == "r1" and "stories" not in runs[0]
    snap = client.get("/api/runs/r1").get_json()
    assert snap["stories"][0]["acceptance_criteria"][0]["status"] == "running"
    assert client.get("/api/runs/nope").status_code == 404
    assert client.get("/api/runs/bad%20name").status_code == 400


def test_control_publishes_requested_events_once(app, client):
    post(client, {"type": "task_started", "run": "r"})
    r = client.post("/api/runs/r/stop", json={"reason": "wrong branch"})
    assert r.status_code == 202 and r.get_json()["requested"] is True
    again = client.post("/api/runs/r/stop", content_type=JSON)
    assert again.status_code == 202 and again.get_json()["requested"] is False
    types = [e["type"] for e in client.get("/api/events").get_json()["events"]]
    assert types.count("stop_requested") == 1
    ev = [e for e in client.get("/api/events").get_json()["events"] if e["type"] == "stop_requested"][0]
    assert ev["data"] == {"reason": "wrong branch"}


def test_pause_and_resume_are_idempotent(client):
    post(client, {"type": "task_started", "run": "r"})
    assert client.post("/api/runs/r/pause", content_type=JSON).get_json()["requested"] is True
    assert client.post("/api/runs/r/pause", content_type=JSON).get_json()["requested"] is False
    assert client.post("/api/runs/r/resume", content_type=JSON).get_json()["requested"] is True
    assert client.post("/api/runs/r/resume", content_type=JSON).get_json()["requested"] is False


def test_control_errors(client):
    assert client.post("/api/runs/ghost/stop", content_type=JSON).status_code == 404
    post(client, {"type": "task_started", "run": "r"})
    assert client.post("/api/runs/r/explode", content_type=JSON).status_code == 404
    assert client.post("/api/runs/r/stop", data="{bad", content_type=JSON).status_code == 400
    assert client.post("/api/runs/r/stop", json={"reason": 5}).status_code == 400


def test_token_guards_posts_control_and_reads_but_not_health(tmp_path):
    c = create_app(Config(rate=0, token="s3cret")).test_client()
    assert post(c, {"type": "x"}).status_code == 401
    assert post(c, {"type": "x"}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert post(c, {"type": "x"}, headers={"Authorization": "Bearer s3cret"}).status_code == 201
    assert c.get("/api/events").status_code == 401
    assert c.get("/api/events?token=s3cret").status_code == 200
    assert post(c, {"type": "x"}, path="/emit?token=s3cret").status_code == 401  # POST needs the header
    assert c.post("/api/runs/default/stop", content_type=JSON).status_code == 401
    assert c.get("/healthz").status_code == 200


def test_cors_only_for_configured_origins():
    c = create_app(Config(rate=0, cors=["http://dash.example"])).test_client()
    ok = c.get("/api/runs", headers={"Origin": "http://dash.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "http://dash.example"
    other = c.get("/api/runs", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    pre = c.options("/api/events", headers={"Origin": "http://dash.example",
                                             "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 204 and "Authorization" in pre.headers["Access-Control-Allow-Headers"]
    assert c.options("/api/events", headers={"Origin": "http://evil.example"}).status_code == 403


def test_metrics_are_prometheus_text(client):
    post(client, {"type": "x"})
    post(client, b"nope")
    text = client.get("/metrics").get_data(as_text=True)
    assert "loop_events_accepted_total 1" in text
    assert 'loop_events_rejected_total{reason="invalid"} 1' in text
    assert "loop_subscribers 0" in text and "loop_buffer_capacity 100" in text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
event_like = st.fixed_dictionaries({}, optional={
    "type": st.one_of(st.sampled_from(["progress", "output", "task_started", "hello"]), st.text(max_size=70)),
    "run": st.one_of(st.text(max_size=70), st.integers()),
    "data": json_values, "id": json_values, "extra": json_values})
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    event_like.map(lambda v: json.dumps(v).encode()),
    st.lists(event_like, max_size=5).map(lambda v: json.dumps(v).encode()))
paths = st.sampled_from(["/api/events", "/emit", "/api/runs/r/stop", "/api/runs/r/pause", "/api/runs/x%00/stop"])
queries = st.dictionaries(st.sampled_from(["since", "run", "types", "limit", "last_event_id", "token"]),
                          st.text(max_size=30), max_size=4)
headers = st.dictionaries(st.sampled_from(["Content-Type", "Last-Event-ID", "Authorization", "Origin"]),
                          st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
                          max_size=3)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=paths, body=bodies, query=queries, hdrs=headers)
def test_no_input_ever_gives_a_500(client, app, path, body, query, hdrs):
    before = buffered(app)
    r = client.post(path, data=body, query_string=query, headers=hdrs)
    assert r.status_code < 500, r.get_data(as_text=True)
    assert r.is_json
    if r.status_code != 201 and r.status_code != 202:
        assert buffered(app) == before   # refused: nothing stored
    for get in ("/api/events", "/api/runs", "/api/runs/r", "/api/runs/r/transcript"):
        g = client.get(get, query_string=query, headers={k: v for k, v in hdrs.items() if k != "Origin"})
        assert g.status_code < 500, g.get_data(as_text=True)


def test_the_dashboard_is_served_at_the_root(client):
    r = client.get("/")
    assert r.status_code == 200 and b"<title>loop</title>" in r.data
    assert client.get("/missing.js").status_code == 404


def test_a_reducer_bug_in_a_batch_leaves_no_trace_anywhere(app, client, monkeypatch, tmp_path):
    """A 500 from a bug (here: a reducer that raises on one event) must leave the buffer, the
    snapshots, the journal and (with Redis) the shared stream as they were."""
    broker = app.extensions["loop"].broker
    post(client, {"type": "task_started", "run": "r", "data": {"task_name": "T"}})
    real = broker.reduce

    def buggy(snapshot, event):
        if event["data"].get("boom"):
            raise TypeError("a bug in the reducer")
        return real(snapshot, event)

    monkeypatch.setattr(broker, "reduce", buggy)
    before = (client.get("/api/events").get_json()["events"], client.get("/api/runs/r").get_json(),
              client.get("/api/runs/r/transcript").get_json())
    stream_len = broker.client.xlen(broker.prefix + "stream") if not broker.fans_out_on_publish else None
    r = post(client, [{"type": "output", "run": "r", "data": {"text": "first\n"}},
                      {"type": "output", "run": "r", "data": {"boom": True}},
                      {"type": "progress", "run": "other", "data": {"percent": 1}}])
    assert r.status_code == 500 and "not stored" in r.get_json()["message"]
    after = (client.get("/api/events").get_json()["events"], client.get("/api/runs/r").get_json(),
             client.get("/api/runs/r/transcript").get_json())
    assert after == before
    assert client.get("/api/runs/other").status_code == 404
    if stream_len is not None:
        assert broker.client.xlen(broker.prefix + "stream") == stream_len
    monkeypatch.setattr(broker, "reduce", real)
    (eid,) = post(client, {"type": "progress", "run": "r", "data": {"percent": 5}}).get_json()["ids"]
    assert client.get("/api/events").get_json()["events"][-1]["id"] == eid   # the ids carry on, no gap
    assert int(eid.split("-")[1]) == int(before[0][-1]["id"].split("-")[1]) + 1
