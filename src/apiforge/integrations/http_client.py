"""The one outbound HTTP client factory: the seed of the egress guard.

Every request APIForge itself sends (JWKS fetches today; webhooks, the gateway's upstream and the
scanner later) goes through :class:`HttpClientFactory`, so the rules below hold everywhere and
tests swap the network for a transport in one place.

What a client built here enforces:

- certificates are verified (an ``ssl.SSLContext`` from the system store or a named CA file);
  plain ``http://`` is refused unless ``allow_insecure_http`` names the risk;
- connect, read, write and pool timeouts are always set, so a silent peer cannot hold a task;
- redirects are not followed by the client; :meth:`HttpClientFactory.fetch` follows at most a few,
  and only to the same scheme, host and port (a redirect to another host is how an allow-listed
  URL is turned into a request to somewhere else);
- a response body is read up to ``max_response_bytes`` and the read stops there (a hostile or
  broken peer cannot make us buffer gigabytes; the limit applies to decoded bytes, so a gzip bomb
  is bounded too);
- destinations: when ``allowed_hosts`` is given only those host names may be contacted, and
  every address a name resolves to must be public unless it falls in ``allow_private_networks``.
  The check runs when the connection is opened, on the resolved addresses, and the socket is
  connected to the address that was checked, so DNS rebinding between check and connect buys
  nothing (server-side request forgery to ``127.0.0.1``, ``169.254.169.254`` or the LAN).

Exceptions::

    ApiForgeError
    └── EgressError            an outbound request was not allowed or not completed safely
        ├── EgressRefused      destination or scheme not allowed (before any byte is sent)
        └── ResponseTooLarge   the peer sent more than the configured limit
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Iterable
from typing import Final

import httpcore
import httpx

from apiforge.errors import ApiForgeError, ConfigurationError

__all__ = [
    "EgressError",
    "EgressRefused",
    "HttpClientFactory",
    "ResponseTooLarge",
    "check_address",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS: Final = 3
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
# Shared address space (RFC 6598) is neither private nor global in ``ipaddress``; name it.
_SHARED: Final = ipaddress.IPv4Network("100.64.0.0/10")


class EgressError(ApiForgeError):
    """An outbound request was not allowed or could not be completed safely."""


class EgressRefused(EgressError):
    """The destination (scheme, host or resolved address) is not allowed.

    Args:
        reason: why, for internal logs; it names the host, never credentials.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ResponseTooLarge(EgressError):
    """The response body exceeded the configured limit; reading stopped at the limit."""


def _embedded_v4(address: IPAddress) -> IPAddress:
    # ``::ffff:127.0.0.1`` is not ``is_loopback`` and NAT64 ``64:ff9b::7f00:1`` reaches
    # 127.0.0.1 through a translator: judge the IPv4 address they carry.
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def check_address(address: str, allowed_private: Iterable[IPNetwork] = ()) -> IPAddress:
    """Refuse an address that is not public, unless it is in an allowed private network.

    Args:
        address: an IP address as text (a resolved address, never a host name).
        allowed_private: networks that may be reached although they are not public (the
            operator's explicit exception, e.g. ``127.0.0.1/32`` for a local identity provider).

    Returns:
        The parsed address (IPv4-mapped and NAT64 forms reduced to IPv4).

    Raises:
        EgressRefused: loopback, private, link-local (cloud metadata), shared, multicast,
            reserved or unspecified addresses outside ``allowed_private``.
    """
    try:
        parsed = _embedded_v4(ipaddress.ip_address(address.split("%", 1)[0]))
    except ValueError:
        raise EgressRefused(f"not an IP address: {address!r}") from None
    if any(parsed.version == net.version and parsed in net for net in allowed_private):
        return parsed
    if (
        not parsed.is_global
        or parsed.is_multicast
        or (isinstance(parsed, ipaddress.IPv4Address) and parsed in _SHARED)
    ):
        raise EgressRefused(f"non-public address {parsed} refused")
    return parsed


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks every address, then connects to the checked address itself."""

    def __init__(self, allowed_private: tuple[IPNetwork, ...]) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allowed_private = allowed_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
            )
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}") from exc
        addresses = [str(info[4][0]) for info in infos]
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host!r}")
        # Every address must pass: a name that resolves to one public and one private address
        # would otherwise reach the private one whenever the resolver orders it first.
        for address in addresses:
            check_address(address, self._allowed_private)
        return await self._inner.connect_tcp(
            addresses[0],
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("unix sockets are not an egress destination")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _PolicyTransport(httpx.AsyncBaseTransport):
    """Checks scheme and host of every request before handing it to the real transport."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        allowed_hosts: frozenset[str] | None,
        allow_insecure_http: bool,
    ) -> None:
        self._inner = inner
        self._allowed_hosts = allowed_hosts
        self._allow_insecure_http = allow_insecure_http

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        scheme = request.url.scheme
        if scheme != "https" and not (scheme == "http" and self._allow_insecure_http):
            raise EgressRefused(f"scheme {scheme!r} refused")
        host = request.url.host.lower()
        if self._allowed_hosts is not None and host not in self._allowed_hosts:
            raise EgressRefused(f"host {host!r} is not in allowed_hosts")
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


