"""OpenTelemetry in and out. logs_in: Claude Code's own logs (cost and tokens of its sessions), read with the
protocol's generated classes (pure). traces_out: every run exported as one trace over OTLP/HTTP, off the request
path (the SDK is imported only when configured); trace_map turns events into finished spans with ids derived from
run and event ids, trace_parts holds what it builds them from (span records, bounds, ids) (both pure)."""
