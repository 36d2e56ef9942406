from __future__ import annotations

import pytest

from apiforge.core.client import ClientResolver, normalize_address


def h(**headers: str) -> dict[bytes, bytes]:
    return {k.replace("_", "-").encode(): v.encode() for k, v in headers.items()}


def test_without_trusted_proxies_headers_are_ignored() -> None:
    r = ClientResolver([])
    headers = h(x_forwarded_for="1.2.3.4", x_forwarded_proto="https", forwarded="for=5.6.7.8")
    assert r.resolve("203.0.113.9", "http", headers) == ("203.0.113.9", "http")


def test_untrusted_peer_cannot_forge() -> None:
    r = ClientResolver(["10.0.0.0/8"])
    assert r.resolve("203.0.113.9", "http", h(x_forwarded_for="1.2.3.4")) == (
        "203.0.113.9", "http")


def test_rightmost_untrusted_hop_is_the_client() -> None:
    r = ClientResolver(["10.0.0.0/8"])
    # The client forged 6.6.6.6 on the left; our proxies appended the real address.
    headers = h(x_forwarded_for="6.6.6.6, 198.51.100.7, 10.0.0.5", x_forwarded_proto="https")
    assert r.resolve("10.0.0.1", "http", headers) == ("198.51.100.7", "https")


def test_all_hops_trusted_gives_leftmost() -> None:
    r = ClientResolver(["10.0.0.0/8"])
    assert r.resolve("10.0.0.1", "http", h(x_forwarded_for="10.1.1.1, 10.0.0.5"))[0] == "10.1.1.1"


def test_garbage_hop_ends_the_chain() -> None:
    r = ClientResolver(["10.0.0.0/8"])
    assert r.resolve("10.0.0.1", "http", h(x_forwarded_for="1.1.1.1, garbage"))[0] == "10.0.0.1"


def test_forwarded_header_rfc7239() -> None:
    r = ClientResolver(["10.0.0.0/8"])
    headers = h(forwarded='for=6.6.6.6;proto=http, for="[2001:db8::7]:4711";proto=https')
    assert r.resolve("10.0.0.1", "http", headers) == ("2001:db8::7", "https")
    headers = h(forwarded="for=198.51.100.2:8080")
    assert r.resolve("10.0.0.1", "http", headers)[0] == "198.51.100.2"


def test_forwarded_wins_over_x_forwarded_for() -> None:
    r = ClientResolver(["10.0.0.0/8"])
    headers = h(forwarded="for=198.51.100.2", x_forwarded_for="6.6.6.6")
    assert r.resolve("10.0.0.1", "http", headers)[0] == "198.51.100.2"


def test_mapped_ipv6_is_normalized_and_trusted() -> None:
    assert normalize_address("::ffff:10.0.0.1") == "10.0.0.1"
    assert normalize_address("2001:DB8:0:0::1") == "2001:db8::1"
    r = ClientResolver(["10.0.0.0/8"])
    assert r.resolve("10.0.0.1", "http", h(x_forwarded_for="::ffff:198.51.100.3"))[0] == (
        "198.51.100.3")


@pytest.mark.parametrize("proto", ["javascript", "ftp", ""])
def test_only_http_schemes_accepted(proto: str) -> None:
    r = ClientResolver(["10.0.0.0/8"])
    assert r.resolve("10.0.0.1", "http", h(x_forwarded_proto=proto))[1] == "http"
