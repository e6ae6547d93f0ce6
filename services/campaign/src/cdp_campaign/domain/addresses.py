"""Which webhook URLs may be called: http(s) only, and only public addresses unless allowlisted."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def resolve_allowed(url: str, *, allowlist: Sequence[IpNetwork]) -> list[str]:
    """Resolve a webhook URL's host; raise AddressNotAllowed if any address it has is not allowed."""
    _, host, port = check_url_shape(url)
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise AddressNotAllowed(f"the host {host!r} does not resolve") from exc
    addresses = sorted({str(info[4][0]) for info in infos})
    for address in addresses:
        check_address(address, allowlist=allowlist)
    return addresses
