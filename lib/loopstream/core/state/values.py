"""How the reducers read an event's values: numbers they trust, and the text of any value.

Stored data is not trusted: a number is one only when finite and within ``MAX_NUMBER`` (never a
bool). One text rule holds in both reducers (dashboard/state.js: ``num``, ``textJson``,
``asText``): text is cut by code points, and a value that is not a string is shown as compact JSON
(sorted keys, numbers written as JavaScript writes them: ``2.0`` is ``2``). ``as_text`` is also
what the terminal view makes of a value (view.py).
"""
from __future__ import annotations

import math
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any

MAX_NUMBER = 10**15     # a number beyond this (or NaN, Infinity) is not a number to the reducer
AGENT_TEXT = 300        # characters kept of an agent's tool name, summary, model
AGENT_MAX = 1e12        # an agent count or cost beyond this is garbage, not a number


def num(value: Any) -> float | None:
    """A finite number within ±MAX_NUMBER (never a bool), else None: stored data is not trusted."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if abs(value) <= MAX_NUMBER else None


def finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def amount(value: Any) -> float | None:
    """A count or a cost from an event: a finite number in [0, AGENT_MAX], else unknown."""
    n = num(value)
    return n if n is not None and 0 <= n <= AGENT_MAX else None


def short(value: Any) -> str | None:
    """An agent's tool name, summary or model: a string, cut to AGENT_TEXT code points."""
    return value[:AGENT_TEXT] if isinstance(value, str) else None


def js_number(x: int | float) -> str:
    """A number as JavaScript's ``String(x)`` and ``JSON.stringify`` write it (``2.0`` -> ``2``,
    ``1e-7`` -> ``1e-7``, ``1e21`` -> ``1e+21``); NaN and Infinity as ``null``, like JSON.stringify."""
    if isinstance(x, int) and abs(x) < 10**21:
        return str(x)
    if not math.isfinite(x):
        return "null"
    if x == 0:
        return "0"
    shortest = repr(float(x))   # the shortest round-trip digits; positional from 1e-4 to 1e16, as in JS
    if "e" not in shortest:
        return shortest[:-2] if shortest.endswith(".0") else shortest
    d = Decimal(repr(abs(float(x)))).normalize().as_tuple()   # the shortest round-trip digits, as JS
    digits = "".join(map(str, d.digits))
    k, n = len(digits), int(d.exponent) + len(digits)        # x = 0.DIGITS × 10^n (finite: an int exponent)
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * -n + digits
    else:
        body = (digits[0] + ("." + digits[1:] if k > 1 else "")) + f"e{'+' if n > 0 else '-'}{abs(n - 1)}"
    return ("-" if x < 0 else "") + body


def text_json(value: Any) -> str:
    """Compact JSON with keys sorted by UTF-16 units and numbers written as in JS: the text both
    reducers make of a value that is not a string (JS: ``textJson`` in dashboard/state.js)."""
    if isinstance(value, str):
        return encode_basestring(value)
    if value is None or value is True or value is False:
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return js_number(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(text_json(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: str(k).encode("utf-16-be"))
        return "{" + ",".join(f"{encode_basestring(str(k))}:{text_json(value[k])}" for k in keys) + "}"
    return encode_basestring(str(value))


def opt_text(value: Any) -> str | None:
    return None if value is None else as_text(value)


def as_text(value: Any) -> str:
    """Text of any event value: a string as it is, None as nothing, anything else as text_json."""
    if isinstance(value, str):
        return value
    return "" if value is None else text_json(value)
