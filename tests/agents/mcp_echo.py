#!/usr/bin/env python3
"""A minimal MCP server on stdio (newline-delimited JSON-RPC 2.0), for agent CLIs' MCP tool calls.

Tools: ``echo`` (``text``) answers the text back; ``fail`` (``text``) answers it as an error
(``isError: true``). Enough for codex's ``mcp_tool_call`` items and Claude's ``mcp__echo__echo``.
"""
from __future__ import annotations

import json
import sys

TOOLS = [
    {"name": "echo", "description": "Echo the text back.",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
    {"name": "fail", "description": "Fail with the text as the error.",
     "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
]


def answer(method: str, params: dict) -> dict | None:
    if method == "initialize":
        return {"protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "echo", "version": "1.0.0"}}
    if method == "tools/list":
        return {"tools": TOOLS}
    if method == "tools/call":
        text = str((params.get("arguments") or {}).get("text", ""))
        return {"content": [{"type": "text", "text": text}], "isError": params.get("name") == "fail"}
    if method in ("ping", "resources/list", "prompts/list", "resources/templates/list"):
        return {} if method == "ping" else {method.split("/")[0]: [], "resourceTemplates": []}
    return None


def main() -> int:
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not isinstance(msg, dict) or "id" not in msg:
            continue                      # a notification (notifications/initialized, …)
        result = answer(msg.get("method", ""), msg.get("params") or {})
        reply: dict = {"jsonrpc": "2.0", "id": msg["id"]}
        if result is None:
            reply["error"] = {"code": -32601, "message": f"method not found: {msg.get('method')}"}
        else:
            reply["result"] = result
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
