"""Running apps under uvicorn the way every APIForge server runs.

- uvicorn adds ``server: uvicorn`` at the protocol level, below any middleware, so it is turned
  off in the server config;
- the connection-level protections (header-read deadline, connections per client) are in the
  protocol class, because the ASGI app never sees a request whose headers are still arriving;
- with TLS, our own context (TLS 1.3 by default) is used, and certificate and key are reloaded
  when their files change;
- an optional second listener (the plain-HTTP redirect) runs on the same event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from apiforge.serving import ConnectionLimits, http_protocol_class
from apiforge.tls import CertificateReloader, TlsSettings, apply_to_uvicorn, build_server_context

__all__ = ["Listener", "serve"]


@dataclass(frozen=True, slots=True)
class Listener:
    """One more socket served beside the main one, e.g. the plain-HTTP redirect."""

    app: Any
    port: int


def serve(
    app: Any,
    *,
    host: str,
    port: int,
    limits: ConnectionLimits | None = None,
    tls: TlsSettings | None = None,
    extra: Listener | None = None,
    on_ready: Callable[[str], None] | None = None,
    on_tls_change: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve ``app`` until interrupted; call ``on_ready(url)`` once the sockets accept.

    Args:
        limits: connection-level limits (header deadline, connections per client).
        tls: certificate and key; ``None`` serves plain HTTP.
        extra: a second listener on ``host`` (no TLS), started with the main one.
        on_tls_change: told of each certificate reload and each refused reload.
    """
    protocol = http_protocol_class(limits or ConnectionLimits())
    config = _config(app, host, port, protocol, log_level)
    reloader: CertificateReloader | None = None
    if tls is not None:
        context = build_server_context(tls)
        apply_to_uvicorn(config, context)

        def reloaded(warnings: list[str]) -> None:
            if on_tls_change is not None:
                on_tls_change("certificate reloaded" + "".join(f"; {w}" for w in warnings))

        def refused(error: Exception) -> None:
            if on_tls_change is not None:
                on_tls_change(f"certificate reload refused, the old one stays: {error}")

        reloader = CertificateReloader(context, tls, on_reload=reloaded, on_error=refused)
    servers = [uvicorn.Server(config)]
    if extra is not None:
        # The tracker of connections is shared, so one client's cap spans both listeners.
        servers.append(uvicorn.Server(_config(extra.app, host, extra.port, protocol, log_level)))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(servers, reloader, on_ready))


def _config(app: Any, host: str, port: int, protocol: Any, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        server_header=False,
        # uvicorn would otherwise believe X-Forwarded-For from FORWARDED_ALLOW_IPS (loopback by
        # default) before our pipeline sees the request: the policy's `trusted_proxies` alone
        # decides whom to believe.
        proxy_headers=False,
        access_log=False,
        log_level=log_level,
        lifespan="auto",
    )


async def _run(
    servers: list[uvicorn.Server],
    reloader: CertificateReloader | None,
    on_ready: Callable[[str], None] | None,
) -> None:
    main, *others = servers
    tasks = [asyncio.create_task(main.serve())]
    if not await _started(main, tasks[0]):
        return
    # Started after the main server: uvicorn chains signal handlers, so Ctrl-C stops this one
    # first and is then passed on to the main server.
    for other in others:
        tasks.append(asyncio.create_task(other.serve()))
        if not await _started(other, tasks[-1]):
            main.should_exit = True
            await tasks[0]
            return
    if reloader is not None:
        reloader.start()
    if on_ready is not None:
        on_ready(_url(main))
        sys.stdout.flush()
    try:
        await tasks[0]
    finally:
        for other in others:
            other.should_exit = True
        await asyncio.gather(*tasks[1:], return_exceptions=True)
        if reloader is not None:
            await reloader.stop()


async def _started(server: uvicorn.Server, task: asyncio.Task[None]) -> bool:
    while not server.started:
        if task.done():  # failed to bind: uvicorn has logged why
            await task
            return False
        await asyncio.sleep(0.02)
    return True


def _url(server: uvicorn.Server) -> str:
    config = server.config
    scheme = "https" if config.is_ssl else "http"
    sockets = [s for srv in server.servers for s in srv.sockets]
    port = sockets[0].getsockname()[1] if sockets else config.port
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"{scheme}://{host}:{port}"
