"""Requests to a sidecar: errors a person can act on (SidecarError), the JSON answers, and the
/api/runs calls every command shares.

``requests`` is imported here: the CLI imports this module only inside the commands that use it.
"""
from __future__ import annotations

import json

import requests

from loopstream.core.formats.common import one_line


class SidecarError(Exception):
    """The sidecar answered with an error (``status`` is its HTTP status), or could not be reached
    (``status`` is None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def auth_headers(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def describe(e: Exception, method: str, url: str) -> str:
    if isinstance(e, requests.ConnectionError):
        return f"cannot reach the sidecar at {url} ({method}); is `loop serve` running? (set LOOP_SERVER)"
    if isinstance(e, requests.Timeout):
        return f"the sidecar at {url} did not answer in time ({method})"
    return f"{type(e).__name__} while doing a {method} request to {url}: {e}"


def request(method: str, url: str, token: str | None = None, timeout: float = 5.0, **kw):
    """One request; errors become SidecarError with a message a person can act on."""
    try:
        r = requests.request(method, url, headers={**auth_headers(token), **kw.pop("headers", {})},
                             timeout=timeout, **kw)
    except requests.RequestException as e:
        raise SidecarError(describe(e, method, url)) from e
    if r.status_code >= 400:
        try:
            body = r.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and (body.get("message") or body.get("error")):
            message = str(body.get("message") or body.get("error"))
            if body.get("field"):
                message = f"{body['field']}: {message}"
        else:      # not loop's JSON (another server, a proxy's page): one clean line of it
            message = f"{r.reason or 'error'} (not a loop sidecar's answer: {r.text[:80]!r})"
        # a 404 that is not loop's own says nothing about the run: no status a caller would read as "not yet"
        status = None if r.status_code == 404 and not isinstance(body, dict) else r.status_code
        raise SidecarError(one_line(f"{r.status_code} from {url}: {message}", 300), status)
    return r


def request_json(method: str, url: str, token: str | None = None, *keys: str, timeout: float = 5.0,
                 **kw) -> dict:
    """``request``'s answer as a JSON object holding ``keys``; anything else (another server answering
    at that address) is a SidecarError that says so, never a traceback."""
    r = request(method, url, token, timeout=timeout, **kw)
    try:
        body = r.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or any(k not in body for k in keys):
        raise SidecarError(f"{url} did not answer as a loop sidecar (is LOOP_SERVER right?)", r.status_code)
    return body


def healthy(server: str, timeout: float = 0.5) -> bool:
    try:
        return requests.get(server.rstrip("/") + "/healthz", timeout=timeout).ok
    except requests.RequestException:
        return False


# -- the runs: /api/runs -------------------------------------------------------------------------------

def list_runs(server: str, token: str | None = None, timeout: float = 3.0) -> list[dict]:
    """Every run the sidecar has, live ones and history (``GET /api/runs``)."""
    return request_json("GET", f"{server.rstrip('/')}/api/runs", token, "runs", timeout=timeout)["runs"]


def get_run(server: str, token: str | None, run_id: str, timeout: float = 3.0) -> dict | None:
    """One run's full snapshot (``GET /api/runs/RUN``), None when the sidecar has no such run (yet)."""
    try:
        return request_json("GET", f"{server.rstrip('/')}/api/runs/{run_id}", token, "run", timeout=timeout)
    except SidecarError as e:
        if e.status == 404:
            return None
        raise


def request_control(server: str, token: str | None, run_id: str, action: str, reason: str | None = None) -> dict:
    """Ask for a run's ``stop``, ``pause`` or ``resume`` (``POST /api/runs/RUN/ACTION``); the answer's
    ``requested`` is false when it was requested already or does not apply."""
    return request_json("POST", f"{server.rstrip('/')}/api/runs/{run_id}/{action}", token, "requested",
                        data=json.dumps({"reason": reason} if reason else {}),
                        headers={"Content-Type": "application/json"})
