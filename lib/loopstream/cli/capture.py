"""Capturing anything: `loop tail` follows a log file, `loop exec` wraps a command; both stream it as a run."""
from __future__ import annotations

import sys

import click

from loopstream.cli.options import run_name, server_option, token_option
from loopstream.cli.terminal import clean, coloured, say, shown
from loopstream.client.defaults import GRACE
from loopstream.core.exitstatus import ExitStatus


def _regex(ctx, param, value):
    import re

    if value is None:
        return None
    try:
        return re.compile(value)
    except re.error as e:
        raise click.BadParameter(f"not a valid regular expression: {e}") from e


class _OneWarning:
    """At most one line on stderr about the sidecar, the first time it fails us: a command's own
    stderr must stay readable (and a pipeline's stays nearly the command's)."""

    def __init__(self, server: str | None):
        self.server = server
        self.said = False

    def say(self, message: str) -> None:
        if not self.said:
            self.said = True
            say(f"loop: {message}")

    def on_status(self, status) -> None:
        if status.state in ("retrying", "error"):
            self.say(f"{status.last_error or f'the sidecar at {self.server} is not answering'}; "
                     "carrying on, events are sent when it answers")

    def on_refused(self, reason: str, count: int) -> None:
        self.say(f"the sidecar refused {count} event{'s' * (count > 1)}: {reason}; carrying on")

    def at_close(self, status) -> None:
        if status.undelivered:
            self.say(f"{status.undelivered} events not delivered to {self.server} "
                     f"({status.last_error or 'no answer'})")


def _echo_line(line: bytes, raw: bool) -> None:
    """A followed line on stdout: as written when piped, control characters stripped on a terminal."""
    from loopstream import view

    if raw:
        sys.stdout.buffer.write(line)
    else:
        sys.stdout.buffer.write((view.clean(line.decode("utf-8", "replace").rstrip("\n")) + "\n").encode())
    sys.stdout.flush()


@click.command()
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False))
@server_option
@token_option
@click.option("--run", "run_id", help="Name of this run [default: file name + time; LOOP_RUN is not read: "
                                      "inside another run this is a run of its own].")
@click.option("--name", default=None, help="The run's title on the dashboard [default: tail FILE].")
@click.option("--until", callback=_regex, metavar="REGEX",
              help="Exit 0 at the first line matching this Python regular expression.")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), metavar="S",
              help="Give up after S seconds: exit 1.")
@click.option("--from-start", is_flag=True, help="Read a file that already exists from its first line.")
@click.option("--no-embed", is_flag=True, help="Do not start a sidecar when none answers.")
def tail(path, server, token, run_id, name, until, timeout, from_start, no_embed) -> None:
    """Follow a log file: every complete line appended to FILE streams as output.

    Waits for FILE to appear; survives truncation and rotation. Prints the
    lines too. Exit 0 when a line matches --until, 1 on --timeout, 130 on
    Ctrl-C, SIGTERM or `loop stop RUN`.

    \b
      loop tail build.log --until '=== Run Complete ===' --timeout 3600
    """
    from loopstream.client.outbox import Outbox
    from loopstream.work import harness as orch
    from loopstream.work.capture import Tail, TailOptions

    run_id = run_name(run_id, path)
    server = orch.sidecar_for_run(server.rstrip("/"), no_embed, say).url
    say(f"loop: run {run_id}" + (f" — dashboard: {server}/?run={run_id}" if server else ""))
    outbox = Outbox(server, token, on_status=_OneWarning(server).on_status)
    raw = not sys.stdout.isatty()
    follower = Tail(TailOptions(path=path, run_id=run_id, name=name or f"tail {path}", until=until,
                                timeout=timeout, from_start=from_start),
                    emit=outbox.put, echo=lambda line: _echo_line(line, raw),
                    notice=lambda message: click.echo(f"loop: {message}", err=True))
    with orch.supervised(follower, server, token, run_id, outbox, say):
        result = follower.run()
    outcomes: dict[int, str] = {ExitStatus.OK: "matched", ExitStatus.FAILURE: f"failed: {clean(result.reason)}",
                                ExitStatus.INTERRUPTED: f"stopped: {clean(result.reason)}"}
    outcome = outcomes[result.code]
    click.echo(f"loop: run {run_id}: {result.lines} lines, {coloured(outcome)}", err=True)
    sys.exit(result.code)


# -- loop exec: a command, wrapped -----------------------------------------------------------

@click.command(name="exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD [ARGS]...")
@server_option
@token_option
@click.option("--run", "run_id", help="Name of this run [default: command name + time; LOOP_RUN is not read: "
                                      "inside another run, e.g. a story, this is a run of its own].")
@click.option("--name", default=None, help="The run's title on the dashboard [default: the command line].")
@click.option("--stream", is_flag=True, help="Show the live view instead of the command's own output.")
@click.option("--grace", default=GRACE, show_default=True, type=click.FloatRange(0, 600),
              help="Seconds between SIGINT and SIGKILL when stopping the command.")
@click.option("--no-embed", is_flag=True, help="Do not start a sidecar when none answers.")
def exec_(argv, server, token, run_id, name, stream, grace, no_embed) -> None:
    """Run a command and stream its output live; exit with its exit code.

    Its stdout and stderr pass through unchanged (a pipeline does not
    notice), are kept whole in a log file and go to the sidecar as output
    events. Killed by signal N: exit 128+N. Ctrl-C, SIGTERM, `loop stop RUN`
    and the dashboard's Stop end it through the grace path: exit 130.

    \b
      loop exec --name "Nightly tests" -- make -k test
    """
    from loopstream.client.outbox import Outbox
    from loopstream.work import harness as orch
    from loopstream.work.capture import Exec, ExecOptions
    from loopstream.work.stories import StoryLog, _file_name, story_log_dir

    run_id = run_name(run_id, argv[0])
    sidecar = orch.sidecar_for_run(server.rstrip("/"), no_embed, say)
    server = sidecar.url
    human = sys.stderr.isatty()      # loop's own lines only for a person: a pipeline's stderr stays the command's
    if human:
        say(f"loop: run {run_id}" + (f" — dashboard: {server}/?run={run_id}" if server else ""))
    warning = _OneWarning(server)
    outbox = Outbox(server, token, on_status=warning.on_status, on_refused=warning.on_refused)
    live_view = stream and sys.stdout.isatty()
    print_line = (lambda line: say(line, err=False)) if stream and not live_view else None
    feed = orch.EventFeed(outbox, print_line, fold=stream)
    log = StoryLog(story_log_dir() / _file_name(run_id) / "output.log", feed.log_warning(run_id, say))
    job = Exec(ExecOptions(argv=list(argv), run_id=run_id, name=name, grace=grace, server=server),
               feed, log, passthrough={} if stream else None, notice=lambda message: say(f"loop: {message}"))
    with orch.supervised(job, server, token, run_id, outbox, say):
        result = shown(live_view, lambda: feed.snapshot, lambda: feed.connection(sidecar), job.run)
    if human or stream:
        say(f"loop: run {run_id}: exit {result.exit_code}" + (f", stopped: {clean(result.stop_reason)}"
                                                              if result.stop_reason else "") + f"; log {log.path}")
        for line in orch.delivery_report(outbox.status, server):
            say(line)
    else:
        warning.at_close(outbox.status)
    sys.exit(result.code)
