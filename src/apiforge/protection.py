"""``protect(app, policy)``: the library-mode entry point."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apiforge.core.pipeline import ASGIApp, Pipeline
from apiforge.events import EventBus
from apiforge.policy import Policy, load_policy

__all__ = ["protect"]


def protect(
    app: ASGIApp,
    policy: Policy | Mapping[str, Any] | str | Path | None = None,
    *,
    events: EventBus | None = None,
) -> Pipeline:
    """Wrap an ASGI app (FastAPI, Starlette, Litestar, ...) in APIForge's pipeline.

    Args:
        app: the ASGI app to protect. Only routes declared in the policy reach it.
        policy: a :class:`Policy`, a mapping, or a path to ``apiforge.yaml`` (default
            ``./apiforge.yaml``). Unknown keys and unsafe values raise ``ConfigurationError``
            here, at start-up, never at request time.
        events: where security events go; by default a JSON-lines writer to stdout.

    Returns:
        The protected ASGI app.
    """
    return Pipeline(app, load_policy(policy), events=events)