class HttpClientFactory:
    """Builds the outbound ``httpx.AsyncClient`` every APIForge component uses.

    Args:
        allowed_hosts: host names (or IP literals) that may be contacted; ``None`` allows any
            host whose addresses are public. Name the identity provider here in production, so a
            policy typo or an injected URL cannot point a fetch elsewhere.
        allow_private_networks: CIDRs that may be reached although they are loopback, private or
            link-local (e.g. ``127.0.0.1/32`` for a local test provider). Empty by default:
            server-side request forgery into the LAN or the cloud metadata address is refused.
        allow_insecure_http: permit ``http://`` URLs. Tokens' keys fetched over plain HTTP can be
            swapped by anyone on the path, so this is for local tests only.
        connect_timeout: seconds to open a connection (TCP and TLS).
        read_timeout: seconds to wait for each chunk of the response.
        max_response_bytes: the most body bytes :meth:`fetch` reads before refusing.
        ca_file: a PEM bundle to trust instead of the system store (a private CA).
        transport: a transport to use instead of the network (``httpx.MockTransport`` in tests).
            Scheme and host rules still apply; address checks happen only on real connections.
        user_agent: the ``User-Agent`` sent, so providers can identify the caller.

    Raises:
        ConfigurationError: a limit or timeout is not positive, or a CIDR is malformed.
    """

    def __init__(
        self,
        *,
        allowed_hosts: Iterable[str] | None = None,
        allow_private_networks: Iterable[str] = (),
        allow_insecure_http: bool = False,
        connect_timeout: float = 3.0,
        read_timeout: float = 5.0,
        max_response_bytes: int = 1 << 20,
        ca_file: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        user_agent: str = "apiforge",
    ) -> None:
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ConfigurationError("http client: timeouts must be positive seconds")
        if max_response_bytes <= 0:
            raise ConfigurationError("http client: max_response_bytes must be positive")
        try:
            self._allowed_private: tuple[IPNetwork, ...] = tuple(
                ipaddress.ip_network(cidr, strict=False) for cidr in allow_private_networks
            )
        except ValueError as exc:
            raise ConfigurationError(
                f"http client: allow_private_networks holds an invalid CIDR ({exc}); "
                "use forms like '127.0.0.1/32' or '10.0.0.0/8'"
            ) from None
        self._allowed_hosts = (
            None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
        )
        self._allow_insecure_http = allow_insecure_http
        self._timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
        )
        self.max_response_bytes = max_response_bytes
        self._ca_file = ca_file
        self._transport = transport
        self._headers = {"user-agent": user_agent}

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self._ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def _network_transport(self) -> httpx.AsyncBaseTransport:
        context = self._ssl_context()
        transport = httpx.AsyncHTTPTransport(verify=context, trust_env=False)
        # httpx exposes no network-backend option, so its connection pool is rebuilt with the
        # guarded backend; tests/identity/test_jwks.py proves the guard is in the path.
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=20,
            max_keepalive_connections=5,
            keepalive_expiry=30.0,
            network_backend=_GuardedBackend(self._allowed_private),
        )
        return transport

    def client(self) -> httpx.AsyncClient:
        """A new client with this factory's rules. The caller closes it (``aclose``).

        Environment proxies are ignored (``trust_env=False``): a proxy variable set on the host
        would otherwise route every fetch, and its credentials, through a third party.
        """
        inner = self._transport if self._transport is not None else self._network_transport()
        return httpx.AsyncClient(
            transport=_PolicyTransport(inner, self._allowed_hosts, self._allow_insecure_http),
            timeout=self._timeout,
            follow_redirects=False,
            trust_env=False,
            headers=self._headers,
        )

    async def fetch(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        max_bytes: int | None = None,
    ) -> tuple[int, httpx.Headers, bytes]:
        """GET ``url`` and read at most ``max_bytes`` of body.

        Args:
            client: a client from :meth:`client`.
            url: the URL; scheme and host are checked by the client's transport.
            headers: extra request headers.
            max_bytes: the body limit for this call; the factory's limit by default.

        Returns:
            ``(status, headers, body)`` of the final response.

        Raises:
            EgressRefused: a redirect leaves the origin, or too many redirects.
            ResponseTooLarge: the body (declared or received) is larger than the limit.
            httpx.HTTPError: the network failed or a timeout elapsed.
        """
        limit = self.max_response_bytes if max_bytes is None else max_bytes
        target = httpx.URL(url)
        for _ in range(MAX_REDIRECTS + 1):
            async with client.stream("GET", target, headers=headers) as response:
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    following = target.join(location)
                    if (following.scheme, following.host, following.port) != (
                        target.scheme,
                        target.host,
                        target.port,
                    ):
                        raise EgressRefused(f"redirect to another origin refused: {following}")
                    target = following
                    continue
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise ResponseTooLarge(f"declared body of {declared} bytes over {limit}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise ResponseTooLarge(f"body over {limit} bytes")
                return response.status_code, response.headers, bytes(body)
        raise EgressRefused(f"more than {MAX_REDIRECTS} redirects")
