"""`loop stop`, `loop pause`, `loop resume`: a control request for a run, which its runner acts on."""
from __future__ import annotations

import click

from loopstream.cli.options import server_option, token_option
from loopstream.cli.terminal import clean


def _control_command(action: str) -> click.Command:
    @click.argument("run_id", metavar="RUN", envvar="LOOP_RUN")
    @click.option("--reason", default=None, help="Why; shown on the dashboard and in the transcript.")
    @server_option
    @token_option
    def command(run_id, reason, server, token) -> None:
        from loopstream.client.http import SidecarError, request_control

        try:
            r = request_control(server, token, run_id, action, reason)
        except SidecarError as e:
            raise click.ClickException(str(e)) from e
        if r["requested"]:
            click.echo(f"{action} requested for {run_id}")
        else:
            click.echo(f"{action}: nothing to do for {run_id} (status {clean(r.get('status'))}, or already requested)")

    command.__doc__ = {"stop": "Stop a run: its runner interrupts the running story and cancels the rest.",
                       "pause": "Pause a run: running stories finish, no new one starts.",
                       "resume": "Resume a paused run."}[action]
    return click.command(name=action)(command)


COMMANDS = [_control_command(action) for action in ("stop", "pause", "resume")]
