"""What a connection may cost before it is a stream, and the JSON answers to what gunicorn refuses.

The sidecar's worker (ingest.py) holds each connection in a greenlet and a
slot of gunicorn's ``worker_connections``. A client that opens connections and
never finishes a request could fill every slot, and then nobody is served. So:

- ``Gate`` counts, per client address, the open connections that are not
  streams (a request unfinished, being answered, or a kept-alive connection
  idle between requests); past ``--max-connections-per-client`` a new one is
  answered ``429`` and closed at once, so one address cannot take the slots
  of all. Streams have their own cap (``--max-streams-per-client``) and stop
  counting here once the fan-out holds them.
  A ``--forwarded-allow-ips`` proxy's connections are not counted: they carry
  every user's requests, and no user is known before a head is read (the
  proxy caps each user's connections: nginx's ``limit_conn``).
- a request must send its whole head within ``--header-timeout`` seconds
  (nginx's ``client_header_timeout``): the worker bounds gunicorn's reading
  of a head by it, and the fast path's wait for a connection's first request.

gunicorn's own parser refuses malformed requests (a bad request line, a URI
or headers too long, an unknown ``Expect`` or ``Transfer-Encoding``) with an
HTML page. ``parser_error`` maps those refusals to the JSON every other error
of the sidecar is, and a client's mistake to a 4xx (gunicorn answers an
unknown transfer coding with 501). It leans on gunicorn's exception classes:
tests/test_connections.py holds the contract, one case per class.
"""
from __future__ import annotations

import json

from gunicorn.http import errors as gerr

# (status, reason, error code) per gunicorn parser error; the first class that matches wins
# (InvalidResponseHeader is an InvalidHeader, and the application's fault).
PARSER_ERRORS: list[tuple[str, int, str, str]] = [
    ("InvalidResponseHeader", 500, "Internal Server Error", "internal_error"),
    ("InvalidResponseHeaderName", 500, "Internal Server Error", "internal_error"),
    ("ConfigurationProblem", 500, "Internal Server Error", "internal_error"),
    ("LimitRequestLine", 414, "URI Too Long", "uri_too_long"),
    ("LimitRequestHeaders", 431, "Request Header Fields Too Large", "headers_too_large"),
    ("ExpectationFailed", 417, "Expectation Failed", "expectation_failed"),
    ("ForbiddenProxyRequest", 403, "Forbidden", "forbidden"),
    ("ParseException", 400, "Bad Request", "bad_request"),   # every other malformed request
]
HINTS = {
    "uri_too_long": "the request line is too long; send long data in a POST body",
    "headers_too_large": "a header or the header block is too large",
    "expectation_failed": "only 'Expect: 100-continue' is understood; send the request without Expect",
    "bad_request": "the request could not be parsed",
}


def parser_error(exc: BaseException) -> tuple[int, str, str, str]:
    """(status, reason, error code, message) for what gunicorn's request handling raised."""
    for name, status, reason, code in PARSER_ERRORS:
        cls = getattr(gerr, name, None)
        if cls is not None and isinstance(exc, cls):
            detail = str(exc)[:200]
            hint = HINTS.get(code)
            message = f"{hint}: {detail}" if hint else "the server failed to answer the request"
            return status, reason, code, message
    return 500, "Internal Server Error", "internal_error", "the server failed to answer the request"


def json_error(status: int, reason: str, code: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 error response with a JSON body, closing the connection."""
    body = json.dumps({"error": code, "message": message}).encode()
    head = [f"HTTP/1.1 {status} {reason}", "Connection: close", "Content-Type: application/json",
            f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def too_many_connections(cap: int) -> bytes:
    return json_error(429, "Too Many Requests", "too_many_connections",
                      f"at most {cap} unfinished or idle connections per client (--max-connections-per-client); "
                      "close some, or reuse one", {"Retry-After": "1"})


class Gate:
    """Open connections per client address that are not (yet) streams, capped."""

    def __init__(self, cap: int):
        self.cap = cap
        self.open: dict[str, int] = {}

    def enter(self, client: str) -> bool:
        """Count a new connection from ``client``; False (not counted) when it has ``cap`` already."""
        n = self.open.get(client, 0)
        if n >= self.cap:
            return False
        self.open[client] = n + 1
        return True

    def leave(self, client: str) -> None:
        n = self.open.get(client, 1) - 1
        if n > 0:
            self.open[client] = n
        else:
            self.open.pop(client, None)
