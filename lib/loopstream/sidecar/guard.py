"""Who may talk to the sidecar: Host, Origin and Content-Type checks (pure: no Flask).

The sidecar listens on loopback by default, but a web page in the user's
browser can still reach it: by DNS rebinding (a name of the attacker's that
resolves to 127.0.0.1, so the browser sends ``Host: evil.example``) or by a
cross-origin "simple" request (a form POST with ``text/plain``, sent without a
CORS preflight). So, as Jupyter, webpack-dev-server and Vite do:

- the ``Host`` header must be an IP address (rebinding needs a name the
  attacker controls), a loopback name, the bind address, or a name given with
  ``--allowed-host`` (``*`` allows any, for a proxy that checks it);
- a request carrying an ``Origin`` must come from the server's own origin or
  a ``--cors`` one (static dashboard files excepted);
- a POST body must be ``application/json``, which a page on another origin
  cannot send without a preflight that the sidecar refuses;
- with ``--token``, every request but /healthz and the static files carries it, or the
  session cookie the dashboard got for it (``POST /api/session`` with the bearer token): an
  ``HttpOnly; SameSite=Strict`` cookie, so the page never puts the token in a URL (where proxies
  and access logs keep it).

routes/middleware.py applies these checks to every request.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from urllib.parse import urlsplit

LOOPBACK_NAMES = {"localhost", "localhost.", "127.0.0.1", "::1"}


def host_name(host_header: str) -> str:
    """``"Example.com:8765"`` -> ``"example.com"``; ``"[::1]:80"`` -> ``"::1"``; "" when unreadable."""
    value = host_header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else ""
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    elif ":" in value:   # a bare IPv6 address is not a valid Host header
        return ""
    return value


def is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def is_loopback_name(name: str) -> bool:
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostPolicy:
    """The Host names and Origins one sidecar accepts."""

    def __init__(self, bind: str = "127.0.0.1", allowed: list[str] | tuple[str, ...] = (),
                 cors: list[str] | tuple[str, ...] = ()):
        names = {host_name(a) if a != "*" else "*" for a in allowed}
        bind_name = bind.strip("[]").lower()
        if bind_name not in ("0.0.0.0", "::", ""):
            names.add(bind_name)
        self.any_host = "*" in names
        self.names = names - {"*"}
        self.cors = set(cors)

    def host_ok(self, host_header: str | None) -> bool:
        """A request without a Host header (HTTP/1.0 tools) is no browser: let it through."""
        if host_header is None:
            return True
        if self.any_host:
            return True
        name = host_name(host_header)
        return bool(name) and (is_ip_address(name) or is_loopback_name(name) or name in self.names)

    def origin_ok(self, origin: str | None, host_header: str | None) -> bool:
        """No Origin (curl, the CLI, same-origin GETs), the page's own origin, or a --cors one."""
        if origin is None or origin in self.cors:
            return True
        if origin == "null" or not host_header:
            return False
        try:
            netloc = urlsplit(origin).netloc.lower()
        except ValueError:
            return False
        return netloc == host_header.strip().lower()


def is_json_content_type(value: str | None) -> bool:
    """``application/json``, with parameters (``; charset=utf-8``) or without."""
    if not value:
        return False
    return value.split(";", 1)[0].strip().lower() == "application/json"


def is_otlp_content_type(path: str, value: str | None) -> bool:
    """``application/x-protobuf`` on the OTLP paths (/v1/logs, /v1/metrics): like JSON, a type a
    cross-site form cannot send without a preflight."""
    return path.startswith("/v1/") and (value or "").split(";", 1)[0].strip().lower() == "application/x-protobuf"


def token_ok(token: str | None, authorization: str, query_token: str | None = None) -> bool:
    """No token configured, or ``Authorization: Bearer TOKEN`` (else ``?token=``, which the
    caller passes on GETs only: an EventSource cannot send headers) matches it, in constant time."""
    if not token:
        return True
    given = authorization[7:] if authorization.startswith("Bearer ") else None
    if given is None:
        given = query_token
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


SESSION_TTL = 12 * 3600     # seconds a dashboard session cookie is good for


def _mac(token: str, message: str) -> str:
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


def session_cookie_name(token: str) -> str:
    """One name per token: two sidecars on one host (cookies ignore ports) keep their own sessions."""
    return "loop_session_" + _mac(token, "cookie-name")[:12]


def make_session(token: str, now: float, ttl: float = SESSION_TTL) -> str:
    """A session cookie's value: its expiry and a MAC of it under the token. Stateless, so every
    worker and host that knows the token accepts it; changing the token ends every session."""
    expires = int(now + ttl)
    return f"{expires}.{_mac(token, f'session:{expires}')}"


def session_ok(token: str | None, value: str | None, now: float) -> bool:
    if not token or not value:
        return False
    expires, _, mac = value.partition(".")
    if not re.fullmatch(r"[0-9]{1,12}", expires) or int(expires) < now:   # not "²": int() refuses it
        return False
    return hmac.compare_digest(mac.encode(), _mac(token, f"session:{expires}").encode())
