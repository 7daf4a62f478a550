"""`loop serve`: its options become the sidecar's Config, checked (token, proxies, notify, the port)
before gunicorn starts.

Nothing heavier than Click and the sidecar's config is imported at the top (requests not at all before
the port is found taken), so the sidecar starts clean under gevent's monkey-patching.
"""
from __future__ import annotations

import click

from loopstream.cli.options import UsageLine
from loopstream.client.defaults import DEFAULT_PORT
from loopstream.client.ports import bind_error
from loopstream.sidecar.config import Config

SIDECAR = Config()   # the sidecar's defaults, read from Config's fields (loop serve shows them)


@click.command()
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
@click.option("--access-log", is_flag=True,
              help="Log every request to stderr (gunicorn then serves every request: no fast path).")
@click.option("--no-fast-path", is_flag=True,
              help="Serve event POSTs through gunicorn and Flask too, not the worker's fast path.")
@click.option("--notify", "notify_url", envvar="LOOP_NOTIFY", default=None, metavar="URL",
              help="POST one message per finished run to this webhook (or ntfy topic URL).")
@click.option("--notify-format", envvar="LOOP_NOTIFY_FORMAT", default=SIDECAR.notify_format, show_default=True,
              type=click.Choice(["json", "ntfy"]), help="json: a JSON message; ntfy: ntfy's publish format.")
@click.option("--notify-min-duration", envvar="LOOP_NOTIFY_MIN_DURATION", default=SIDECAR.notify_min_duration,
              show_default=True, type=click.FloatRange(0), metavar="S",
              help="Do not notify about runs shorter than S seconds.")
@click.option("--otlp-endpoint", default=None, metavar="URL",
              help="Export every run as an OpenTelemetry trace to this OTLP/HTTP collector (its base URL: "
                   "/v1/traces is added) [default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
                   "OTEL_EXPORTER_OTLP_ENDPOINT; headers from OTEL_EXPORTER_OTLP_HEADERS]. Needs loopstream[otel].")
@click.pass_context
def serve(ctx, host, port, buffer, rate, burst, heartbeat, db, no_history, backend, token, cors, insecure,
          workers, max_streams, max_streams_per_client, log_level, access_log, no_fast_path,
          notify_url, notify_format, notify_min_duration, fsync, otlp_endpoint, **limits) -> None:
    """Run the sidecar: gunicorn with gevent workers (one, or several on Redis).

    Shell hooks and `loop run` POST events to it; browsers and `loop watch`
    stream them from /stream/progress; the dashboard is at /.
    """
    from loopstream.sidecar.config import Config, backend_url, check_history, default_db_path, is_loopback
    from loopstream.sidecar.launch import Sidecar, WorkerCountError

    token = _token(ctx, token, limits.pop("token_file"))
    if not is_loopback(host) and not token and not insecure:
        raise UsageLine(
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
                    backend=redis_url, fsync=fsync, fast_path=not (no_fast_path or access_log))
    _configure_notify(config, notify_url, notify_format, notify_min_duration, host, port)
    _configure_traces(config, otlp_endpoint)
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
    if config.otlp_endpoint:
        where += f", traces to {config.otlp_endpoint}"
    click.echo(f"loop sidecar on http://{host}:{port}/  ({where})", err=True)
    app.run()


def _check_port(host: str, port: int) -> None:
    """Refuse at once, in one line, a port that is taken (and say when a loop sidecar is what holds it),
    rather than gunicorn's retries and eleven lines five seconds later."""
    import errno

    problem = bind_error(host, port)
    if problem is None:
        return
    from loopstream.client.http import healthy  # only now: requests must not be imported before the workers patch

    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    if problem.errno == errno.EADDRINUSE and healthy(url, timeout=1):
        raise UsageLine(f"a loop sidecar already answers at {url}/ — use it (LOOP_SERVER={url}), "
                        "or pick another --port")
    if problem.errno == errno.EADDRINUSE:
        raise UsageLine(f"port {port} on {host} is in use by another program; pick another --port")
    raise UsageLine(f"cannot listen on {host}:{port}: {problem.strerror or problem}; "
                    "pick another --host or --port")


def _token(ctx, token: str | None, token_file: str | None) -> str | None:
    """The token from LOOP_TOKEN, --token-file or --token; a token typed on the command line
    works, with a warning: every local user sees it in ps (the master's and each worker's)."""
    if token_file:
        if token and ctx.get_parameter_source("token") == click.core.ParameterSource.COMMANDLINE:
            raise UsageLine("--token and --token-file: give the token one way")
        try:
            with open(token_file, encoding="utf-8") as f:
                token = f.readline().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageLine(f"--token-file {token_file}: cannot read it ({getattr(e, 'strerror', None) or e})") from e
        if not token:
            raise UsageLine(f"--token-file {token_file}: the file's first line is empty")
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
        raise UsageLine(str(e)) from e
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


def _configure_traces(config, option: str | None) -> None:
    """--otlp-endpoint or the OTEL_EXPORTER_OTLP_* variables: checked before the workers fork. Without the
    otel extra the option is refused; a variable set for other programs only gets a warning."""
    from loopstream.sidecar.config import otlp_protocol_warning, otlp_traces_url
    from loopstream.sidecar.otlp.traces_out import sdk_installed

    try:
        url, source = otlp_traces_url(option)
    except ValueError as e:
        raise UsageLine(str(e)) from e
    if url is None:
        return
    if not sdk_installed():
        message = f"{source} needs the OpenTelemetry SDK and its OTLP exporter: pip install 'loopstream[otel]'"
        if source == "--otlp-endpoint":
            raise UsageLine(message)
        click.echo(f"loop: {message}; traces are not exported", err=True)
        return
    config.otlp_endpoint = url
    warning = otlp_protocol_warning()
    if warning:
        click.echo(warning, err=True)
