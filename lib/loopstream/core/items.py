"""The item grammar of `loop emit` and bin/loop-emit: an event's data from ``KEY=...`` words (pure).

httpie's syntax, as bin/loop-emit implements it (tests/fixtures/tables/emit_items.json holds
the cases both must agree on):

- ``KEY=TEXT``     a string;
- ``KEY:=JSON``    a JSON value (``percent:=40``, ``ok:=true``, ``list:=[1,2]``);
- ``KEY[]=TEXT``   appends a string to the list KEY (``KEY[]:=JSON`` appends a JSON value).

Whichever separator comes first decides (``a=b:=c`` is the text ``b:=c``). A key given twice
keeps its last value; a list named by ``KEY[]`` replaces a plain ``KEY`` whatever their order
(bin/loop-emit writes its lists last).
"""
from __future__ import annotations

import json
from typing import Any

LIST_SUFFIX = "[]"


class ItemError(ValueError):
    """An item (or --data) is malformed; ``param`` is the option it came from, if any."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def split_item(item: str) -> tuple[str, Any]:
    """``(key, value)`` of one item, the key still carrying a ``[]`` suffix when it had one."""
    if ":=" in item and item.index(":=") < item.index("="):
        key, raw = item.split(":=", 1)
        try:
            return key, json.loads(raw)
        except json.JSONDecodeError as e:
            raise ItemError(f"data.{key.removesuffix(LIST_SUFFIX)}: {raw!r} after := is not JSON ({e})") from e
    if "=" in item:
        key, text = item.split("=", 1)
        return key, text
    raise ItemError(f"{item!r}: use key=text, key:=JSON or key[]=text")


def parse_data(data_json: str | None) -> dict:
    """The --data object (empty without one)."""
    if not data_json:
        return {}
    try:
        parsed = json.loads(data_json)
    except json.JSONDecodeError as e:
        raise ItemError(f"not JSON: {e}", "--data") from e
    if not isinstance(parsed, dict):
        raise ItemError("must be a JSON object", "--data")
    return parsed


def parse_items(items: tuple[str, ...] | list[str], data_json: str | None = None) -> dict:
    """An event's data: --data's object, then every item in order, then the ``KEY[]`` lists."""
    data = parse_data(data_json)
    lists: dict[str, list] = {}
    for item in items:
        key, value = split_item(item)
        is_list = key.endswith(LIST_SUFFIX)
        if is_list:
            key = key[: -len(LIST_SUFFIX)]
        if not key:
            raise ItemError(f"{item!r}: the key is empty")
        if is_list:
            lists.setdefault(key, []).append(value)
        else:
            data[key] = value
    data.update(lists)
    return data
