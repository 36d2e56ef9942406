"""Running an ASGI app under uvicorn the way every APIForge server runs.

uvicorn adds ``server: uvicorn`` at the protocol level, below any middleware, so it is turned
off here in the server config.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import Any

import uvicorn

__all__ = ["serve"]


def serve(
    app: Any,
    *,
    host: str,
    port: int,
    on_ready: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve ``app`` until interrupted; call ``on_ready(url)`` once the socket accepts."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        server_header=False,
        access_log=False,
        log_level=log_level,
        lifespan="auto",
    )
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(server, on_ready))


async def _run(server: uvicorn.Server, on_ready: Callable[[str], None] | None) -> None:
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():  # failed to bind: surface the error
            await task
            return
        await asyncio.sleep(0.02)
    if on_ready is not None:
        config = server.config
        scheme = "https" if config.is_ssl else "http"
        sockets = [s for srv in server.servers for s in srv.sockets]
        port = sockets[0].getsockname()[1] if sockets else config.port
        host = f"[{config.host}]" if ":" in config.host else config.host
        on_ready(f"{scheme}://{host}:{port}")
        sys.stdout.flush()
    await task
