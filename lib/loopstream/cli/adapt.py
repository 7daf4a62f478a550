"""`loop adapt`: an agent's JSON lines on stdin become events and a readable transcript."""
from __future__ import annotations

import sys

import click

from loopstream.cli.options import server_option, token_option, valid_run
from loopstream.cli.terminal import clean
from loopstream.core.exitstatus import ExitStatus
from loopstream.core.formats import FORMATS


@click.command()
@click.argument("agent_format", metavar="FORMAT", type=click.Choice(list(FORMATS)))
@click.option("--run", "run_id", envvar="LOOP_RUN", help="The run the events belong to [default: the sidecar's].")
@click.option("--story", "story_id", envvar="LOOP_STORY", help="The story the agent works on.")
@click.option("--title", default=None, help="The story's title, given when it starts.")
@click.option("--last", is_flag=True, help="The run's last story: finish the run after it (task_completed).")
@server_option
@token_option
@click.option("--wait", default=3.0, show_default=True, type=click.FloatRange(0, 60),
              help="Seconds spent at the end delivering events still queued (a sidecar that is down or hung).")
@click.pass_context
def adapt(ctx, agent_format, run_id, story_id, title, last, server, token, wait) -> None:
    """Turn an agent's JSON lines on stdin into events and a readable transcript.

    FORMAT is `claude` (Claude Code's `-p --output-format stream-json
    --verbose`), `codex` (`codex exec --json`) or `gemini` (Gemini CLI's
    `-p --output-format stream-json`). Tool calls, results, text, tokens and
    the cost (when the agent reports one) go to the sidecar as events;
    stdout gets the transcript.

    With --story (a loop of your own), the story is started when the agent's
    first line comes and finished when its input ends: passed, or failed when
    the agent's result is an error or there was none; --last also finishes
    the run. (Inside `loop run`, where LOOP_STORY is set, the runner does
    that.) A stop requested for the run (`loop stop`, the dashboard) ends it
    at once with exit 130, so a `set -o pipefail` loop can end; otherwise it
    exits 0 at the end of its input, whatever the sidecar does.

    \b
      set -o pipefail
      claude -p "$PROMPT" --output-format stream-json --verbose | loop adapt claude --run nightly --story US-1
    """
    import threading

    from loopstream.client.outbox import Outbox
    from loopstream.work import harness as orch
    from loopstream.work.adapt import Adapter, Lifecycle

    if run_id is not None and not valid_run(run_id):
        raise click.BadParameter("must match [A-Za-z0-9._-]{1,64}", param_hint="--run")
    owns_story = story_id is not None and ctx.get_parameter_source("story_id") != click.core.ParameterSource.ENVIRONMENT
    warned: list[bool] = []

    def on_status(status) -> None:
        if status.state in ("retrying", "error") and not warned:
            warned.append(True)
            click.echo(f"loop adapt: {status.last_error}; carrying on", err=True)

    server = server.rstrip("/")
    outbox = Outbox(server, token, on_status=on_status)
    adapter = Adapter(outbox.put, _transcript_writer(), run_id, story_id,
                      Lifecycle(story_id, title, last) if owns_story else None, agent_format)
    done = threading.Event()
    if run_id:
        threading.Thread(target=orch.listen_for_control, daemon=True,
                         args=(server, token, run_id, adapter, done, lambda line: None)).start()
    code = ExitStatus.OK
    try:
        adapter.read_fd(sys.stdin.fileno())
    except KeyboardInterrupt:
        adapter.finish()
        code = ExitStatus.INTERRUPTED
    finally:
        done.set()
        if not outbox.close(timeout=wait):
            click.echo(f"loop adapt: {outbox.status.dropped} events not delivered to {server}", err=True)
    if adapter.stop_reason is not None:
        click.echo(f"loop adapt: run {run_id} stopped: {clean(adapter.stop_reason)}", err=True)
        code = ExitStatus.INTERRUPTED
    sys.exit(code)


def _transcript_writer():
    """Print one transcript line; a reader that went away must not stop the agent's pipe."""
    import os

    def write(line: str) -> None:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
    return write
