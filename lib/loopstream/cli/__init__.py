"""The ``loop`` command line: Click commands only (parse -> call -> print).

Client libraries (requests, rich) are imported inside the commands that use
them, so ``loop serve`` starts clean under gevent's monkey-patching.
"""
from __future__ import annotations

import sys

import click

from loopstream import __version__
from loopstream.client.defaults import DEFAULT_PORT, DEFAULT_SERVER, GRACE
from loopstream.core.exitstatus import ExitStatus
from loopstream.core.formats import FORMATS, PRD_FORMATS
from loopstream.sidecar.config import Config

server_option = click.option("--server", envvar="LOOP_SERVER", default=DEFAULT_SERVER, show_default=True,
                             help="The sidecar's URL.")
token_option = click.option("--token", envvar="LOOP_TOKEN", default=None,
                            help="Bearer token, when the sidecar was started with one.")

SIDECAR = Config()   # the sidecar's defaults, read from Config's fields (loop serve shows them)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="loop")
def cli() -> None:
    """loop: live progress streaming for task loops."""


@cli.command()
@click.option("--host", envvar="LOOP_HOST", default=SIDECAR.host, show_default=True,
              help="Address to bind. Anything but loopback needs --token (or --insecure).")
@click.option("--port", envvar="LOOP_PORT", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535))
@click.option("--buffer", default=SIDECAR.buffer, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Events kept in memory for resume and late joiners.")
@click.option("--rate", default=SIDECAR.rate, show_default=True, type=click.FloatRange(0),
              help="Events per second per emitter (sustained); 0 turns the limit off.")
@click.option("--burst", default=SIDECAR.burst, show_default=True, type=click.IntRange(1), help="Token bucket size.")
@click.option("--heartbeat", default=SIDECAR.heartbeat, show_default=True, type=click.FloatRange(0.05),
              help="Seconds between heartbeat events on an idle stream.")
@click.option("--db", envvar="LOOP_DB", default=None, type=click.Path(dir_okay=False),
              help="History file (TinyDB) [default: $XDG_DATA_HOME/loop/history.json].")
@click.option("--no-history", is_flag=True, help="Keep nothing on disk.")
@click.option("--fsync", envvar="LOOP_FSYNC", default=SIDECAR.fsync, show_default=True,
              type=click.Choice(["always", "everysec", "never"]),
              help="When the journal reaches the disk: always = before the 201 (grouped across concurrent "
                   "POSTs); everysec = about once a second; never = when the OS writes it back.")
@click.option("--backend", envvar="LOOP_BACKEND", default="memory", show_default=True,
              help="Where the stream lives: memory (one worker), or a Redis URL such as "
                   "redis://127.0.0.1:6379/0 (shared by any number of workers and hosts; keeps the history).")
@click.option("--token", envvar="LOOP_TOKEN", default=None,
              help="Require this bearer token on the API. Prefer LOOP_TOKEN or --token-file: "
                   "a token on the command line shows in ps.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None, metavar="PATH",
              help="Read the token from this file (its first line), instead of --token.")
@click.option("--forwarded-allow-ips", envvar="LOOP_FORWARDED_ALLOW_IPS", default=None, metavar="ADDR[,ADDR]",
              help="Proxies (addresses or CIDR networks) whose X-Forwarded-For / X-Real-IP name the client "
                   "every per-client limit counts; '*' = any peer (only when nothing else can connect).")
@click.option("--cors", "cors", envvar="LOOP_CORS", multiple=True,
              help="An origin allowed to call the API from a browser (repeatable).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback bind without a token.")
@click.option("--allowed-host", "allowed_hosts", envvar="LOOP_ALLOWED_HOSTS", multiple=True, metavar="NAME",
              help="A Host name the server answers to besides loopback names and the bind address "
                   "(repeatable; '*' = any, e.g. behind a proxy). Other names get 403 (DNS rebinding).")
@click.option("--client-rate", default=SIDECAR.client_rate, show_default=True, type=click.FloatRange(0),
              help="Events per second per client address, whatever runs it names; 0 turns it off.")
@click.option("--client-burst", default=SIDECAR.client_burst, show_default=True, type=click.IntRange(1),
              help="Token bucket size of the per-client budget.")
@click.option("--max-live-runs", default=SIDECAR.max_live_runs, show_default=True, type=click.IntRange(1),
              help="Live runs held at once; events starting another get 503 until one finishes.")
@click.option("--max-live-runs-per-client", default=SIDECAR.max_live_runs_per_client, show_default=True,
              type=click.IntRange(0), help="Live runs one client address may have started; past it 429; 0 = off.")
@click.option("--ghost-after", default=SIDECAR.ghost_after, show_default=True, type=click.FloatRange(0), metavar="S",
              help="Finish as interrupted a live run whose events all came in one request and that sent "
                   "nothing for S seconds since; 0 = never.")
@click.option("--stale-after", default=None, type=click.FloatRange(0.1), metavar="S",
              help="Finish as interrupted a run that announced heartbeat_s and sent nothing for S seconds "
                   "[default: 3 x its heartbeat_s].")
@click.option("--idle-exit", default=SIDECAR.idle_exit, show_default=True, type=click.FloatRange(0), metavar="S",
              help="Exit after S seconds with no request and no open stream; 0 = never.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="gunicorn workers; the memory backend allows exactly 1, Redis any number.")
@click.option("--max-streams", default=SIDECAR.max_streams, show_default=True, type=click.IntRange(1))
@click.option("--max-streams-per-client", default=SIDECAR.max_streams_per_client, show_default=True,
              type=click.IntRange(1))
@click.option("--header-timeout", default=SIDECAR.header_timeout, show_default=True, type=click.FloatRange(0.1),
              metavar="S", help="Seconds a request has to send its whole head; then the connection is closed.")
@click.option("--max-connections-per-client", default=SIDECAR.max_connections_per_client, show_default=True,
              type=click.IntRange(1), help="Open connections per client address that are not streams "
                                           "(unfinished or idle requests); more are refused at once.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--access-log", is_flag=True, help="Log every request to stderr.")
@click.option("--notify", "notify_url", envvar="LOOP_NOTIFY", default=None, metavar="URL",
              help="POST one message per finished run to this webhook (or ntfy topic URL).")
@click.option("--notify-format", envvar="LOOP_NOTIFY_FORMAT", default=SIDECAR.notify_format, show_default=True,
              type=click.Choice(["json", "ntfy"]), help="json: a JSON message; ntfy: ntfy's publish format.")
@click.option("--notify-min-duration", envvar="LOOP_NOTIFY_MIN_DURATION", default=SIDECAR.notify_min_duration,
              show_default=True, type=click.FloatRange(0), metavar="S",
              help="Do not notify about runs shorter than S seconds.")
@click.pass_context
def serve(ctx, host, port, buffer, rate, burst, heartbeat, db, no_history, backend, token, cors, insecure,
          workers, max_streams, max_streams_per_client, log_level, access_log,
          notify_url, notify_format, notify_min_duration, fsync, **limits) -> None:
    """Run the sidecar: gunicorn with gevent workers (one, or several on Redis).

    Shell hooks and `loop run` POST events to it; browsers and `loop watch`
    stream them from /stream/progress; the dashboard is at /.
    """
    from loopstream.sidecar.config import Config, backend_url, check_history, default_db_path, is_loopback
    from loopstream.sidecar.launch import Sidecar, WorkerCountError

    token = _token(ctx, token, limits.pop("token_file"))
    if not is_loopback(host) and not token and not insecure:
        raise _UsageLine(
            f"refusing to bind {host} without a token: anyone who can reach it could post events and "
            "stop runs. Pass --token (or LOOP_TOKEN), or --insecure if the network is trusted.")
    cors_origins = [o for value in cors for o in value.split(",") if o]
    try:
        redis_url = backend_url(backend)
    except ValueError as e:
        raise click.BadParameter(str(e).split(": ", 1)[1], param_hint="--backend") from e
    if redis_url:
        if db and ctx.get_parameter_source("db") == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError("--db is for the memory backend; with Redis the history is kept in Redis")
        no_history = True
        # Checked in a child process: the master must not import redis (and ssl) before
        # gunicorn's gevent workers monkey-patch.
        import subprocess
        import sys

        probe = subprocess.run([sys.executable, "-m", "loopstream.sidecar.brokers.redis", redis_url],
                               capture_output=True, text=True)
        if probe.returncode:
            raise click.ClickException(f"{probe.stderr.strip().rstrip('.')}. Start redis-server, "
                                       "or pass --backend memory.")
    config = Config(buffer=buffer, rate=rate, burst=burst, heartbeat=heartbeat, token=token or None,
                    db=None if no_history else str(db or default_db_path()), cors=cors_origins,
                    max_streams=max_streams, max_streams_per_client=max_streams_per_client,
                    backend=redis_url, fsync=fsync)
    _configure_notify(config, notify_url, notify_format, notify_min_duration, host, port)
    _configure_proxies(config, limits.pop("forwarded_allow_ips"))
    _configure_limits(config, **limits)
    if config.db:
        try:
            check_history(config.db)
        except (ValueError, OSError) as e:
            raise click.ClickException(str(e)) from e
    _check_port(host, port)
    try:
        app = Sidecar(config, host, port, workers=workers, log_level=log_level, access_log=access_log)
    except WorkerCountError as e:
        raise click.UsageError(str(e)) from e
    where = f"backend: {redis_url}, {workers} worker{'s' * (workers > 1)}" if redis_url else \
        f"history: {config.db or 'off'}"
    click.echo(f"loop sidecar on http://{host}:{port}/  ({where})", err=True)
    app.run()


class _UsageLine(click.ClickException):
    """A usage mistake that is not about the command line's shape: one line, exit 2."""

    exit_code = ExitStatus.USAGE


def _check_port(host: str, port: int) -> None:
    """Refuse at once, in one line, a port that is taken (and say when a loop sidecar is what holds it),
    rather than gunicorn's retries and eleven lines five seconds later."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as gunicorn binds
        try:
            s.bind((host, port))
            return
        except OSError as e:
            problem = e
    from loopstream.client import healthy  # only now: requests must not be imported before the workers patch

    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    if problem.errno == errno.EADDRINUSE and healthy(url, timeout=1):
        raise _UsageLine(f"a loop sidecar already answers at {url}/ — use it (LOOP_SERVER={url}), "
                         "or pick another --port")
    if problem.errno == errno.EADDRINUSE:
        raise _UsageLine(f"port {port} on {host} is in use by another program; pick another --port")
    raise _UsageLine(f"cannot listen on {host}:{port}: {problem.strerror or problem}; "
                     "pick another --host or --port")


def _token(ctx, token: str | None, token_file: str | None) -> str | None:
    """The token from LOOP_TOKEN, --token-file or --token; a token typed on the command line
    works, with a warning: every local user sees it in ps (the master's and each worker's)."""
    if token_file:
        if token and ctx.get_parameter_source("token") == click.core.ParameterSource.COMMANDLINE:
            raise _UsageLine("--token and --token-file: give the token one way")
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise _UsageLine(f"--token-file {token_file}: cannot read it ({getattr(e, 'strerror', None) or e})") from e
        if not token:
            raise _UsageLine(f"--token-file {token_file}: the file's first line is empty")
    elif token and ctx.get_parameter_source("token") == click.core.ParameterSource.COMMANDLINE:
        click.echo("loop: warning: --token on the command line shows in ps to every local user; "
                   "set LOOP_TOKEN or use --token-file", err=True)
    return token or None


def _configure_proxies(config, value: str | None) -> None:
    """--forwarded-allow-ips, checked before the workers fork: a bad entry is one line, exit 2."""
    from loopstream.sidecar.forwarded import Trusted, TrustError

    try:
        trusted = Trusted.parse(value)
    except TrustError as e:
        raise _UsageLine(str(e)) from e
    if trusted.anyone:
        click.echo("loop: warning: --forwarded-allow-ips '*' believes X-Forwarded-For from any peer: "
                   "only when nothing but the proxy can reach the sidecar", err=True)
    config.forwarded_allow_ips = trusted.spec


def _configure_limits(config, allowed_hosts: tuple[str, ...], **limits) -> None:
    """The Host names, per-client budgets, live-run bounds, reaper, idle exit and connection limits
    (see README, Security): each option's value goes to the Config field of its name."""
    config.allowed_hosts = [h.strip() for value in allowed_hosts for h in value.split(",") if h.strip()]
    for name, value in limits.items():
        setattr(config, name, value)


def _configure_notify(config, url: str | None, fmt: str, min_duration: float, host: str, port: int) -> None:
    """Check --notify before the workers fork, and give its messages a link to this dashboard."""
    if not url:
        return
    from loopstream.sidecar.notify import NotifyError, check_target

    try:
        check_target(url, fmt)
    except NotifyError as e:
        raise click.BadParameter(str(e).split(": ", 1)[1], param_hint="--notify") from e
    where = f"[{host}]" if ":" in host else host
    config.notify, config.notify_format, config.notify_min_duration = url, fmt, min_duration
    config.dashboard_url = f"http://{where}:{port}/"


# -- running a PRD -------------------------------------------------------------------

@cli.command()
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
    from loopstream.client import Outbox
    from loopstream.work import harness as orch
    from loopstream.work.agent import AgentRunner, agent_options
    from loopstream.work.stories import RunOptions

    prd = _load_prd(prd_path, ExitStatus.USAGE)
    run_id = _run_name(run_id, prd_path)
    sidecar = orch.sidecar_for_run(server.rstrip("/"), no_embed, _say)
    server = sidecar.url
    click.echo(f"loop: run {run_id}" + (f" — dashboard: {server}/?run={run_id}" if server else ""), err=True)
    live_view = stream and sys.stdout.isatty()
    outbox = Outbox(server, token, on_refused=lambda reason, n: _say(
        f"loop: the sidecar refused {n} event{'s' * (n > 1)}: {reason}; the run goes on"))
    feed = orch.EventFeed(outbox, None if live_view else lambda line: _say(line, err=False))
    eta = orch.estimate(server, token, prd.path.stem, sum(1 for s in prd.stories if not s.passes))
    runner = AgentRunner(prd, RunOptions(run_id=run_id, server=server, max_attempts=max_attempts, jobs=jobs,
                                         grace=grace, update=not no_update, estimated_duration=eta,
                                         heartbeat_s=heartbeat_s), feed, agent_options(prd, **agent_settings))
    with orch.supervised(runner, server, token, run_id, outbox, _say):
        code = _shown(live_view, lambda: feed.snapshot, lambda: feed.connection(sidecar), runner.run)
    spool = orch.hand_over_leftovers(server, run_id, outbox, token)
    counts = feed.snapshot["counts"] if feed.snapshot else {}
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v and k != "total")
    outcome = {ExitStatus.OK: "passed", ExitStatus.INTERRUPTED: "stopped"}.get(code, "failed")
    reason = (feed.snapshot or {}).get("stop_reason") if code == ExitStatus.INTERRUPTED else None
    _say(f"loop: run {run_id} {_coloured(outcome)}"
         + (f": {summary} of {counts.get('total', 0)} stories" if summary else "")
         + (f" — reason: {_clean(reason)}" if reason else ""))
    for line in orch.delivery_report(outbox.status, server, spool):
        _say(line)
    sys.exit(code)


def _run_name(run_id: str | None, source: str) -> str:
    """--run as given (checked), or a new name from the PRD, file or command."""
    from loopstream.work.harness import new_run_id

    if run_id is not None and not _valid_run(run_id):
        raise click.BadParameter("must match [A-Za-z0-9._-]{1,64}", param_hint="--run")
    return run_id or new_run_id(source)


def _shown(live_view: bool, snapshot, connection, body):
    """``body()``, under the live view of ``snapshot()`` on a terminal."""
    if not live_view:
        return body()
    from loopstream.view import LiveView

    with LiveView(snapshot, connection):
        return body()


STATUS_COLOURS = {"passed": "green", "matched": "green", "failed": "red", "running": "yellow", "stopped": "magenta"}


def _coloured(status: str, err: bool = True) -> str:
    """A status word coloured (passed green, failed red, …) on a terminal, plain when piped or NO_COLOR."""
    import os

    stream = sys.stderr if err else sys.stdout
    word = status.split(":", 1)[0]
    if word not in STATUS_COLOURS or os.environ.get("NO_COLOR") or not stream.isatty():
        return status
    return click.style(word, fg=STATUS_COLOURS[word]) + status[len(word):]


def _say(line: str, err: bool = True) -> None:
    """One line for the user; a terminal that hung up (SIGHUP) or a closed pipe must not fail the run."""
    try:
        click.echo(line, err=err)
    except OSError:
        pass


def _load_prd(path: str, failure: ExitStatus):
    """The PRD, or every problem on stderr (one per line, with its JSON path) and exit."""
    from loopstream.work import prd as prd_mod

    try:
        return prd_mod.load(path)
    except prd_mod.PrdError as e:
        for problem in e.problems:
            click.echo(f"{e.path}: {problem}", err=True)
        raise click.exceptions.Exit(failure) from None


def _valid_run(name: str) -> bool:
    from loopstream.core.events import RUN_RE

    return bool(RUN_RE.match(name))


@cli.command()
@click.argument("prd_path", metavar="PRD", type=click.Path(dir_okay=False))
def validate(prd_path) -> None:
    """Check a PRD and name every problem with its JSON path."""
    prd = _load_prd(prd_path, ExitStatus.FAILURE)
    todo = sum(1 for s in prd.stories if not s.passes)
    click.echo(f"{prd_path}: ok — {len(prd.stories)} stories, {todo} to run")


# -- talking to a sidecar --------------------------------------------------------------

def _parse_items(items: tuple[str, ...], data_json: str | None) -> dict:
    """The event's data from --data and the items (loopstream.items), or a usage error."""
    from loopstream.core.items import ItemError, parse_items

    try:
        return parse_items(items, data_json)
    except ItemError as e:
        raise _UsageLine(f"{e.param}: {e}" if e.param else str(e)) from e


@cli.command()
@click.argument("event_type", metavar="TYPE")
@click.argument("items", nargs=-1, metavar="[KEY=TEXT | KEY:=JSON | KEY[]=TEXT]...")
@click.option("--data", "data_json", help="A JSON object of data fields (items are added to it).")
@click.option("--run", "run_id", envvar="LOOP_RUN", help="The run this event belongs to.")
@server_option
@token_option
def emit(event_type, items, data_json, run_id, server, token) -> None:
    """Send one event; waits and retries when rate-limited.

    Items as httpie writes them: KEY=TEXT a string, KEY:=JSON a JSON value,
    KEY[]=TEXT appends to a list (KEY[]:=JSON appends a JSON value).

    \b
      loop emit progress percent:=40 message="compiling"
      loop emit ac_completed story_id=US-1 ac_index:=0 --run build-7
      loop emit note tags[]=a tags[]=b        # data: {"tags": ["a", "b"]}
    """
    import json
    import time

    from loopstream.client import SidecarError, request_json

    body = {"type": event_type, "data": _parse_items(items, data_json)}
    if run_id:
        body["run"] = run_id
    _check_event(body)
    deadline = time.monotonic() + 60
    while True:
        try:
            r = request_json("POST", server.rstrip("/") + "/api/events", token, "ids", data=json.dumps(body),
                             headers={"Content-Type": "application/json"})
            break
        except SidecarError as e:
            if e.status == 429 and time.monotonic() < deadline:
                time.sleep(0.5)
                continue
            raise click.ClickException(str(e)) from e
    click.echo(str(r["ids"][0]) if isinstance(r["ids"], list) and r["ids"] else "")


def _check_event(body: dict) -> None:
    """What the sidecar would refuse, refused here first: one line with the JSON path, exit 2."""
    from loopstream.core.events import EventError, validate_one

    try:
        validate_one(body)
    except EventError as e:
        where = {"type": "TYPE", "run": "--run"}.get(e.field, e.field)
        raise _UsageLine(f"{where}: {e.message}") from e


@cli.command(name="shell-hooks")
@click.option("--emit", "which", flag_value="loop-emit", help="The path of loop-emit instead.")
@click.option("--library", "which", flag_value="loop-progress.sh", default=True, hidden=True)
def shell_hooks(which) -> None:
    """Print where the shell hooks are installed: loop-progress.sh (to source), or loop-emit.

    \b
      source "$(loop shell-hooks)"        # loop_task_start, loop_progress, ... in any bash script
      "$(loop shell-hooks --emit)" progress percent:=40
    """
    from loopstream.installed import hook_path

    path = hook_path(which)
    if path is None:
        raise click.ClickException(f"{which} is not installed beside this loop ({sys.executable}); "
                                   "reinstall the package (pip install loopstream)")
    click.echo(str(path))


@cli.group()
def hooks() -> None:
    """Watch every Claude Code session: loop's hooks in Claude Code's settings.

    \b
      loop hooks install                 # every session of this user reports to the sidecar
      loop hooks install --project       # this project's .claude/settings.json (--local: settings.local.json)
      loop hooks status                  # where loop is installed, and whether the sidecar answers
      loop hooks uninstall               # removes exactly what install added
    """


_project_option = click.option("--project", is_flag=False, flag_value=".", default=None, metavar="[DIR]",
                               help="A project's .claude/settings.json (DIR, or here) instead of the user's.")
_local_option = click.option("--local", is_flag=True,
                             help="The project's .claude/settings.local.json (not committed) instead.")


@hooks.command(name="install")
@_project_option
@_local_option
@server_option
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True), default=None, metavar="PATH",
              help="A file holding the sidecar's token (LOOP_TOKEN, when set, is written to one for you).")
