"""What loop itself prints: lines for a person, status words in colour, the live view around a run."""
from __future__ import annotations

import sys

import click


def shown(live_view: bool, snapshot, connection, body):
    """``body()``, under the live view of ``snapshot()`` on a terminal."""
    if not live_view:
        return body()
    from loopstream.view import LiveView

    with LiveView(snapshot, connection):
        return body()


STATUS_COLOURS = {"passed": "green", "matched": "green", "failed": "red", "running": "yellow", "stopped": "magenta"}


def coloured(status: str, err: bool = True) -> str:
    """A status word coloured (passed green, failed red, …) on a terminal, plain when piped or NO_COLOR."""
    import os

    stream = sys.stderr if err else sys.stdout
    word = status.split(":", 1)[0]
    if word not in STATUS_COLOURS or os.environ.get("NO_COLOR") or not stream.isatty():
        return status
    return click.style(word, fg=STATUS_COLOURS[word]) + status[len(word):]


def say(line: str, err: bool = True) -> None:
    """One line for the user; a terminal that hung up (SIGHUP) or a closed pipe must not fail the run."""
    try:
        click.echo(line, err=err)
    except OSError:
        pass


def clean(text: object) -> str:
    """Text from the network (a stop reason), fit for the terminal: one line, no control characters."""
    from loopstream import view

    return view.field(text)
