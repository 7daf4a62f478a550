"""What a snapshot shows that no event says: counts, success rate, percent, elapsed time and ETA,
all from the events' own times (no clock)."""
from __future__ import annotations

from loopstream.core.state.records import LIVE
from loopstream.core.state.values import finite, num


def derive(snap: dict) -> None:
    """Counts, percent, elapsed and ETA: all from the events' own times."""
    c = snap["counts"] = _counts(snap)
    decided = c["completed"] + c["failed"]
    snap["success_rate"] = c["completed"] / decided if decided else None
    started, end = snap["started_at"], snap["finished_at"] or snap["updated_at"]
    elapsed = end - started if num(started) is not None and num(end) is not None else 0
    snap["elapsed_s"] = max(0, elapsed)
    snap["percent"] = _percent(snap, c)
    snap["eta_s"] = _eta(snap, c) if snap["status"] in LIVE else None


def _counts(snap: dict) -> dict:
    stories = snap["stories"]
    c = {"total": 0, "completed": 0, "running": 0, "queued": 0, "failed": 0, "skipped": 0, "cancelled": 0}
    for s in stories:
        key = {"passed": "completed"}.get(s["status"], s["status"])
        if key in c:
            c[key] += 1
    c["total"] = max(len(stories), int(snap["story_count"] or 0))
    c["queued"] = c["total"] - c["completed"] - c["running"] - c["failed"] - c["skipped"] - c["cancelled"]
    if snap["status"] == "stopped":  # stories a stopped run never reached (known only by count) were cancelled too
        c["cancelled"], c["queued"] = c["cancelled"] + c["queued"], 0
    return c


def _percent(snap: dict, c: dict) -> float:
    progress = snap["progress"] or {}
    if c["total"]:  # finished stories: a cancelled one was never done, so a stopped run shows where it stopped
        done = c["completed"] + c["failed"] + c["skipped"]
        percent = done * 100 / c["total"]
    elif num(progress.get("percent")) is not None:
        percent = progress["percent"]
    elif num(progress.get("current")) is not None and num(progress.get("total")):
        percent = float(progress["current"]) * 100 / progress["total"]   # in doubles, as JS
    else:
        percent = 0
    percent = min(100, max(0, percent))
    if snap["status"] in ("passed", "failed") and percent < 100 and not c["total"]:
        percent = 100
    return percent


def _eta(snap: dict, c: dict) -> float | None:
    durations = [s["duration_ms"] for s in snap["stories"]
                 if s["status"] in ("passed", "failed") and num(s["duration_ms"]) is not None]
    remaining = c["queued"] + c["running"]
    if durations and remaining:
        total = 0.0
        for d in durations:   # added in order, in doubles, as JS does (sum() may compensate)
            total += d
        return total / len(durations) / 1000 * remaining
    if num(snap["estimated_duration"]) is not None:
        return max(0, snap["estimated_duration"] - snap["elapsed_s"])
    if 0 < snap["percent"] < 100:
        return finite(snap["elapsed_s"] * (100 - snap["percent"]) / snap["percent"])
    return None
