"""The ``loop`` command line: Click commands only (parse -> call -> print).

Client libraries (requests, rich) are imported inside the commands that use
them, so ``loop serve`` starts clean under gevent's monkey-patching.
"""
from __future__ import annotations

import enum
import sys

import click

from . import __version__


class ExitStatus(enum.IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2
    INTERRUPTED = 130


DEFAULT_SERVER = "http://127.0.0.1:8765"

server_option = click.option("--server", envvar="LOOP_SERVER", default=DEFAULT_SERVER, show_default=True,
                             help="The sidecar's URL.")
token_option = click.option("--token", envvar="LOOP_TOKEN", default=None,
                            help="Bearer token, when the sidecar was started with one.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="loop")
def cli() -> None:
    """loop: live progress streaming for task loops."""


@cli.command()
@click.option("--host", envvar="LOOP_HOST", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --token (or --insecure).")
@click.option("--port", envvar="LOOP_PORT", default=8765, show_default=True, type=click.IntRange(0, 65535))
@click.option("--buffer", default=100, show_default=True, type=click.IntRange(1, 1_000_000),
              help="Events kept in memory for resume and late joiners.")
@click.option("--rate", default=10.0, show_default=True, type=click.FloatRange(0),
              help="Events per second per emitter (sustained); 0 turns the limit off.")
@click.option("--burst", default=20, show_default=True, type=click.IntRange(1), help="Token bucket size.")
@click.option("--heartbeat", default=15.0, show_default=True, type=click.FloatRange(0.05),
              help="Seconds between heartbeat events on an idle stream.")
@click.option("--db", envvar="LOOP_DB", default=None, type=click.Path(dir_okay=False),
              help="History file (TinyDB) [default: $XDG_DATA_HOME/loop/history.json].")
@click.option("--no-history", is_flag=True, help="Keep nothing on disk.")
@token_option
@click.option("--cors", "cors", envvar="LOOP_CORS", multiple=True,
              help="An origin allowed to call the API from a browser (repeatable).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback bind without a token.")
@click.option("--workers", default=1, show_default=True, type=int,
              help="gunicorn workers; the memory backend allows exactly 1.")
@click.option("--max-streams", default=20_000, show_default=True, type=click.IntRange(1))
@click.option("--max-streams-per-client", default=32, show_default=True, type=click.IntRange(1))
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--access-log", is_flag=True, help="Log every request to stderr.")
def serve(host, port, buffer, rate, burst, heartbeat, db, no_history, token, cors, insecure, workers,
          max_streams, max_streams_per_client, log_level, access_log) -> None:
    """Run the sidecar: gunicorn with one gevent worker.

    Shell hooks and `loop run` POST events to it; browsers and `loop watch`
    stream them from /stream/progress; the dashboard is at /.
    """
    from .history import default_db_path
    from .server import Config, is_loopback
    from .serving import Sidecar, WorkerCountError

    if not is_loopback(host) and not token and not insecure:
        raise click.ClickException(
            f"refusing to bind {host} without a token: anyone who can reach it could post events and "
            "stop runs. Pass --token (or LOOP_TOKEN), or --insecure if the network is trusted.")
    cors_origins = [o for value in cors for o in value.split(",") if o]
    config = Config(buffer=buffer, rate=rate, burst=burst, heartbeat=heartbeat, token=token or None,
                    db=None if no_history else str(db or default_db_path()), cors=cors_origins,
                    max_streams=max_streams, max_streams_per_client=max_streams_per_client)
    from .history import History

    if config.db:
        try:
            History(config.db).check()
        except (ValueError, OSError) as e:
            raise click.ClickException(str(e)) from e
    try:
        app = Sidecar(config, host, port, workers=workers, log_level=log_level, access_log=access_log)
    except WorkerCountError as e:
        raise click.UsageError(str(e)) from e
    click.echo(f"loop sidecar on http://{host}:{port}/  (history: {config.db or 'off'})", err=True)
    app.run()


def main() -> None:
    try:
        cli(prog_name="loop")
    except KeyboardInterrupt:
        sys.exit(ExitStatus.INTERRUPTED)