@click.option("--prompts", is_flag=True, help="Record the text of prompts too (by default only their length).")
@click.option("--no-telemetry", is_flag=True,
              help="Do not point Claude Code's OpenTelemetry logs (cost, tokens) at the sidecar's /v1/logs.")
def hooks_install(project, local, server, token_file, prompts, no_telemetry) -> None:
    """Add loop's hooks to Claude Code's settings (~/.claude/settings.json, or $CLAUDE_CONFIG_DIR's).

    Keeps every other setting and hook; writes atomically; a second install changes nothing.
    Each hook runs loop-emit --hook: nothing on stdout, exit 0 always, milliseconds, queued while
    the sidecar is away.
    """
    import os
    from pathlib import Path

    from loopstream.cli import claude_settings as hi
    from loopstream.installed import hook_path

    emit = hook_path("loop-emit")
    if emit is None:
        raise click.ClickException(f"loop-emit is not installed beside this loop ({sys.executable}); "
                                   "reinstall the package (pip install loopstream)")
    try:
        where = hi.settings_path(project, local)
        token = Path(token_file).resolve() if token_file else None
        if token is None and os.environ.get("LOOP_TOKEN"):
            token = hi.write_token(os.environ["LOOP_TOKEN"])
        secret = token.read_text().strip() if token is not None and where.scope != "project" else None
        telemetry = None if no_telemetry else hi.telemetry_env(server, secret)
        changed, conflicts = hi.install(where, hi.hook_command(emit.resolve(), server.rstrip("/"), token, prompts),
                                        telemetry)
    except UnicodeDecodeError as e:
        raise _UsageLine(f"{token_file}: not a text file (a token file holds the token as text)") from e
    except (hi.SettingsError, OSError) as e:
        raise _UsageLine(str(e)) from e
    what = "installed in" if changed else "already installed, unchanged:"
    click.echo(f"loop's Claude Code hooks {what} {where.path} ({where.scope}; sidecar {server}; "
               f"prompts: {'text kept' if prompts else 'length only'})")
    if conflicts:
        click.echo(f"telemetry not wired: the settings' env already sets {', '.join(conflicts)}; "
                   f"cost and tokens need Claude Code's OpenTelemetry logs at {server}/v1/logs", err=True)
    elif token is not None and where.scope == "project" and not no_telemetry:
        click.echo("telemetry wired without the token (a project's settings are shared); "
                   "set OTEL_EXPORTER_OTLP_LOGS_HEADERS in --local settings", err=True)


