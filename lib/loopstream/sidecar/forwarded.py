"""The client address of a request that came through a trusted proxy (pure: no Flask, no sockets).

Behind nginx every connection comes from nginx, so every per-client limit (the
rate budget, the stream cap, the live-run cap), the logs and /metrics would see
one client. With ``--forwarded-allow-ips`` (gunicorn's name for it) the
sidecar believes the proxy's headers, and only a trusted proxy's:

- ``X-Forwarded-For: client, proxy1, proxy2``: read from the right, the first
  address that is not a trusted proxy is the client (the left ones are what
  the client itself wrote, and anyone can write them); all trusted: the
  left-most;
- else ``X-Real-IP: client`` (nginx's ``$remote_addr``);
- else the peer's own address.

A request whose peer is not trusted keeps its peer's address, whatever it
sends. A trusted proxy's header that does not parse (not a list of IP
addresses) is not guessed at: the peer's address is used and the request is
counted (``loop_forwarded_malformed_total``).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_HOPS = 32     # a longer X-Forwarded-For is malformed: no proxy chain is that long


class TrustError(ValueError):
    """A ``--forwarded-allow-ips`` entry that is not an address, a network or ``*``."""


@dataclass(frozen=True)
class Trusted:
    """The proxies whose forwarded headers are believed: networks, or any peer (``*``)."""

    networks: tuple[Network, ...] = ()
    anyone: bool = False
    spec: list[str] = field(default_factory=list, compare=False)

    @classmethod
    def parse(cls, values: list[str] | tuple[str, ...] | str | None) -> Trusted:
        """``"127.0.0.1,10.0.0.0/8"`` (or a list of such) -> Trusted; raises TrustError naming the bad entry."""
        if isinstance(values, str):
            values = [values]
        entries = [e.strip() for v in values or () for e in v.split(",") if e.strip()]
        networks: list[Network] = []
        for entry in entries:
            if entry == "*":
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError as e:
                raise TrustError(f"--forwarded-allow-ips: {entry[:80]!r} is not an IP address or network "
                                 "(give addresses or CIDR networks, comma-separated, e.g. 127.0.0.1,10.0.0.0/8)") from e
        return cls(tuple(networks), "*" in entries, entries)

    def __bool__(self) -> bool:
        return self.anyone or bool(self.networks)

    def trusts(self, addr: str) -> bool:
        if self.anyone:
            return True
        ip = as_ip(addr)
        return ip is not None and any(ip in net for net in self.networks)

    def client(self, peer: str, forwarded_for: str | None, real_ip: str | None) -> tuple[str, bool]:
        """(the client's address, whether a header was malformed) for a request from ``peer``."""
        if not self or not self.trusts(peer):
            return peer, False
        if forwarded_for is not None:
            return self.from_forwarded_for(peer, forwarded_for)
        if real_ip is not None:
            ip = as_ip(real_ip.strip())
            return (str(ip), False) if ip is not None else (peer, True)
        return peer, False

    def from_forwarded_for(self, peer: str, header: str) -> tuple[str, bool]:
        hops = [h.strip() for h in header.split(",")]
        if len(hops) > MAX_HOPS:
            return peer, True
        ips = [as_ip(h) for h in hops]
        if any(ip is None for ip in ips):
            return peer, True
        for ip in reversed(ips):
            if not self.trusts(str(ip)):
                return str(ip), False
        return str(ips[0]), False


def as_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as a proxy writes it (``10.0.0.1``, ``2001:db8::1``, ``[2001:db8::1]``); None otherwise."""
    if not text or len(text) > 64:
        return None
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip
