"""Protections below the ASGI app: what a server must refuse before a request exists.

See :mod:`apiforge.serving.protocols` for the head deadline and the connection caps, and
:func:`http_protocol_class` for wiring them into ``uvicorn.Config(http=...)``.
"""

from __future__ import annotations

from apiforge.serving.protocols import (
    ConnectionLimits,
    ConnectionStats,
    ConnectionTracker,
    client_key,
    http_protocol_class,
    tracker_of,
)

__all__ = [
    "ConnectionLimits",
    "ConnectionStats",
    "ConnectionTracker",
    "client_key",
    "http_protocol_class",
    "tracker_of",
]