@hooks.command(name="uninstall")
@_project_option
@_local_option
def hooks_uninstall(project, local) -> None:
    """Remove loop's hooks from Claude Code's settings (exactly what install added)."""
    from loopstream.cli import claude_settings as hi

    try:
        where = hi.settings_path(project, local)
        changed = hi.uninstall(where)
    except (hi.SettingsError, OSError) as e:
        raise _UsageLine(str(e)) from e
    click.echo(f"loop's Claude Code hooks {'removed from' if changed else 'were not in'} {where.path}")


@hooks.command(name="status")
@_project_option
@server_option
@token_option
def hooks_status(project, server, token) -> None:
    """Say where loop's hooks are installed (the user's settings, the project's) and whether the sidecar answers."""
    from loopstream.cli import claude_settings as hi

    try:
        places = [hi.settings_path(None, False), hi.settings_path(project or ".", False),
                  hi.settings_path(project or ".", True)]
    except hi.SettingsError as e:
        raise _UsageLine(str(e)) from e
    for where in places:
        try:
            settings, _ = hi.load(where.path)
        except hi.SettingsError as e:
            click.echo(f"{where.scope}: {e}")
            continue
        found = hi.installed_commands(settings)
        if found:
            command = next(iter(found.values()))
            click.echo(f"{where.scope}: installed in {where.path} ({len(found)} hook events; "
                       f"prompts: {'text kept' if '--prompts' in command else 'length only'})")
            click.echo(f"  command: {command}")
        else:
            click.echo(f"{where.scope}: not installed ({where.path})")
    click.echo(f"sidecar at {server}: {_sidecar_answer(server.rstrip('/'), token)}")


