"""The ``loop`` command line: Click commands only (parse -> call -> print), a module per concern.

This module holds the group, ``main()`` (every mistake one line and an exit code) and the list of
commands. The commands:

- ``serve``: `loop serve`, its options checked into the sidecar's Config.
- ``prd``: `loop run` and `loop validate`: a PRD's stories.
- ``capture``: `loop tail` and `loop exec`: a log file or a command, streamed as a run.
- ``adapt``: `loop adapt`: an agent's JSON lines as events and a transcript.
- ``emit``: `loop emit`: one event.
- ``watch``: the read side: `loop watch`, `loop runs`.
- ``control``: `loop stop`, `loop pause`, `loop resume`.
- ``hooks``: `loop hooks install|uninstall|status` (with ``claude_settings``), `loop shell-hooks`.

Shared by them: ``options`` (--server, --token, a run's name, the one-line usage error) and
``terminal`` (loop's own lines, colours, the live view). Client libraries (requests, rich) are imported
inside the commands that use them, so ``loop serve`` starts clean under gevent's monkey-patching.
"""
from __future__ import annotations

import sys

import click

from loopstream import __version__
from loopstream.cli import adapt, capture, control, emit, hooks, prd, serve, watch
from loopstream.cli.terminal import say
from loopstream.core.exitstatus import ExitStatus


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="loop")
def cli() -> None:
    """loop: live progress streaming for task loops."""


for _command in (serve.serve, prd.run, prd.validate, capture.tail, capture.exec_, adapt.adapt, emit.emit,
                 watch.watch, watch.runs, *control.COMMANDS, hooks.hooks, hooks.shell_hooks):
    cli.add_command(_command)


def _show_envvars(group: click.Group) -> None:
    """Every option's --help names the environment variable behind it ([env var: LOOP_SERVER])."""
    for command in group.commands.values():
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                param.show_envvar = True


_show_envvars(cli)
_show_envvars(hooks.hooks)


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
        say(_usage_line(e))
        sys.exit(ExitStatus.USAGE)
    except click.ClickException as e:
        say(f"loop: {e.format_message()}")
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, click.Abort):
        sys.exit(ExitStatus.INTERRUPTED)
    sys.exit(code or ExitStatus.OK)
