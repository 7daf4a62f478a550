#!/usr/bin/env python3
"""A scripted stand-in for the model APIs that agent CLIs talk to, on 127.0.0.1.

One server speaks three wire formats, so one script can drive any of the CLIs:

* Anthropic Messages (Claude Code): ``POST /v1/messages`` (SSE when ``stream``),
  ``POST /v1/messages/count_tokens``;
* OpenAI Responses (Codex): ``POST /v1/responses`` (SSE), ``GET /v1/models``;
  and Chat Completions (``POST /v1/chat/completions``) for clients that speak it;
* Gemini (Gemini CLI): ``POST /v1beta/models/M:streamGenerateContent?alt=sse``,
  ``:generateContent``, ``:countTokens``;
* OTLP/HTTP (a CLI's telemetry): ``POST /v1/logs``, ``/v1/metrics``, ``/v1/traces``
  answer 200 and keep the body (JSON, or ``_protobuf_base64``).

It is also a refusing proxy: with ``HTTPS_PROXY``/``HTTP_PROXY`` set to its URL
(and ``NO_PROXY=127.0.0.1,localhost``), every attempt of a CLI to reach anything
else is recorded (``CONNECT host:443``) and refused at once, so nothing leaves
the machine and nothing waits on a DNS lookup.

A *script* is a JSON list of turns. Each request that the agent makes for its
next step (a request that offers tools) takes the next turn; a request without
tools (a title, a summary, a classifier) gets a short canned answer and takes
no turn. A turn is an object with any of:

    {"text": "I'll run the tests."}                   # the model says this
    {"shell": "pytest -q"}                            # a call to the CLI's own shell tool
    {"tool": "Read", "input": {"file_path": "x"}}     # a call to a named tool
    {"tool": "Agent", "input": {...}}                 # e.g. Claude's subagent tool
    {"tool": "apply_patch", "input": "*** Begin Patch…"}  # text input: a freeform (custom) tool, Responses
    {"reasoning": "Thinking about it."}               # thinking block / reasoning summary / thought part
    {"web_search": "query"}                           # a hosted web_search_call item (Responses only)
    {"usage": {"input_tokens": 120, "output_tokens": 30}}  # tokens reported for the turn
    {"delay": 0.5}                                    # seconds before answering
    {"error": 500, "message": "boom"}                 # an HTTP error instead of an answer
    {"for": "Count the files", "shell": "ls | wc -l"} # only for a conversation that opens with this text
    {"error": 529, "times": 3}                        # this turn for the next 3 requests (retries)
    {"tool": "wait_agent", "input": {"targets": ["$out.agent_id"]}}  # (Responses) a field of the last tool output

``text`` with ``shell``/``tool`` gives a text block followed by the call (one
response); a turn without a call ends the agent's turn. ``"shell"`` becomes the
shell tool the request offers: Claude's ``Bash`` (``command``), Gemini's
``run_shell_command`` (``command``), Codex's ``exec_command`` (``cmd``),
``shell_command`` (``command``) or ``shell`` (``command`` as an argv list). When
the script is used up every further step gets ``{"text": "Done."}``.

Turns go out in order, whichever conversation asks. A subagent is its own
conversation, and one in the background asks at the same time as its parent:
give its turns ``"for": TEXT`` (TEXT from the prompt the subagent was given)
and they go only to a conversation whose opening user text contains TEXT.

From Python::

    with StandIn([{"shell": "echo hi"}, {"text": "ok"}]) as s:
        ...  s.url, s.requests (every request: method, path, body) ...

From the command line::

    python3 tests/agents/standin.py SCRIPT.json [--port N] [--log FILE]

prints ``URL`` on its first line and serves until interrupted.
"""
from __future__ import annotations

import argparse
import base64
import gzip
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DONE = {"text": "Done."}
SIDE_TEXT = "Scripted stand-in reply."


def _sse(event: str | None, data: Any) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + json.dumps(data, separators=(",", ":")) + "\n\n").encode()


def _chunks(text: str, size: int = 12) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _usage(turn: dict, index: int) -> tuple[int, int]:
    u = turn.get("usage") or {}
    return int(u.get("input_tokens", 100 + 10 * index)), int(u.get("output_tokens", 20 + index))


def _tool_names_openai(tools: list) -> list[str]:
    names = []
    for t in tools or []:
        if isinstance(t, dict):
            names.append(t.get("name") or (t.get("function") or {}).get("name") or t.get("type") or "")
    return names


