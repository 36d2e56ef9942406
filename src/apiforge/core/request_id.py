"""Request ids: the client's own when well-formed, else a cheap unique one of ours."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping

__all__ = ["RequestIds"]

# 1-64 characters that are safe in a header, a log line and a JSON string as they are.
_SUPPLIED = re.compile(rb"[A-Za-z0-9._-]{1,64}\Z")


class RequestIds:
    """Ids for one process: a random prefix and a counter (no syscall per request)."""

    def __init__(self) -> None:
        # The "r" keeps digit runs short: an id of 13+ digits would look like a card number
        # to the event redactor and be masked, breaking the join of events and responses.
        prefix = os.urandom(5).hex() + "r"
        # prefix + hex(n) for n = 0x10000000, 0x10000001, ...: "...r0x1000002a". Chained
        # iterators, so that a new id is made without a Python-level call.
        self._fresh = map(prefix.__add__, map(hex, itertools.count(0x10000000)))

    def for_request(self, headers: Mapping[bytes, bytes]) -> str:
        """The request's ``X-Request-ID`` if it is 1-64 of ``[A-Za-z0-9._-]``, else a new id."""
        supplied = headers.get(b"x-request-id")
        if supplied is not None and _SUPPLIED.match(supplied):
            return supplied.decode("ascii")
        return next(self._fresh)
