"""Which webhook URLs may be called: http(s) only, and only public addresses unless allowlisted."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]
"""Answers the IP addresses of a host name (and port)."""


class AddressNotAllowed(Exception):
    """The URL or the address it resolves to must not be called."""


def parse_allowlist(entries: Sequence[str]) -> list[IpNetwork]:
    """Parse allowlisted networks such as `127.0.0.1/32`."""
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries if entry.strip()]


def check_url_shape(url: str) -> tuple[str, str, int]:
    """Return scheme, host and port of a URL that may be a webhook, or raise AddressNotAllowed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise AddressNotAllowed(f"not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise AddressNotAllowed("only http and https URLs are allowed")
    if not parts.hostname:
        raise AddressNotAllowed("the URL has no host")
    if parts.username or parts.password:
        raise AddressNotAllowed("credentials in the URL are not allowed")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def check_address(address: str, *, allowlist: Sequence[IpNetwork]) -> None:
    """Raise AddressNotAllowed unless an IP address is public or allowlisted."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in allowlist):
        return
    if not ip.is_global or ip.is_multicast:
        raise AddressNotAllowed(f"the address {ip} is not public")


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve a host name with the operating system's resolver."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)]


def resolve_allowed(
    url: str, *, allowlist: Sequence[IpNetwork], resolve: Resolver = system_resolver
) -> list[str]:
    """Resolve a webhook URL's host; raise AddressNotAllowed if any address it has is not allowed."""
    _, host, port = check_url_shape(url)
    try:
        addresses = sorted(set(resolve(host, port)))
    except OSError as exc:
        raise AddressNotAllowed(f"the host {host!r} does not resolve") from exc
    if not addresses:
        raise AddressNotAllowed(f"the host {host!r} does not resolve")
    for address in addresses:
        check_address(address, allowlist=allowlist)
    return addresses


@dataclass(frozen=True)
class PinnedRequest:
    """How to call a URL at an address that was checked: the URL with the address in place of the
    name, the Host header, and for https the name to send as SNI and to verify the certificate for."""

    url: str
    host_header: str
    tls_name: str | None


def pinned_request(url: str, address: str) -> PinnedRequest:
    """Return how to call a URL at a checked address, so a second DNS answer cannot point elsewhere."""
    parts = urlsplit(url)
    scheme, name, _ = check_url_shape(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    # The name as it goes on the wire (IDNA), which is what SNI carries and certificates name.
    tls_name = name.encode("idna").decode("ascii") if scheme == "https" else None
    return PinnedRequest(
        url=parts._replace(netloc=netloc).geturl(), host_header=parts.netloc, tls_name=tls_name
    )