def _sidecar_answer(server: str, token: str | None) -> str:
    import requests

    try:
        r = requests.get(server + "/healthz", timeout=2)
    except requests.RequestException as e:
        return f"not answering ({type(e).__name__}); the hooks queue events until it does"
    if not r.ok:
        return f"answers {r.status_code}"
    try:
        version = r.json().get("version", "?")
    except (ValueError, AttributeError):
        return "answers, but not as a loop sidecar (is LOOP_SERVER right?)"
    return f"answers (loop {version})"


@cli.command()
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


def _control_command(action: str):
    @click.argument("run_id", metavar="RUN", envvar="LOOP_RUN")
    @click.option("--reason", default=None, help="Why; shown on the dashboard and in the transcript.")
    @server_option
    @token_option
    def command(run_id, reason, server, token) -> None:
        import json

        from loopstream.client import SidecarError, request_json

        try:
            r = request_json("POST", f"{server.rstrip('/')}/api/runs/{run_id}/{action}", token, "requested",
                             data=json.dumps({"reason": reason} if reason else {}),
                             headers={"Content-Type": "application/json"})
        except SidecarError as e:
            raise click.ClickException(str(e)) from e
        if r["requested"]:
            click.echo(f"{action} requested for {run_id}")
        else:
            click.echo(f"{action}: nothing to do for {run_id} (status {_clean(r.get('status'))}, or already requested)")

    command.__doc__ = {"stop": "Stop a run: its runner interrupts the running story and cancels the rest.",
                       "pause": "Pause a run: running stories finish, no new one starts.",
                       "resume": "Resume a paused run."}[action]
    return cli.command(name=action)(command)


