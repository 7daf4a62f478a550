"""What a hub is built from, per backend: the broker, the rate limiter, the history, the notifier, the traces."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loopstream.core import events as ev
from loopstream.sidecar.brokers.memory import Broker, Cursor, MemoryBroker
from loopstream.sidecar.config import Config
from loopstream.sidecar.history import History
from loopstream.sidecar.ratelimit import TokenBuckets

if TYPE_CHECKING:
    from loopstream.sidecar.otlp.traces_out import TraceExport
    from loopstream.sidecar.streams import Streams


@dataclass
class Parts:
    """What a backend brings: its broker, its rate limiter and (memory only) the history. Without a
    limiter the broker keeps the budgets and takes a batch's charges with its publish (Redis)."""

    broker: Broker
    limiter: TokenBuckets | None
    history: History | None = None


def redis_parts(cfg: Config, clock: Callable[[], float], streams: Streams,
                on_events: Callable[[list[ev.Event], Cursor, Cursor], None] | None = None,
                traces: TraceExport | None = None) -> Parts:
    """Redis keeps the stream, the snapshots, the history and the rate limit (charged by the publish
    script). ``on_events`` is told of every event this worker's replica takes in (the streams' publish
    unless said otherwise); when the replica is loaded again, the streams wake and the traces read
    again what they missed (events published meanwhile never reach ``on_events``)."""
    from loopstream.sidecar.brokers.redis import RedisBroker

    assert cfg.backend, "redis_parts needs a redis:// backend URL"

    def resynced() -> None:
        streams.wake_all()
        if traces is not None:
            traces.resynced()

    broker = RedisBroker(cfg.backend, cfg.buffer, clock=clock, on_events=on_events or streams.publish,
                         on_down=streams.end_all, on_resync=resynced)
    return Parts(broker, None)


def memory_parts(cfg: Config, clock: Callable[[], float], monotonic: Callable[[], float]) -> Parts:
    """One process keeps everything; with --db, finished runs and the epoch survive a restart."""
    history = History(cfg.db, fsync=cfg.fsync) if cfg.db else None
    epoch = int(clock() * 1000)
    restored: list[dict] = []
    if history:
        floor, restored = history.open()
        epoch = max(epoch, floor + 1)
        history.save_epoch(epoch)
        history.start_writer()
    broker = MemoryBroker(cfg.buffer, epoch=epoch, clock=clock)
    for snap in restored:
        broker.restore(snap)
    return Parts(broker, TokenBuckets(cfg.rate, cfg.burst, clock=monotonic), history)


def make_notifier(cfg: Config):
    """The notifier told of each finished run off the request path (notify.py), with --notify."""
    if not cfg.notify:
        return None
    from loopstream.sidecar.notify import Notifier

    return Notifier(cfg.notify, cfg.notify_format, cfg.notify_min_duration, cfg.dashboard_url)


Key = tuple[int, int]


def recorded_between(history: History | None, broker: Broker, run: str, after: Key, before: Key | None) -> list[dict]:
    """A run's recorded events with ids after ``after`` and before ``before`` (None: to the end), for the
    traces: the journal (read off the loop, stopping at ``before``), else the broker's transcript (Redis;
    memory without --db: what the buffer holds). BackendDown or OSError when the store cannot be read."""
    events = history.transcript_before(run, before) if history else broker.transcript(run)[0]
    keys = [(e, ev.parse_id(e.get("id")) or (0, 0)) for e in events]
    return [e for e, k in keys if k > after and (before is None or k < before)]


def make_traces(cfg: Config, recorded: Callable[[str, Key, Key | None], list[dict]]) -> TraceExport | None:
    """The trace exporter (otlp/traces_out.py), with --otlp-endpoint: the SDK is imported only then."""
    if not cfg.otlp_endpoint:
        return None
    from loopstream.sidecar.otlp.traces_out import TraceExport

    return TraceExport(cfg.otlp_endpoint, recorded)
