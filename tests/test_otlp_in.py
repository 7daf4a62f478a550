"""POST /v1/logs and /v1/metrics on a real sidecar: the OTLP bodies Claude Code exported
(tests/agents/claude-real/otlp-*: JSON and protobuf), gzipped too, and the OpenTelemetry SDK's own
OTLP exporter; cost and tokens land on the run named by session.id; bad OTLP is a 400 that changes
nothing; the Host, Origin and token rules apply."""
import gzip
import json

import requests
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse

from helpers import REAL

TOKEN = "otlp-token-0123456789abcdef"


def api_requests(name: str) -> list[dict]:
    """The attributes of every claude_code.api_request record in a recorded body (JSON, or .pb read
    with the protocol's classes)."""
    if name.endswith(".pb"):
        req = ExportLogsServiceRequest()
        req.ParseFromString((REAL / name).read_bytes())
        return [{a.key: getattr(a.value, a.value.WhichOneof("value")) for a in r.attributes}
                for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records
                if r.body.string_value == "claude_code.api_request"]
    body = json.loads((REAL / name).read_text())
    return [{a["key"]: next(iter(a["value"].values())) for a in r["attributes"]}
            for rl in body["resourceLogs"] for sl in rl["scopeLogs"] for r in sl["logRecords"]
            if r["body"].get("stringValue") == "claude_code.api_request"]


def post(server, path, data, ctype="application/json", **headers):
    return requests.post(server.url + path, data=data, headers={"Content-Type": ctype, **headers}, timeout=10)


def check_cost(server, name):
    records = api_requests(name)
    sid = records[0]["session.id"]
    snap = server.get(f"/api/runs/{sid}").json()
    assert abs(snap["cost_usd"] - sum(r["cost_usd"] for r in records)) < 1e-12
    assert snap["input_tokens"] == sum(r["input_tokens"] for r in records)
    assert snap["output_tokens"] == sum(r["output_tokens"] for r in records)
    assert snap["agent"]["model"] == "claude-opus-5-5"
    return snap, server.get(f"/api/runs/{sid}/transcript").json()["events"]


def test_claude_codes_json_logs_add_cost_and_tokens_to_its_session(server):
    r = post(server, "/v1/logs", (REAL / "otlp-logs.json").read_bytes())
    assert r.status_code == 200 and r.json() == {} and r.headers["Content-Type"].startswith("application/json")
    snap, events = check_cost(server, "otlp-logs.json")
    assert [e["type"] for e in events] == ["agent_usage"]          # one event for the body's requests
    assert "<REDACTED>" not in json.dumps(events)                   # the other records are dropped


def test_a_subagents_requests_are_its_own_usage(server):
    assert post(server, "/v1/logs", (REAL / "otlp-logs-subagent.json").read_bytes()).status_code == 200
    _, events = check_cost(server, "otlp-logs-subagent.json")
    usage = [e["data"] for e in events if e["type"] == "agent_usage"]
    assert len(usage) == 2 and {u.get("agent_id") for u in usage} == {None, "ab2d6663eda860743"}
    sub = next(u for u in usage if u.get("agent_id"))
    assert sub["requests"] == len([r for r in api_requests("otlp-logs-subagent.json") if r.get("agent_id")])


def test_claude_codes_protobuf_logs_and_gzip(server):
    body = (REAL / "otlp-logs.pb").read_bytes()
    r = post(server, "/v1/logs", body, "application/x-protobuf")
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-protobuf"
    ExportLogsServiceResponse().ParseFromString(r.content)
    check_cost(server, "otlp-logs.pb")
    r = post(server, "/v1/logs", gzip.compress(body), "application/x-protobuf", **{"Content-Encoding": "gzip"})
    assert r.status_code == 200
    sid = api_requests("otlp-logs.pb")[0]["session.id"]
    snap = server.get(f"/api/runs/{sid}").json()
    assert abs(snap["cost_usd"] - 2 * sum(x["cost_usd"] for x in api_requests("otlp-logs.pb"))) < 1e-12


def test_metrics_are_answered(server):
    r = post(server, "/v1/metrics", (REAL / "otlp-metrics.json").read_bytes())
    assert r.status_code == 200 and r.json() == {}
    assert post(server, "/v1/metrics", b"", "application/x-protobuf").status_code == 200


def test_bad_otlp_is_a_400_that_changes_nothing(server):
    before = server.get("/api/events").json()["cursor"]
    bomb = gzip.compress(b"{" + b" " * (40 << 20) + b"}")
    for data, ctype, headers in [
        (b"{not json", "application/json", {}),
        (b'{"resourceLogs": 5}', "application/json", {}),
        (b"\xff\x00garbage", "application/x-protobuf", {}),
        (b"not gzip", "application/json", {"Content-Encoding": "gzip"}),
        (bomb, "application/json", {"Content-Encoding": "gzip"}),
        (b"{}", "application/json", {"Content-Encoding": "br"}),
    ]:
        r = post(server, "/v1/logs", data, ctype, **headers)
        assert r.status_code == 400 and r.json()["field"] == "body", (data[:20], r.text)
    assert post(server, "/v1/logs", b"{}", "text/plain").status_code == 415
    assert post(server, "/api/events", b"{}", "application/x-protobuf").status_code == 415   # only on /v1/
    assert server.get("/api/events").json()["cursor"] == before


