"""OpenTelemetry logs in: Claude Code's own telemetry -> cost and tokens of its sessions (pure: no I/O).

Claude Code exports OTLP/HTTP logs (``CLAUDE_CODE_ENABLE_TELEMETRY=1``, ``OTEL_LOGS_EXPORTER=otlp``)
as JSON or protobuf, maybe gzipped. ``decode_logs`` reads a body with the OpenTelemetry protocol
package (no hand-written parsing); ``session_usage`` turns its records into loop events:

- ``claude_code.api_request`` (``session.id``, ``model``, ``cost_usd``, ``input_tokens``,
  ``output_tokens``, and ``agent_id`` in a subagent): one ``agent_usage`` per session and agent
  in the body, the records' cost and tokens added up (a body of 500 requests is one event, not 500);
- ``claude_code.api_error``: an ``error_occurred`` (``api_error``, its status and message);
- anything else, or a record without a usable session id: counted and dropped.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from loopstream.core.events import RUN_RE
from loopstream.core.formats.common import MAX_COST, MAX_COUNT, MAX_SUMMARY, cost, count, name, one_line

MAX_DECODED = 4 << 20       # bytes of a gunzipped body (as much as the route takes unzipped)
MAX_ERRORS = 20             # api_error events from one body (the rest are counted)
MAX_SESSIONS = 100          # (session, agent) pairs one body may report: the rest are counted and dropped
USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens")


class OtlpError(ValueError):
    """A body that is not OTLP logs: a 400."""


@dataclass
class Usage:
    events: list[tuple[str, str, dict]]     # (run, type, data)
    used: int = 0                           # records that became (part of) an event
    dropped: int = 0                        # records of another kind, or of no session


def gunzip(body: bytes) -> bytes:
    """A gzip body, inflated to at most MAX_DECODED bytes (a bomb is an error, not a memory spike)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, MAX_DECODED)
    except zlib.error as e:
        raise OtlpError(f"the body is not valid gzip ({e})") from e
    if d.unconsumed_tail:
        raise OtlpError(f"the body inflates past {MAX_DECODED >> 20} MB")
    return out


def is_protobuf(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "application/x-protobuf"


def decode_logs(body: bytes, content_type: str | None) -> Any:
    """An ``ExportLogsServiceRequest`` from an OTLP/HTTP body (protobuf or JSON, by its content type)."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    request = ExportLogsServiceRequest()
    try:
        if is_protobuf(content_type):
            request.ParseFromString(body)
        else:
            json_format.Parse(body.decode("utf-8"), request, ignore_unknown_fields=True)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError, RecursionError, ValueError) as e:
        raise OtlpError(f"not OTLP logs ({one_line(str(e), 200)})") from e
    return request


def empty_response(protobuf: bool) -> tuple[bytes, str]:
    """The answer an OTLP exporter expects: an empty Export*ServiceResponse in its encoding."""
    if protobuf:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
        return ExportLogsServiceResponse().SerializeToString(), "application/x-protobuf"
    return b"{}", "application/json"


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "int_value", "double_value", "bool_value") else None


def _attributes(record: Any) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in record.attributes}


def _kind(record: Any, attrs: dict) -> str:
    body = _value(record.body) if record.HasField("body") else None
    if isinstance(body, str) and body.startswith("claude_code."):
        return body
    event = attrs.get("event.name")
    return f"claude_code.{event}" if isinstance(event, str) else ""


def _number(value: Any) -> Any:
    """OTLP JSON carries some numbers as strings (``"35"``): read them as numbers."""
    if isinstance(value, str):
        try:
            return float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            return None
    return value


def session_usage(request: Any) -> Usage:
    """The loop events of one ExportLogsServiceRequest (see the module's docstring)."""
    usage = Usage([])
    totals: dict[tuple[str, str | None], dict] = {}
    errors = 0
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            for record in sl.log_records:
                attrs = _attributes(record)
                kind = _kind(record, attrs)
                run = attrs.get("session.id")
                if not isinstance(run, str) or not RUN_RE.match(run) or kind not in (
                        "claude_code.api_request", "claude_code.api_error"):
                    usage.dropped += 1
                    continue
                if kind == "claude_code.api_request" and not _add_request(totals, run, attrs):
                    usage.dropped += 1
                    continue
                usage.used += 1
                if kind == "claude_code.api_error" and errors < MAX_ERRORS:
                    errors += 1
                    usage.events.append((run, "error_occurred", _api_error(attrs)))
    usage.events[:0] = [(run, "agent_usage", data) for (run, _), data in totals.items()]
    return usage


def _add_request(totals: dict, run: str, attrs: dict) -> bool:
    """Add one api_request to its (session, agent) total; False when the body already named
    MAX_SESSIONS others. Sums stay within the bounds every event's numbers keep."""
    agent = name(attrs.get("agent_id"))
    if (run, agent) not in totals and len(totals) >= MAX_SESSIONS:
        return False
    data = totals.setdefault((run, agent), {"model": None, "cost_usd": None, "requests": 0,
                                            **dict.fromkeys(USAGE_KEYS, 0), **({"agent_id": agent} if agent else {})})
    data["requests"] = min(MAX_COUNT, data["requests"] + 1)
    data["model"] = name(attrs.get("model")) or data["model"]
    dollars = cost(_number(attrs.get("cost_usd")))
    if dollars is not None:
        data["cost_usd"] = min(MAX_COST, (data["cost_usd"] or 0) + dollars)
    for key in USAGE_KEYS:
        data[key] = min(MAX_COUNT, data[key] + (count(_number(attrs.get(key))) or 0))
    return True


def _api_error(attrs: dict) -> dict:
    status = attrs.get("status_code")
    message = attrs.get("error") if isinstance(attrs.get("error"), str) else "the API request failed"
    text = one_line(f"{status} {message}" if status is not None else message, MAX_SUMMARY)
    return {"error_type": "api_error", "error_message": text, "retryable": True,
            **({"agent_id": name(attrs["agent_id"])} if name(attrs.get("agent_id")) else {})}
