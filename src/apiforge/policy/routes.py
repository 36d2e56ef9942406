"""Route keys of the policy: ``"METHOD /path/{param}"``."""

from __future__ import annotations

import re

__all__ = ["HTTP_METHODS", "parse_route_key"]

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# One template segment: literal text or a single `{name}` parameter.
_SEGMENT = re.compile(r"^(?:[A-Za-z0-9._~!$&'()*+,=:@-]+|\{[A-Za-z_][A-Za-z0-9_]*\})$")


def parse_route_key(key: str) -> tuple[str, str]:
    """Split a route key ``"METHOD /path/{param}"`` into its method and path template.

    Raises:
        ValueError: with a message naming the problem and the expected form.
    """
    parts = key.split(" ")
    if len(parts) != 2:
        raise ValueError(f"route key {key!r} must be 'METHOD /path', e.g. 'GET /v1/users/{{id}}'")
    method, path = parts
    if method not in HTTP_METHODS:
        raise ValueError(
            f"route key {key!r}: method {method!r} must be one of {', '.join(sorted(HTTP_METHODS))}"
        )
    if not path.startswith("/"):
        raise ValueError(f"route key {key!r}: the path must start with '/'")
    if path != "/":
        segments = path[1:].split("/")
        if path.endswith("/"):
            segments = segments[:-1]
        for segment in segments:
            if segment in (".", "..") or not _SEGMENT.match(segment):
                raise ValueError(
                    f"route key {key!r}: segment {segment!r} is not a literal or a {{name}}"
                    " parameter (no empty segments, dot-segments, ';', '%' or '\\')"
                )
    return method, path