def _tool_names_gemini(tools: list) -> list[str]:
    names = []
    for t in tools or []:
        for d in (t or {}).get("functionDeclarations") or []:
            names.append(d.get("name", ""))
    return names


def shell_call(command: str, offered: list[str], flavour: str) -> tuple[str, dict]:
    """The (tool name, input) that runs ``command`` through the shell tool a request offers."""
    if flavour == "anthropic":
        return "Bash", {"command": command, "description": "Run " + command[:40]}
    if flavour == "gemini":
        return "run_shell_command", {"command": command, "description": "Run " + command[:40]}
    for name, args in (("exec_command", {"cmd": command}),
                       ("shell_command", {"command": command}),
                       ("shell", {"command": ["bash", "-lc", command]})):
        if name in offered:
            return name, args
    return "shell", {"command": ["bash", "-lc", command]}


class Script:
    """The turns, handed out in order to the requests that ask for the agent's next step.

    A turn with ``"for": TEXT`` is kept for a conversation whose opening user text contains TEXT
    (e.g. the prompt a subagent was given); the other turns go, in order, to every other conversation.
    """

    def __init__(self, turns: list[dict]):
        self.turns = list(turns)
        self.taken = [False] * len(self.turns)
        self.given = [0] * len(self.turns)
        self.used = 0
        self.lock = threading.Lock()

    def next(self, opening: str = "") -> tuple[int, dict]:
        with self.lock:
            self.used += 1
            pick = self._pick(opening)
            if pick is None:
                return self.used - 1, DONE
            turn = self.turns[pick]
            self.given[pick] += 1
            self.taken[pick] = self.given[pick] >= int(turn.get("times", 1))
            return pick, turn

    def _pick(self, opening: str) -> int | None:
        free = [i for i, t in enumerate(self.turns) if not self.taken[i]]
        for i in free:
            key = self.turns[i].get("for")
            if key and key in opening:
                return i
        for i in free:
            if not self.turns[i].get("for"):
                return i
        return None


def _texts(content: Any) -> str:
    if isinstance(content, str):
        return content
    out = []
    for part in content or []:
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            out.append(part["text"])
    return "\n".join(out)


def opening_text(body: dict) -> str:
    """The user text a conversation opens with (every leading user message), in any of the three formats."""
    msgs = body.get("messages") or body.get("contents") or body.get("input") or []
    if isinstance(msgs, str):
        return msgs
    out = []
    for m in msgs:
        if not isinstance(m, dict) or m.get("role") not in ("user", "developer", "system"):
            break
        out.append(_texts(m.get("content") if "content" in m else m.get("parts")))
    return "\n".join(out)


# --------------------------------------------------------------------------- the handler


