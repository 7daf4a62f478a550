"""What both sides share, and nothing that does I/O: the event model (events), the run-state reducer (state),
agent output formats (formats/), the item grammar of `loop emit` (items), SSE framing (sse), exit codes (exitstatus)."""
