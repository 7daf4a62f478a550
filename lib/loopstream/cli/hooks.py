"""Hooks into other tools: `loop hooks install|uninstall|status` (Claude Code's settings, via
cli.claude_settings) and `loop shell-hooks` (where the bash hooks are installed).
"""
from __future__ import annotations

import sys

import click

from loopstream.cli.options import UsageLine, server_option, token_option


@click.command(name="shell-hooks")
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


@click.group()
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
        raise UsageLine(f"{token_file}: not a text file (a token file holds the token as text)") from e
    except (hi.SettingsError, OSError) as e:
        raise UsageLine(str(e)) from e
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
        raise UsageLine(str(e)) from e
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
        raise UsageLine(str(e)) from e
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
