"""What several commands share on their command line: --server, --token, a run's name, and the
one-line usage error.
"""
from __future__ import annotations

import click

from loopstream.client.defaults import DEFAULT_SERVER
from loopstream.core.exitstatus import ExitStatus

server_option = click.option("--server", envvar="LOOP_SERVER", default=DEFAULT_SERVER, show_default=True,
                             help="The sidecar's URL.")
token_option = click.option("--token", envvar="LOOP_TOKEN", default=None,
                            help="Bearer token, when the sidecar was started with one.")


class UsageLine(click.ClickException):
    """A usage mistake that is not about the command line's shape: one line, exit 2."""

    exit_code = ExitStatus.USAGE


def run_name(run_id: str | None, source: str) -> str:
    """--run as given (checked), or a new name from the PRD, file or command."""
    from loopstream.work.harness import new_run_id

    if run_id is not None and not valid_run(run_id):
        raise click.BadParameter("must match [A-Za-z0-9._-]{1,64}", param_hint="--run")
    return run_id or new_run_id(source)


def valid_run(name: str) -> bool:
    from loopstream.core.events import RUN_RE

    return bool(RUN_RE.match(name))
