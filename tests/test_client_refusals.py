"""What the outbox makes of a sidecar's refusal: the numbers in a 429 are never trusted blindly."""
from __future__ import annotations

import json

import pytest
import requests

from loopstream.client.outbox import _refusal, _retry_after
from loopstream.client.pace import Pace


def answer(body, status: int = 429, headers: dict | None = None) -> requests.Response:
    r = requests.Response()
    r.status_code, r.reason = status, "Too Many Requests"
    r._content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r.headers.update(headers or {})
    return r


def test_a_429s_fields_set_the_pace_and_the_wait():
    body = {"error": "rate_limited", "message": "over 10 events/s", "rate": 10, "burst": 20, "retry_after": 0.35}
    pace = Pace()
    wait = _retry_after(answer(body, headers={"Retry-After": "1"}), body)
    pace.learn(body, wait, 5)
    assert wait == 0.35 and (pace.rate, pace.burst) == (10, 20)


def test_an_older_sidecars_message_still_sets_the_pace():
    body = {"error": "rate_limited", "message": "over 4 events/s (burst 8, --rate) for run:r; retry after 0.50s"}
    pace = Pace()
    wait = _retry_after(answer(body), body)
    pace.learn(body, wait, 5)
    assert wait == 0.5 and (pace.rate, pace.burst) == (4, 8)


@pytest.mark.parametrize("body", [
    {"rate": 10**400, "burst": 5, "retry_after": 10**400}, {"rate": "fast", "burst": True, "retry_after": "soon"},
    {"message": "over 1.2.3 events/s (burst 5; retry after 9.9.9s"}, [1], "text", b"not json"])
def test_absurd_429s_give_a_bounded_wait_and_pace_and_never_raise(body):
    r = answer(body, headers={"Retry-After": "inf"})
    fields = body if isinstance(body, dict) else {}
    wait = _retry_after(r, fields)
    pace = Pace()
    pace.learn(fields, wait, 3)
    assert 0.02 <= wait <= 60 and 0.1 <= pace.rate <= 1e6 and 1 <= pace.burst <= 10**6
    assert _refusal(r).startswith("429 ")