class Handler(BaseHTTPRequestHandler):
    server_version = "standin/1"
    protocol_version = "HTTP/1.1"

    # set per server in StandIn.start
    standin: StandIn

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if self.standin.verbose:
            sys.stderr.write("standin: " + (format % args) + "\n")

    # -- plumbing

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if raw and self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        if raw and "protobuf" in (self.headers.get("Content-Type") or ""):
            return {"_protobuf_base64": base64.b64encode(raw).decode()}
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        return body if isinstance(body, dict) else {"_body": body}

    def _json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse_start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _send(self, frames: list[bytes]) -> None:
        for f in frames:
            self.wfile.write(f)
            self.wfile.flush()

    def _record(self, body: dict) -> None:
        self.standin.record(self.command, self.path, dict(self.headers), body)

    # -- routing

    def do_GET(self):  # noqa: N802
        self._record({})
        if self.path.startswith("http"):  # a proxied plain-HTTP request for somewhere else: refuse
            return self._json(403, {"error": {"message": "stand-in: offline"}})
        path = urlsplit(self.path).path
        if path.endswith("/models"):
            return self._json(200, {"object": "list", "data": [], "models": []})
        return self._json(404, {"error": {"message": f"stand-in: no GET {path}"}})

    def do_CONNECT(self):  # noqa: N802
        """As an HTTPS proxy (HTTPS_PROXY=url): record where the CLI tried to go, and refuse."""
        self._record({})
        self.send_response(403, "stand-in: offline")
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def do_HEAD(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):  # noqa: N802
        body = self._body()
        self._record(body)
        if self.path.startswith("http"):
            return self._json(403, {"error": {"message": "stand-in: offline"}})
        path = urlsplit(self.path).path
        for suffix, fn in ROUTES:
            if path.endswith(suffix) or (suffix.startswith(":") and suffix in path):
                return fn(self, body, path)
        return self._json(404, {"error": {"message": f"stand-in: no POST {path}"}})

    # -- the turn a request gets

    def _turn(self, body: dict) -> tuple[int, dict] | None:
        if not body.get("tools"):
            return None
        i, turn = self.standin.script.next(opening_text(body))
        if turn.get("delay"):
            time.sleep(float(turn["delay"]))
        return i, turn

    def _error(self, turn: dict) -> bool:
        """A scripted HTTP error, in a body each API's clients read (Anthropic ``type``, Google ``status``)."""
        if "error" not in turn:
            return False
        status = int(turn["error"])
        msg = turn.get("message", "scripted error")
        kind, google = ERROR_KINDS.get(status, ("api_error", "INTERNAL"))
        self._json(status, {"type": "error", "error": {"type": kind, "message": msg, "code": status,
                                                       "status": google}})
        return True

    # ----------------------------------------------------------------------- Anthropic

    def anthropic_messages(self, body: dict, path: str) -> None:
        got = self._turn(body)
        i, turn = got if got else (0, {"text": SIDE_TEXT})
        if self._error(turn):
            return
        model = body.get("model", "claude-standin")
        blocks: list[dict] = []
        if turn.get("reasoning"):
            blocks.append({"type": "thinking", "thinking": turn["reasoning"], "signature": "standin-signature"})
        if turn.get("text"):
            blocks.append({"type": "text", "text": turn["text"]})
        call = self._call(turn, [t.get("name") for t in body.get("tools") or []], "anthropic")
        if call:
            blocks.append({"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:20], "name": call[0],
                           "input": call[1]})
        stop = "tool_use" if call else "end_turn"
        tin, tout = _usage(turn, i)
        msg = {"id": "msg_" + uuid.uuid4().hex[:20], "type": "message", "role": "assistant", "model": model,
               "content": blocks, "stop_reason": stop, "stop_sequence": None,
               "usage": {"input_tokens": tin, "output_tokens": tout, "cache_creation_input_tokens": 0,
                         "cache_read_input_tokens": 0}}
        if not body.get("stream"):
            return self._json(200, msg)
        self._sse_start()
        start = dict(msg, content=[], stop_reason=None, usage=dict(msg["usage"], output_tokens=1))
        frames = [_sse("message_start", {"type": "message_start", "message": start})]
        for idx, b in enumerate(blocks):
            frames += self._anthropic_block(idx, b)
        frames.append(_sse("message_delta", {"type": "message_delta",
                                             "delta": {"stop_reason": stop, "stop_sequence": None},
                                             "usage": {"output_tokens": tout}}))
        frames.append(_sse("message_stop", {"type": "message_stop"}))
        self._send(frames)

    @staticmethod
    def _anthropic_block(idx: int, b: dict) -> list[bytes]:
        if b["type"] == "thinking":
            out = [_sse("content_block_start", {"type": "content_block_start", "index": idx,
                                                "content_block": {"type": "thinking", "thinking": "",
                                                                  "signature": ""}})]
            for piece in _chunks(b["thinking"]):
                out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": idx,
                                                        "delta": {"type": "thinking_delta", "thinking": piece}}))
            out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": idx,
                                                    "delta": {"type": "signature_delta",
                                                              "signature": b["signature"]}}))
        elif b["type"] == "text":
            out = [_sse("content_block_start", {"type": "content_block_start", "index": idx,
                                                "content_block": {"type": "text", "text": ""}})]
            for piece in _chunks(b["text"]):
                out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": idx,
                                                        "delta": {"type": "text_delta", "text": piece}}))
        else:
            out = [_sse("content_block_start", {"type": "content_block_start", "index": idx,
                                                "content_block": dict(b, input={})})]
            for piece in _chunks(json.dumps(b["input"]), 40):
                out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": idx,
                                                        "delta": {"type": "input_json_delta",
                                                                  "partial_json": piece}}))
        out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": idx}))
        return out

    def anthropic_count(self, body: dict, path: str) -> None:
        self._json(200, {"input_tokens": 100})

    # ----------------------------------------------------------------------- OpenAI Responses

    def openai_responses(self, body: dict, path: str) -> None:
        got = self._turn(body)
        i, turn = got if got else (0, {"text": SIDE_TEXT})
        if self._error(turn):
            return
        rid = "resp_" + uuid.uuid4().hex[:20]
        items = self._responses_output(turn, body)
        tin, tout = _usage(turn, i)
        usage = {"input_tokens": tin, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": tout,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": tin + tout}
        resp = {"id": rid, "object": "response", "created_at": int(time.time()), "model": body.get("model"),
                "status": "completed", "output": items, "usage": usage}
        if not body.get("stream"):
            return self._json(200, resp)
        self._sse_start()
        frames = [_sse("response.created", {"type": "response.created",
                                            "response": dict(resp, status="in_progress", output=[], usage=None)})]
        for idx, item in enumerate(items):
            frames += self._responses_item(idx, item)
        frames.append(_sse("response.completed", {"type": "response.completed", "response": resp}))
        self._send(frames)

    def _responses_output(self, turn: dict, body: dict) -> list[dict]:
        """The output items of one turn: reasoning, a hosted web search, the message, the tool call."""
        def new_id(prefix: str) -> str:
            return prefix + uuid.uuid4().hex[:16]
        items: list[dict] = []
        if turn.get("reasoning"):
            items.append({"type": "reasoning", "id": new_id("rs_"), "encrypted_content": None,
                          "summary": [{"type": "summary_text", "text": turn["reasoning"]}]})
        if turn.get("tool_search"):   # codex's client-executed tool discovery (how it reaches MCP tools)
            items.append({"type": "tool_search_call", "id": new_id("tsc_"), "call_id": new_id("call_"),
                          "status": "completed", "execution": "client",
                          "arguments": {"query": turn["tool_search"]}})
        if turn.get("web_search"):
            items.append({"type": "web_search_call", "id": new_id("ws_"), "status": "completed",
                          "action": {"type": "search", "query": turn["web_search"]}})
        if turn.get("text"):
            items.append({"type": "message", "id": new_id("msg_"), "role": "assistant", "status": "completed",
                          "content": [{"type": "output_text", "text": turn["text"], "annotations": []}]})
        call = self._call(turn, _tool_names_openai(body.get("tools")), "openai")
        if call and isinstance(turn.get("input"), str):     # a freeform tool (apply_patch): input is text
            items.append({"type": "custom_tool_call", "id": new_id("ctc_"), "status": "completed",
                          "call_id": new_id("call_"), "name": call[0], "input": turn["input"]})
        elif call:
            args = _fill_from_output(call[1], body)
            items.append({"type": "function_call", "id": new_id("fc_"), "status": "completed",
                          "call_id": new_id("call_"), "name": call[0], "arguments": json.dumps(args),
                          **({"namespace": turn["namespace"]} if turn.get("namespace") else {})})
        return items

    @staticmethod
    def _responses_item(idx: int, item: dict) -> list[bytes]:
        kind = item["type"]
        blank = {"message": {"content": []}, "function_call": {"arguments": ""}, "custom_tool_call": {"input": ""},
                 "reasoning": {"summary": []}}.get(kind, {})
        out = [_sse("response.output_item.added", {"type": "response.output_item.added", "output_index": idx,
                                                   "item": dict(item, status="in_progress", **blank)})]
        ref = {"item_id": item["id"], "output_index": idx}
        if kind == "message":
            for piece in _chunks(item["content"][0]["text"]):
                out.append(_sse("response.output_text.delta", {"type": "response.output_text.delta", **ref,
                                                               "content_index": 0, "delta": piece}))
        elif kind == "reasoning":
            for piece in _chunks(item["summary"][0]["text"]):
                out.append(_sse("response.reasoning_summary_text.delta",
                                {"type": "response.reasoning_summary_text.delta", **ref, "summary_index": 0,
                                 "delta": piece}))
        elif kind == "function_call":
            out.append(_sse("response.function_call_arguments.delta",
                            {"type": "response.function_call_arguments.delta", **ref, "delta": item["arguments"]}))
        elif kind == "custom_tool_call":
            out.append(_sse("response.custom_tool_call_input.delta",
                            {"type": "response.custom_tool_call_input.delta", **ref, "delta": item["input"]}))
        out.append(_sse("response.output_item.done", {"type": "response.output_item.done",
                                                      "output_index": idx, "item": item}))
        return out

    # ----------------------------------------------------------------------- OpenAI Chat Completions

    def openai_chat(self, body: dict, path: str) -> None:
        got = self._turn(body)
        i, turn = got if got else (0, {"text": SIDE_TEXT})
        if self._error(turn):
            return
        call = self._call(turn, _tool_names_openai(body.get("tools")), "openai")
        tin, tout = _usage(turn, i)
        cid = "chatcmpl-" + uuid.uuid4().hex[:16]
        msg: dict = {"role": "assistant", "content": turn.get("text")}
        if call:
            msg["tool_calls"] = [{"id": "call_" + uuid.uuid4().hex[:16], "type": "function",
                                  "function": {"name": call[0], "arguments": json.dumps(call[1])}}]
        finish = "tool_calls" if call else "stop"
        usage = {"prompt_tokens": tin, "completion_tokens": tout, "total_tokens": tin + tout}
        base = {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": body.get("model")}
        if not body.get("stream"):
            return self._json(200, dict(base, choices=[{"index": 0, "message": msg, "finish_reason": finish}],
                                        usage=usage))
        self._sse_start()
        base["object"] = "chat.completion.chunk"
        frames = []
        for piece in _chunks(turn.get("text") or "") if turn.get("text") else []:
            frames.append(_sse(None, dict(base, choices=[{"index": 0, "delta": {"content": piece}}])))
        if call:
            tc = dict(msg["tool_calls"][0], index=0)
            frames.append(_sse(None, dict(base, choices=[{"index": 0, "delta": {"tool_calls": [tc]}}])))
        frames.append(_sse(None, dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": finish}],
                                      usage=usage)))
        frames.append(b"data: [DONE]\n\n")
        self._send(frames)

    # ----------------------------------------------------------------------- Gemini

    def gemini_generate(self, body: dict, path: str) -> None:
        stream = ":streamGenerateContent" in path
        model = path.rsplit("/", 1)[-1].split(":", 1)[0]
        got = self._turn(body)
        if got is None:
            return self._gemini_side(body, stream, model)
        i, turn = got
        if self._error(turn):
            return
        parts: list[dict] = []
        if turn.get("reasoning"):
            parts.append({"text": turn["reasoning"], "thought": True})
        if turn.get("text"):
            parts.append({"text": turn["text"]})
        call = self._call(turn, _tool_names_gemini(body.get("tools")), "gemini")
        if call:
            parts.append({"functionCall": {"name": call[0], "args": call[1]}})
        tin, tout = _usage(turn, i)
        self._gemini_reply(parts, tin, tout, stream, model)

    def _gemini_reply(self, parts: list[dict], tin: int, tout: int, stream: bool, model: str) -> None:
        usage = {"promptTokenCount": tin, "candidatesTokenCount": tout, "totalTokenCount": tin + tout}
        resp = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": usage, "modelVersion": model, "responseId": uuid.uuid4().hex[:20]}
        if not stream:
            return self._json(200, resp)
        self._sse_start()
        frames = []
        texts = [p for p in parts if "text" in p]
        calls = [p for p in parts if "text" not in p]
        for p in texts:
            for piece in _chunks(p["text"]):
                frames.append(_sse(None, {"candidates": [{"content": {"role": "model",
                                                                      "parts": [dict(p, text=piece)]},
                                                          "index": 0}], "modelVersion": model}))
        frames.append(_sse(None, dict(resp, candidates=[dict(resp["candidates"][0],
                                                             content={"role": "model",
                                                                      "parts": calls or [{"text": ""}]})])))
        self._send(frames)

    def _gemini_side(self, body: dict, stream: bool, model: str) -> None:
        """A request without tools: a JSON answer when JSON is asked for (routing, next speaker), else text."""
        cfg = body.get("generationConfig") or {}
        if cfg.get("responseMimeType") == "application/json" or cfg.get("responseJsonSchema") \
                or cfg.get("responseSchema"):
            schema = cfg.get("responseJsonSchema") or cfg.get("responseSchema") or {}
            text = json.dumps(_fill(schema))
        else:
            text = SIDE_TEXT
        self._gemini_reply([{"text": text}], 50, 10, stream, model)

    def gemini_count(self, body: dict, path: str) -> None:
        self._json(200, {"totalTokens": 100})

    # ----------------------------------------------------------------------- OTLP/HTTP

    def otlp(self, body: dict, path: str) -> None:
        """An OpenTelemetry collector's answer; the body is in ``requests`` (JSON, or base64 protobuf)."""
        self._json(200, {"partialSuccess": {}})

    # ----------------------------------------------------------------------- shared

    @staticmethod
    def _call(turn: dict, offered: list, flavour: str) -> tuple[str, dict] | None:
        if "shell" in turn:
            return shell_call(str(turn["shell"]), [n for n in offered if n], flavour)
        if "tool" in turn:
            given = turn.get("input")
            return str(turn["tool"]), (given if isinstance(given, dict) else {"input": given})
        return None