for _action in ("stop", "pause", "resume"):
    _control_command(_action)


@cli.command()
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

    from loopstream.client import Outbox
    from loopstream.work import harness as orch
    from loopstream.work.adapt import Adapter, Lifecycle

    if run_id is not None and not _valid_run(run_id):
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
        click.echo(f"loop adapt: run {run_id} stopped: {_clean(adapter.stop_reason)}", err=True)
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


@cli.command()
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

    from loopstream.client import Follower, RunWatch, SidecarError, follow, poller

    if run_id and not _valid_run(run_id):
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
        _shown(live_view, watched.current, connection, consume)
    except SidecarError as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        stop.set()
        sys.exit(ExitStatus.INTERRUPTED)
    printer.at_end()
    sys.exit(watched.finished() or ExitStatus.OK)


def _known_runs(server: str, token: str | None) -> list[dict]:
    """Every run the sidecar has (live and history); a sidecar that does not answer is a ClickException."""
    from loopstream.client import SidecarError, request_json

    try:
        return request_json("GET", f"{server}/api/runs", token, "runs", timeout=3)["runs"]
    except SidecarError as e:
        raise click.ClickException(str(e)) from e


def _known_run(server: str, token: str | None, run_id: str) -> dict | None:
    """The named run as the sidecar has it (live or history), None when it has not started yet."""
    from loopstream.client import SidecarError, request_json

    try:
        return request_json("GET", f"{server}/api/runs/{run_id}", token, "run", timeout=3)
    except SidecarError as e:
        if e.status != 404:
            raise click.ClickException(str(e)) from e
    return None


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


