"""`loop emit`: one event, from httpie-style items, checked here before the sidecar sees it."""
from __future__ import annotations

import click

from loopstream.cli.options import UsageLine, server_option, token_option


def _parse_items(items: tuple[str, ...], data_json: str | None) -> dict:
    """The event's data from --data and the items (loopstream.items), or a usage error."""
    from loopstream.core.items import ItemError, parse_items

    try:
        return parse_items(items, data_json)
    except ItemError as e:
        raise UsageLine(f"{e.param}: {e}" if e.param else str(e)) from e


@click.command()
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

    from loopstream.client.http import SidecarError, request_json

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
        raise UsageLine(f"{where}: {e.message}") from e
