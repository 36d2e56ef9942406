"""A protected app in its own process: ``python -m tests.e2e.app_server POLICY PORT``.

Routes: ``GET /who`` (the caller's application) and ``GET /r/{name}`` (any number of plain
routes, each declared in the policy on its own, e.g. ``"GET /r/deny"``). The policy's ``server``
section sets the connection limits, as it does for the servers APIForge starts.
"""

from __future__ import annotations

import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiforge import get_context, protect
from apiforge.policy import load_policy
from apiforge.server import serve
from apiforge.serving import ConnectionLimits


async def who(request: Request) -> JSONResponse:
    ctx = get_context(request.scope)
    principal = ctx.principal if ctx else None
    return JSONResponse({"application": principal.application if principal else None})


async def named(request: Request) -> JSONResponse:
    return JSONResponse({"route": request.path_params["name"]})


def main() -> None:
    policy, port = load_policy(sys.argv[1]), int(sys.argv[2])
    app = protect(Starlette(routes=[Route("/who", who), Route("/r/{name}", named)]), policy)
    limits = ConnectionLimits(
        header_timeout=policy.server.header_timeout,
        max_connections_per_client=policy.server.max_connections_per_client,
        max_connections=policy.server.max_connections,
    )
    serve(app, host="127.0.0.1", port=port, limits=limits,
          on_ready=lambda url: print(f"ready on {url}", flush=True))


if __name__ == "__main__":
    main()
