"""The client's address and scheme, read across trusted proxies only.

``Forwarded`` (RFC 7239) and ``X-Forwarded-For`` are lists that every hop appends to, so only
their right-hand end is written by proxies we know: the client is the rightmost address that is
not one of our trusted proxies. Anything to its left was written by the client and is ignored,
so a forged header changes nothing. Every later layer (limits, blocks, events, HSTS) uses the
one value resolved here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

__all__ = ["DNS_NAME", "ClientResolver", "address_group", "normalize_address"]

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\Z")
"""A lower-case host name: dot-separated labels of letters, digits and inner hyphens."""

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def normalize_address(host: str) -> str:
    """Canonical text of an address: IPv4-mapped IPv6 becomes IPv4, IPv6 is compressed."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def address_group(host: str, ipv6_prefix_length: int = 64) -> str:
    """The key a client is counted under, by limits and connection caps alike.

    IPv4 and IPv4-mapped IPv6 addresses are the IPv4 address; other IPv6 addresses are their
    ``/ipv6_prefix_length`` network (one subscriber usually holds a whole /64, and would get a
    fresh budget per address otherwise); anything else (a Unix socket path) is unchanged.
    """
    key = normalize_address(host)
    if ":" not in key or ipv6_prefix_length >= 128:
        return key
    try:
        network = ipaddress.IPv6Network(f"{key}/{ipv6_prefix_length}", strict=False)
    except ValueError:
        return key
    return str(network)


class ClientResolver:
    """Resolves ``(address, scheme)`` of a request from its peer and, if trusted, its headers."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in trusted_proxies
        )
        self.enabled = bool(self._networks)

    def is_trusted(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def resolve(self, peer: str, scheme: str, headers: Mapping[bytes, bytes]) -> tuple[str, str]:
        """The client address and scheme; ``peer`` is the TCP peer's normalized address."""
        if not self.enabled or not self.is_trusted(peer):
            return peer, scheme
        hops, protos, paired = _forwarded_chain(headers)
        client = peer
        hop_index = len(hops)
        for index in range(len(hops) - 1, -1, -1):
            hop = hops[index]
            if hop is None:  # an unparseable or obfuscated hop ends the trusted chain
                break
            client = hop
            hop_index = index
            if not self.is_trusted(hop):
                break
        # `Forwarded` pairs each hop with the scheme it used; `X-Forwarded-Proto` is set by
        # the proxy in front of us, so its last value is the one we trust.
        if paired:
            proto = protos[hop_index] if hop_index < len(protos) else None
        else:
            proto = protos[-1] if protos else None
        if proto in ("http", "https"):
            scheme = proto
        return client, scheme


def _forwarded_chain(
    headers: Mapping[bytes, bytes],
) -> tuple[list[str | None], list[str | None], bool]:
    """The hops (left to right), their schemes, and whether the two lists are paired."""
    forwarded = headers.get(b"forwarded")
    if forwarded is not None:
        hops: list[str | None] = []
        protos: list[str | None] = []
        for element in forwarded.decode("latin-1").split(","):
            pairs = dict(_pair(part) for part in element.split(";") if "=" in part)
            hops.append(_address(pairs.get("for", "")))
            protos.append(pairs.get("proto", "").lower() or None)
        return hops, protos, True
    xff = headers.get(b"x-forwarded-for")
    hops = [_address(part) for part in xff.decode("latin-1").split(",")] if xff else []
    proto_header = headers.get(b"x-forwarded-proto")
    protos = []
    if proto_header:
        protos = [p.strip().lower() or None for p in proto_header.decode("latin-1").split(",")]
    return hops, protos, False


def _pair(part: str) -> tuple[str, str]:
    name, _, value = part.strip().partition("=")
    return name.strip().lower(), value.strip().strip('"')


def _address(text: str) -> str | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # RFC 7239 IPv6 form: "[2001:db8::1]:4711"
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None  # "unknown", obfuscated identifiers, garbage
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)
