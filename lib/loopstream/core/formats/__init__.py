"""Agent output formats, one module each, all turned into the same loop events (pure: no I/O):
common (AgentParser, the vocabulary, the bounds, going in circles), claude, codex, gemini, and hook_session (Claude
Code's hook payloads -> a session's events).

The registry below is the one list of formats: `loop adapt FORMAT` takes its names, a PRD's
``agentFormat`` its long names, and ``detect`` recognises a format from an agent's first line. A
fifth format is one module with an ``AgentParser`` subclass, one line here and one fixture.
"""
from __future__ import annotations

from loopstream.core.formats.claude import ClaudeParser
from loopstream.core.formats.codex import CodexParser
from loopstream.core.formats.common import (
    IDLE_FLUSH_S,
    LOOP_AFTER,
    MAX_LINE_BYTES,
    MAX_TEXT,
    AgentParser,
    LineSplitter,
    parse_line,
    tool_summary,
)
from loopstream.core.formats.gemini import GeminiParser

__all__ = ["AgentParser", "LineSplitter", "IDLE_FLUSH_S", "LOOP_AFTER", "MAX_LINE_BYTES", "MAX_TEXT", "FORMATS",
           "PRD_FORMATS", "detect", "parser_for", "tool_summary"]

FORMATS: dict[str, type[AgentParser]] = {"claude": ClaudeParser, "codex": CodexParser, "gemini": GeminiParser}
# A PRD's agentFormat -> the format (the long names say which output option of the agent they mean).
PRD_FORMATS = {"claude-stream-json": "claude", "codex-json": "codex", "gemini-stream-json": "gemini"}


def parser_for(fmt: str, story_id: str | None = None, loop_after: int = LOOP_AFTER) -> AgentParser:
    """A parser for ``fmt``: a short name (``claude``) or a PRD's long one (``claude-stream-json``);
    ``loop_after`` identical tool calls in a row give an ``agent_looping``."""
    return FORMATS[PRD_FORMATS.get(fmt, fmt)](story_id, loop_after=loop_after)


def detect(line: str) -> str | None:
    """The format whose first line ``line`` is, or None (plain text, or JSON of no known agent)."""
    obj = parse_line(line.strip())
    if obj is None:
        return None
    return next((fmt for fmt, parser in FORMATS.items() if parser.detect(obj)), None)