def _last_output(body: dict) -> dict:
    """The JSON object of the last function_call_output in a Responses request (e.g. spawn_agent's agent_id)."""
    for item in reversed(body.get("input") or []):
        if isinstance(item, dict) and item.get("type") == "function_call_output":
            try:
                out = json.loads(item.get("output") if isinstance(item.get("output"), str) else "")
            except ValueError:
                return {}
            return out if isinstance(out, dict) else {}
    return {}


def _fill_from_output(value: Any, body: dict) -> Any:
    """``"$out.KEY"`` anywhere in a tool input becomes KEY of the last tool output (ids the script cannot know)."""
    if isinstance(value, str) and value.startswith("$out."):
        return _last_output(body).get(value[5:], value)
    if isinstance(value, list):
        return [_fill_from_output(v, body) for v in value]
    if isinstance(value, dict):
        return {k: _fill_from_output(v, body) for k, v in value.items()}
    return value


ERROR_KINDS = {400: ("invalid_request_error", "INVALID_ARGUMENT"), 401: ("authentication_error", "UNAUTHENTICATED"),
               403: ("permission_error", "PERMISSION_DENIED"), 404: ("not_found_error", "NOT_FOUND"),
               429: ("rate_limit_error", "RESOURCE_EXHAUSTED"), 500: ("api_error", "INTERNAL"),
               503: ("overloaded_error", "UNAVAILABLE"), 529: ("overloaded_error", "UNAVAILABLE")}

