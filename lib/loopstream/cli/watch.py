"""The read side: `loop watch` follows a run live, `loop runs` lists them."""
from __future__ import annotations

import sys

import click

from loopstream.cli.options import server_option, token_option, valid_run
from loopstream.cli.terminal import shown
from loopstream.core.exitstatus import ExitStatus


@click.command()
@click.argument("run_id", metavar="[RUN]", required=False)
@server_option
@token_option
@click.option("--json", "as_json", is_flag=True, help="Print raw events as JSON lines.")
def watch(run_id, server, token, as_json) -> None:
    """Follow a run live, from anywhere it is emitted.

    Without RUN: the live run updated last (or, with none live, the next
    to start), followed to its end. Exits when the run finishes: 0 passed,
    1 failed, 130 stopped.
    """
    import threading

    from loopstream.client.follow import Follower, follow, poller
    from loopstream.client.http import SidecarError
    from loopstream.client.watch import RunWatch

    if run_id and not valid_run(run_id):
        raise click.BadParameter("must match [A-Za-z0-9._-]{1,64}", param_hint="RUN")
    server = server.rstrip("/")
    runs = [run_id] if run_id else []
    if not run_id:
        _known_runs(server, token)   # no sidecar: the same one line as with a RUN, not a wait
    watched = RunWatch(run_id, _known_run(server, token, run_id) if run_id else None)
    live_view = not as_json and sys.stdout.isatty()
    printer = _WatchPrinter(watched, as_json, live_view)
    follower = Follower(printer.on_event, watched.replace, poller(server, token, runs))
    conn = {"state": "connecting"}
    stop = threading.Event()

    def consume() -> None:
        if watched.finished() is None:
            follow(server, token, follower, runs=runs, stop=stop, on_state=lambda st: conn.update(state=st),
                   on_frame=printer.on_frame, until=lambda: watched.finished() is not None)

    def connection() -> str:
        return f"{conn['state'] if watched.finished() is None else 'finished'} {server}"

    try:
        shown(live_view, watched.current, connection, consume)
    except SidecarError as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        stop.set()
        sys.exit(ExitStatus.INTERRUPTED)
    printer.at_end()
    sys.exit(watched.finished() or ExitStatus.OK)


def _known_runs(server: str, token: str | None) -> list[dict]:
    """Every run the sidecar has (live and history); a sidecar that does not answer is a ClickException."""
    from loopstream.client.http import SidecarError, list_runs

    try:
        return list_runs(server, token)
    except SidecarError as e:
        raise click.ClickException(str(e)) from e


def _known_run(server: str, token: str | None, run_id: str) -> dict | None:
    """The named run as the sidecar has it (live or history), None when it has not started yet."""
    from loopstream.client.http import SidecarError, get_run

    try:
        return get_run(server, token, run_id)
    except SidecarError as e:
        raise click.ClickException(str(e)) from e


class _WatchPrinter:
    """What `loop watch` prints: JSON lines (--json), plain lines and a last box (piped), or nothing
    while the live view draws (a terminal)."""

    def __init__(self, watched, as_json: bool, live_view: bool):
        self.watched, self.as_json, self.live_view = watched, as_json, live_view

    def on_frame(self, eid: str | None, name: str, data: dict) -> None:
        import json

        if self.as_json and name in ("hello", "reset"):
            click.echo(json.dumps({"id": eid, "type": name, "data": data}))

    def on_event(self, event: dict) -> None:
        import json

        from loopstream.view import plain_line

        self.watched.apply(event)
        if event.get("run") != self.watched.followed:   # another run than the one watched
            return
        if self.as_json:
            click.echo(json.dumps(event))
        elif not self.live_view:
            click.echo(plain_line(event))

    def at_end(self) -> None:
        from loopstream.view import render_box

        if not self.live_view and not self.as_json and self.watched.current():
            click.echo("\n".join(render_box(self.watched.current(), 80)))


@click.command()
@server_option
@token_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document (a list of runs), wherever the output goes.")
def runs(server, token, as_json) -> None:
    """List runs: live ones and history.

    On a terminal a table that fits its width (statuses coloured unless
    NO_COLOR is set); piped, JSON Lines (one run a line, for grep and head);
    --json, one JSON document.
    """
    import json
    import os
    import shutil

    from loopstream.view import runs_table

    rows = _known_runs(server.rstrip("/"), token)
    if as_json:
        click.echo(json.dumps(rows))
    elif not sys.stdout.isatty():
        for row in rows:
            click.echo(json.dumps(row))
    elif not rows:
        click.echo("no runs yet")
    else:
        color = not os.environ.get("NO_COLOR")
        click.echo("\n".join(runs_table(rows, shutil.get_terminal_size().columns, color)))