# -- capturing anything: loop tail ------------------------------------------------------------

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
            _say(f"loop: {message}")

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
    from loopstream.view import clean

    if raw:
        sys.stdout.buffer.write(line)
    else:
        sys.stdout.buffer.write((clean(line.decode("utf-8", "replace").rstrip("\n")) + "\n").encode())
    sys.stdout.flush()


@cli.command()
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
    from loopstream.client import Outbox
    from loopstream.work import harness as orch
    from loopstream.work.capture import Tail, TailOptions

    run_id = _run_name(run_id, path)
    server = orch.sidecar_for_run(server.rstrip("/"), no_embed, _say).url
    _say(f"loop: run {run_id}" + (f" — dashboard: {server}/?run={run_id}" if server else ""))
    outbox = Outbox(server, token, on_status=_OneWarning(server).on_status)
    raw = not sys.stdout.isatty()
    follower = Tail(TailOptions(path=path, run_id=run_id, name=name or f"tail {path}", until=until,
                                timeout=timeout, from_start=from_start),
                    emit=outbox.put, echo=lambda line: _echo_line(line, raw),
                    notice=lambda message: click.echo(f"loop: {message}", err=True))
    with orch.supervised(follower, server, token, run_id, outbox, _say):
        result = follower.run()
    outcomes: dict[int, str] = {ExitStatus.OK: "matched", ExitStatus.FAILURE: f"failed: {_clean(result.reason)}",
                                ExitStatus.INTERRUPTED: f"stopped: {_clean(result.reason)}"}
    outcome = outcomes[result.code]
    click.echo(f"loop: run {run_id}: {result.lines} lines, {_coloured(outcome)}", err=True)
    sys.exit(result.code)