def test_the_token_host_and_origin_rules_apply(make_server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    server = make_server("--token-file", str(token_file))
    body = (REAL / "otlp-logs.json").read_bytes()
    assert post(server, "/v1/logs", body).status_code == 401
    assert post(server, "/v1/metrics", body).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert post(server, "/v1/logs", body, Origin="https://evil.example", **auth).status_code == 403
    assert post(server, "/v1/logs", body, Host="evil.example", **auth).status_code == 403
    assert post(server, "/v1/logs", body, **auth).status_code == 200


def test_the_opentelemetry_sdks_own_exporter(server):
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import LogRecordExportResult, SimpleLogRecordProcessor

    results = []
    for compression in (Compression.NoCompression, Compression.Gzip):
        exporter = OTLPLogExporter(endpoint=server.url + "/v1/logs", compression=compression, timeout=10)
        original = exporter.export
        exporter.export = lambda batch, original=original: results.append(original(batch)) or results[-1]
        provider = LoggerProvider()
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        logger = provider.get_logger("com.anthropic.claude_code.events")
        logger.emit(body="claude_code.api_request",
                    attributes={"session.id": "sdk-session", "model": "claude-sonnet", "cost_usd": 0.25,
                                "input_tokens": 1000, "output_tokens": 50, "event.name": "api_request"})
        logger.emit(body="claude_code.api_error",
                    attributes={"session.id": "sdk-session", "error": "overloaded", "status_code": "529"})
        logger.emit(body="claude_code.tool_decision", attributes={"session.id": "sdk-session"})
        provider.shutdown()
    assert results and all(r == LogRecordExportResult.SUCCESS for r in results)
    snap = server.get("/api/runs/sdk-session").json()
    assert snap["cost_usd"] == 0.5 and snap["input_tokens"] == 2000 and snap["agent"]["model"] == "claude-sonnet"
    assert snap["error_count"] == 2 and snap["last_error"]["error_message"] == "529 overloaded"


def _body(records: list[dict]) -> bytes:
    """An OTLP/JSON logs body of claude_code.api_request records with these attributes."""
    def attr(k, v):
        kind = "stringValue" if isinstance(v, str) else "doubleValue" if isinstance(v, float) else "intValue"
        return {"key": k, "value": {kind: v}}
    logs = [{"body": {"stringValue": "claude_code.api_request"}, "attributes": [attr(k, v) for k, v in r.items()]}
            for r in records]
    return json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": logs}]}]}).encode()


def test_sums_past_any_bound_are_held_at_it_never_a_500(server):
    huge = [{"session.id": "s-huge", "input_tokens": 10**12, "output_tokens": 1, "cost_usd": 999999.0}] * 1001
    r = post(server, "/v1/logs", _body(huge))
    assert r.status_code == 200, r.text
    snap = server.get("/api/runs/s-huge").json()
    assert snap["input_tokens"] == 10**12 and snap["cost_usd"] <= 1_000_000


def test_one_body_reports_at_most_a_hundred_sessions_the_rest_dropped(server):
    many = [{"session.id": f"s-{i}", "input_tokens": 1, "output_tokens": 1} for i in range(150)]
    assert post(server, "/v1/logs", _body(many)).status_code == 200
    runs = {r["run"] for r in server.get("/api/runs").json()["runs"]}
    assert len({f"s-{i}" for i in range(150)} & runs) == 100


def test_a_large_body_is_decoded_off_the_loop_while_the_sidecar_answers_others(server):
    import threading
    import time

    body = gzip.compress(_body([{"session.id": "s-big", "input_tokens": 1, "output_tokens": 1, "model": "m" * 40}]
                               * 10_000))
    assert len(body) < 1 << 20
    finished: dict = {}

    def send():
        finished["status"] = post(server, "/v1/logs", body, **{"Content-Encoding": "gzip"}).status_code
        finished["at"] = time.monotonic()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    answered = []
    while sender.is_alive() and len(answered) < 50:     # asked while the big body is being decoded
        assert server.get("/healthz").status_code == 200
        answered.append(time.monotonic())
    sender.join(60)
    assert finished["status"] == 200
    # a decode on the worker's loop would hold every answer until the body was done: here some came first
    assert answered and answered[0] < finished["at"] - 0.1, (answered[:3], finished)
    assert server.get("/api/runs/s-big").json()["input_tokens"] == 10_000