KNOWN_ANSWERS = {"next_speaker": "user", "model_choice": "flash", "reasoning": "scripted",
                 "complexity_reasoning": "scripted", "complexity_score": 10}


def _fill(schema: dict, name: str = "") -> Any:
    """A small value that satisfies a JSON schema (enough for the CLIs' side questions)."""
    if name in KNOWN_ANSWERS:
        return KNOWN_ANSWERS[name]
    kind = str(schema.get("type", "object")).lower()
    if schema.get("enum"):
        return schema["enum"][0]
    if kind == "object":
        return {k: _fill(v, k) for k, v in (schema.get("properties") or {}).items()}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    return ""


ROUTES = [
    ("/v1/logs", Handler.otlp),
    ("/v1/metrics", Handler.otlp),
    ("/v1/traces", Handler.otlp),
    ("/messages/count_tokens", Handler.anthropic_count),
    ("/messages", Handler.anthropic_messages),
    ("/responses", Handler.openai_responses),
    ("/chat/completions", Handler.openai_chat),
    (":streamGenerateContent", Handler.gemini_generate),
    (":generateContent", Handler.gemini_generate),
    (":countTokens", Handler.gemini_count),
]


# --------------------------------------------------------------------------- the server


class StandIn:
    """The stand-in on a free port of 127.0.0.1, in a thread: ``start()``, ``url``, ``requests``, ``stop()``."""

    def __init__(self, script: list[dict] | str | Path, port: int = 0, log: str | Path | None = None,
                 verbose: bool = False):
        if isinstance(script, (str, Path)):
            script = json.loads(Path(script).read_text(encoding="utf-8"))
        self.script = Script(script)  # type: ignore[arg-type]
        self.port = port
        self.log = Path(log) if log else None
        self.verbose = verbose
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd, "not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def record(self, method: str, path: str, headers: dict, body: dict) -> None:
        entry = {"t": time.time(), "method": method, "path": path, "body": body,
                 "headers": {k: v for k, v in headers.items() if k.lower() in ("user-agent", "content-type")}}
        with self._lock:
            self.requests.append(entry)
            if self.log:
                with self.log.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(entry) + "\n")

    def start(self) -> StandIn:
        handler = type("BoundHandler", (Handler,), {"standin": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("script", help="a JSON list of turns")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log", help="append every request (JSON Lines) to this file")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    s = StandIn(args.script, port=args.port, log=args.log, verbose=args.verbose).start()
    print(s.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        s.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