def _clean(text: object) -> str:
    """Text from the network (a stop reason), fit for the terminal: one line, no control characters."""
    from loopstream import view

    return view.field(text)


# -- capturing anything: loop exec ------------------------------------------------------------

@cli.command(name="exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
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
    from loopstream.client import Outbox
    from loopstream.work import harness as orch
    from loopstream.work.capture import Exec, ExecOptions
    from loopstream.work.stories import StoryLog, _file_name, story_log_dir

    run_id = _run_name(run_id, argv[0])
    sidecar = orch.sidecar_for_run(server.rstrip("/"), no_embed, _say)
    server = sidecar.url
    human = sys.stderr.isatty()      # loop's own lines only for a person: a pipeline's stderr stays the command's
    if human:
        _say(f"loop: run {run_id}" + (f" — dashboard: {server}/?run={run_id}" if server else ""))
    warning = _OneWarning(server)
    outbox = Outbox(server, token, on_status=warning.on_status, on_refused=warning.on_refused)
    live_view = stream and sys.stdout.isatty()
    print_line = (lambda line: _say(line, err=False)) if stream and not live_view else None
    feed = orch.EventFeed(outbox, print_line, fold=stream)
    log = StoryLog(story_log_dir() / _file_name(run_id) / "output.log", feed.log_warning(run_id, _say))
    job = Exec(ExecOptions(argv=list(argv), run_id=run_id, name=name, grace=grace, server=server),
               feed, log, passthrough={} if stream else None, notice=lambda message: _say(f"loop: {message}"))
    with orch.supervised(job, server, token, run_id, outbox, _say):
        result = _shown(live_view, lambda: feed.snapshot, lambda: feed.connection(sidecar), job.run)
    if human or stream:
        _say(f"loop: run {run_id}: exit {result.exit_code}" + (f", stopped: {_clean(result.stop_reason)}"
                                                               if result.stop_reason else "") + f"; log {log.path}")
        for line in orch.delivery_report(outbox.status, server):
            _say(line)
    else:
        warning.at_close(outbox.status)
    sys.exit(result.code)


def _show_envvars(group: click.Group) -> None:
    """Every option's --help names the environment variable behind it ([env var: LOOP_SERVER])."""
    for command in group.commands.values():
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                param.show_envvar = True


_show_envvars(cli)
_show_envvars(hooks)


def _usage_line(e: click.UsageError) -> str:
    """A usage mistake in one line: what is wrong, and where the help is."""
    command = e.ctx.command_path if e.ctx else "loop"
    return f"{command}: {e.format_message()} (see '{command} --help')"


def main() -> None:
    """The entry point: every mistake is one line on stderr and an exit code (ExitStatus), never a traceback."""
    try:
        code = cli.main(prog_name="loop", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:   # `loop`, `loop hooks`: the help, as it is
        click.echo(e.ctx.get_help() if e.ctx else "", err=True)
        sys.exit(ExitStatus.USAGE)
    except click.UsageError as e:
        _say(_usage_line(e))
        sys.exit(ExitStatus.USAGE)
    except click.ClickException as e:
        _say(f"loop: {e.format_message()}")
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, click.Abort):
        sys.exit(ExitStatus.INTERRUPTED)
    sys.exit(code or ExitStatus.OK)
