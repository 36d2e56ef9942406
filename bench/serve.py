"""Serve one benchmark variant with uvicorn, the way the load benchmark measures it.

    python bench/serve.py --variant bare --port 8000 --data-dir /tmp/bench-bare

Prints one line, `ready variant=NAME url=URL pid=PID`, on stdout once the listening socket
accepts a connection; bench/run.py waits for it. `--port 0` picks a free port, reported in
that line. SIGINT/SIGTERM shut the server down gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import ssl
import sys
from pathlib import Path

import uvicorn

from apiforge.serving import ConnectionLimits, http_protocol_class
from variants import VARIANTS, get_variant

HOST = "127.0.0.1"
READY_PREFIX = "ready "
# Start-up includes the app's own work (opening stores, compiling the policy).
STARTUP_TIMEOUT_S = 60.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve one benchmark variant.")
    parser.add_argument("--variant", required=True, choices=[v.name for v in VARIANTS])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--certfile", type=Path, help="PEM certificate, for https variants")
    parser.add_argument("--keyfile", type=Path, help="PEM private key, for https variants")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> uvicorn.Config:
    variant = get_variant(args.variant)
    if variant.scheme == "https" and not (args.certfile and args.keyfile):
        raise SystemExit(f"variant {variant.name} is served over https: pass --certfile/--keyfile")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    app = variant.build(args.data_dir)
    tls = variant.scheme == "https"
    return uvicorn.Config(
        app,
        host=HOST,
        port=args.port,
        loop="uvloop",
        # The protocol APIForge's own servers run (apiforge.server), for every variant alike.
        http=http_protocol_class(ConnectionLimits(), implementation="httptools"),
        access_log=False,
        log_level="warning",
        # uvicorn adds `server: uvicorn` below any middleware; production turns it off too.
        server_header=False,
        proxy_headers=False,  # as apiforge.server runs it: trusted_proxies alone decides
        workers=1,
        ssl_certfile=args.certfile if tls else None,
        ssl_keyfile=args.keyfile if tls else None,
    )


async def _accepts(port: int, tls: bool) -> bool:
    """True once a client connection to the socket completes (a TLS handshake for https)."""
    ssl_context = None
    if tls:
        # Only the local self-signed certificate made by the harness is ever presented here.
        ssl_context = ssl.create_default_context()
        ssl_context.check_hostname = False
        ssl_context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, ssl=ssl_context), timeout=2.0
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    # The check only needed the connection to be accepted; how it closes does not matter.
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def serve(config: uvicorn.Config, variant_name: str, tls: bool) -> None:
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT_S
    while not server.started:
        if task.done():
            # Start-up failed: let uvicorn's own exit (SystemExit with its status) propagate.
            await task
            return
        if loop.time() > deadline:
            server.should_exit = True
            await task
            raise SystemExit(f"{variant_name}: server did not start in {STARTUP_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.02)

    port = int(server.servers[0].sockets[0].getsockname()[1])
    while not await _accepts(port, tls):
        if task.done() or loop.time() > deadline:
            server.should_exit = True
            await task
            raise SystemExit(f"{variant_name}: socket on port {port} never accepted")
        await asyncio.sleep(0.05)

    scheme = "https" if tls else "http"
    print(
        f"{READY_PREFIX}variant={variant_name} url={scheme}://{HOST}:{port} pid={os.getpid()}",
        flush=True,
    )
    await task


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = build_config(args)
    tls = get_variant(args.variant).scheme == "https"
    # Python 3.11's asyncio.run has no loop_factory; Runner does, and uvicorn's own run()
    # uses the same factory so uvloop is installed exactly as in production.
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve(config, args.variant, tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
