"""`loop watch`'s runs: every run's snapshot, folded event by event, and the one run followed to its end."""
from __future__ import annotations

from loopstream.core.exitstatus import ExitStatus


class RunWatch:
    """`loop watch`'s runs: every run's snapshot (replaced by a fresh hello or a reset, folded event by
    event), and the run shown: the named one, else the live run updated last when the watch began (or
    the first to start after), followed to its end like a named one."""

    def __init__(self, run_id: str | None, known: dict | None = None):
        self.run_id = run_id
        self.followed = run_id
        self.known = known           # the named run as /api/runs/RUN gave it before the stream opened
        self.snaps: dict[str, dict] = {}

    def replace(self, runs: list, reason: str | None = None) -> None:
        """A fresh hello or a reset: these snapshots are the whole picture now."""
        self.snaps = {s["run"]: s for s in runs if isinstance(s, dict) and "run" in s}
        self._follow_latest()

    def apply(self, event: dict) -> None:
        from loopstream.core import state

        self.snaps[event["run"]] = state.apply(self.snaps.get(event["run"]), event)
        self._follow_latest()

    def current(self) -> dict | None:
        if not self.followed:
            return None
        return self.snaps.get(self.followed) or (self.known if self.followed == self.run_id else None)

    def finished(self) -> ExitStatus | None:
        """The exit status once the named run has finished ("interrupted" may yet come back: not finished)."""
        from loopstream.core import state

        s = self.current()
        if self.run_id and s and s["status"] in state.FINISHED:
            return ExitStatus.of_run(s["status"])
        return None

    def _follow_latest(self) -> None:
        """No run named: pick the live run updated last (or the first to start), then keep to it to its end."""
        from loopstream.core import state

        if self.run_id:
            return
        live = [s for s in self.snaps.values() if state.is_live(s)]
        if live:
            self.followed = self.run_id = max(live, key=lambda s: s.get("updated_at") or 0)["run"]
