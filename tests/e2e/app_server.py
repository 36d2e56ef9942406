"""A protected app in its own process: ``python -m tests.e2e.app_server POLICY PORT``."""

from __future__ import annotations

import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiforge import get_context, protect
from apiforge.server import serve


async def who(request: Request) -> JSONResponse:
    ctx = get_context(request.scope)
    principal = ctx.principal if ctx else None
    return JSONResponse({"application": principal.application if principal else None})


def main() -> None:
    policy, port = sys.argv[1], int(sys.argv[2])
    app = protect(Starlette(routes=[Route("/who", who)]), policy)
    serve(app, host="127.0.0.1", port=port,
          on_ready=lambda url: print(f"ready on {url}", flush=True))


if __name__ == "__main__":
    main()
