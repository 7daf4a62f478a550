"""`loop run` and `loop validate`: a PRD's stories, run and reported to the sidecar, or checked."""
from __future__ import annotations

import sys

import click

from loopstream.cli.options import run_name, server_option, token_option
from loopstream.cli.terminal import clean, coloured, say, shown
from loopstream.client.defaults import GRACE
from loopstream.core.exitstatus import ExitStatus
from loopstream.core.formats import PRD_FORMATS


@click.command()
@click.argument("prd_path", metavar="PRD", type=click.Path(dir_okay=False))
@server_option
@token_option
@click.option("--run", "run_id", envvar="LOOP_RUN", help="Name of this run [default: PRD name + time].")
@click.option("--stream", is_flag=True, help="Show the live view in place (plain lines when piped).")
@click.option("--max-attempts", default=1, show_default=True, type=click.IntRange(1, 20),
              help="Tries per story before it counts as failed.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1, 10),
              help="Independent stories run at once.")
@click.option("--grace", default=GRACE, show_default=True, type=click.FloatRange(0, 600),
              help="Seconds between SIGINT and SIGKILL when stopping a story.")
@click.option("--no-update", is_flag=True, help="Do not write passes: true back to the PRD.")
@click.option("--no-embed", is_flag=True, help="Do not start a sidecar when none answers.")
@click.option("--heartbeat", "heartbeat_s", envvar="LOOP_HEARTBEAT_S", default=10.0, show_default=True,
              type=click.FloatRange(0.1, 3600), metavar="S",
              help="Send task_alive after S quiet seconds (announced as heartbeat_s; the sidecar finishes a run "
                   "silent for 3 × S as interrupted).")
@click.option("--agent-format", type=click.Choice(["text", *PRD_FORMATS]),
              default=None,
              help="How to read a story's stdout: the agent's JSON lines (Claude Code's stream-json, codex exec "
                   "--json, Gemini CLI's stream-json) parsed into agent events [default: the PRD's agentFormat, "
                   "else text; a first line of a known agent format is recognised anyway].")
@click.option("--stall-after", type=click.FloatRange(0, min_open=True), default=None, metavar="S",
              help="Emit story_stalled when a story printed and emitted nothing for S seconds [PRD: stallAfter].")
@click.option("--story-timeout", type=click.FloatRange(0, min_open=True), default=None, metavar="S",
              help="Fail an attempt running longer than S seconds (SIGINT, SIGKILL after --grace; retried per "
                   "--max-attempts) [PRD: storyTimeout].")
@click.option("--max-cost", type=click.FloatRange(0), default=None, metavar="USD",
              help="Stop the run (reason max_cost) once the agents' reported cost passes USD [PRD: maxCost].")
@click.option("--max-repeat", type=click.IntRange(2, 1_000_000), default=None, metavar="N",
              help="Fail an attempt whose agent calls the same tool with the same input N times in a row "
                   "(stopped as --story-timeout does, reason looping) [PRD: maxRepeat].")
def run(prd_path, server, token, run_id, stream, max_attempts, jobs, grace, no_update, no_embed,
        heartbeat_s, **agent_settings) -> None:
    """Run a PRD's open stories and report every step to the sidecar.

    When no sidecar answers at --server, it starts one (detached, on that
    port or a free one; it stays up after the run until idle, see
    --no-embed) and prints its dashboard URL.

    Stories with "passes": false run by priority, after their dependencies,
    each as its own process group. Exit 0 when all passed, 1 when any
    failed, 130 when stopped (Ctrl-C, SIGTERM, SIGHUP, `loop stop`, the
    dashboard). Each story's complete output is kept in a log file (path in
    its story_completed event); the stream may elide what comes too fast.
    """
    from loopstream.client.outbox import Outbox
    from loopstream.work import harness as orch
    from loopstream.work.agent import AgentRunner, agent_options
    from loopstream.work.stories import RunOptions

    prd = _load_prd(prd_path, ExitStatus.USAGE)
    run_id = run_name(run_id, prd_path)
    sidecar = orch.sidecar_for_run(server.rstrip("/"), no_embed, say)
    server = sidecar.url
    click.echo(f"loop: run {run_id}" + (f" — dashboard: {server}/?run={run_id}" if server else ""), err=True)
    live_view = stream and sys.stdout.isatty()
    outbox = Outbox(server, token, on_refused=lambda reason, n: say(
        f"loop: the sidecar refused {n} event{'s' * (n > 1)}: {reason}; the run goes on"))
    feed = orch.EventFeed(outbox, None if live_view else lambda line: say(line, err=False))
    eta = orch.estimate(server, token, prd.path.stem, sum(1 for s in prd.stories if not s.passes))
    runner = AgentRunner(prd, RunOptions(run_id=run_id, server=server, max_attempts=max_attempts, jobs=jobs,
                                         grace=grace, update=not no_update, estimated_duration=eta,
                                         heartbeat_s=heartbeat_s), feed, agent_options(prd, **agent_settings))
    with orch.supervised(runner, server, token, run_id, outbox, say):
        code = shown(live_view, lambda: feed.snapshot, lambda: feed.connection(sidecar), runner.run)
    spool = orch.hand_over_leftovers(server, run_id, outbox, token)
    counts = feed.snapshot["counts"] if feed.snapshot else {}
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v and k != "total")
    outcome = {ExitStatus.OK: "passed", ExitStatus.INTERRUPTED: "stopped"}.get(code, "failed")
    reason = (feed.snapshot or {}).get("stop_reason") if code == ExitStatus.INTERRUPTED else None
    say(f"loop: run {run_id} {coloured(outcome)}"
        + (f": {summary} of {counts.get('total', 0)} stories" if summary else "")
        + (f" — reason: {clean(reason)}" if reason else ""))
    for line in orch.delivery_report(outbox.status, server, spool):
        say(line)
    sys.exit(code)


def _load_prd(path: str, failure: ExitStatus):
    """The PRD, or every problem on stderr (one per line, with its JSON path) and exit."""
    from loopstream.work import prd as prd_mod

    try:
        return prd_mod.load(path)
    except prd_mod.PrdError as e:
        for problem in e.problems:
            click.echo(f"{e.path}: {problem}", err=True)
        raise click.exceptions.Exit(failure) from None


@click.command()
@click.argument("prd_path", metavar="PRD", type=click.Path(dir_okay=False))
def validate(prd_path) -> None:
    """Check a PRD and name every problem with its JSON path."""
    prd = _load_prd(prd_path, ExitStatus.FAILURE)
    todo = sum(1 for s in prd.stories if not s.passes)
    click.echo(f"{prd_path}: ok — {len(prd.stories)} stories, {todo} to run")
