"""The policy file's models: every key of ``apiforge.yaml``, its safe default and its meaning.

Each field's docstring is what ``docs/policy.md`` says about the key; a test keeps the two in
step. Unknown keys are refused everywhere (``extra="forbid"``), so a misspelt key can never
silently leave a protection switched off.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from apiforge.policy.base import PolicyModel

__all__ = ["EventsSettings", "Policy", "RouteSettings", "parse_route_key"]

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


class RouteSettings(PolicyModel):
    """Settings of one declared route; later layers add their keys here."""

    enabled: bool = True
    """Serve this route. A route set to `false` answers 404 as if it were not declared."""


class EventsSettings(PolicyModel):
    """Where security events go."""

    sink: Literal["stdout", "none"] = "stdout"
    """`stdout` writes one JSON object a line to standard output; `none` discards events (tests)."""

    queue_size: Annotated[int, Field(ge=100, le=1_000_000)] = 10_000
    """Events buffered between a request and the writer; when full, new events are dropped and
    counted (`apiforge_events_dropped_total`) rather than slowing requests down."""


class Policy(PolicyModel):
    """The whole policy file."""

    version: Literal[1] = 1
    """The policy format version. Only `1` exists."""

    routes: dict[str, RouteSettings] = Field(default_factory=dict)
    """The route table: `"METHOD /path/{param}"` → that route's settings. A request for a path
    that is not declared is answered 404, a declared path with another method 405 with `Allow`:
    nothing reaches the app unless it is declared here. `{name}` matches one path segment."""

    trailing_slash: Literal["strict", "redirect"] = "strict"
    """`strict`: `/a/` and `/a` are different paths and only the declared one matches.
    `redirect`: a request for the other form of a declared `GET`/`HEAD` path gets a 308 to the
    declared form (a relative `Location`, so never an open redirect)."""

    trusted_proxies: list[str] = Field(default_factory=list)
    """CIDRs of the proxies in front of this service. `Forwarded`, `X-Forwarded-For` and
    `X-Forwarded-Proto` are read only when the connection comes from one of them, and only across
    hops that are themselves trusted: the client address is the rightmost one that is not a
    trusted proxy. Empty (the default) means the TCP peer is the client and those headers are
    ignored, so a client cannot forge its address."""

    problem_type_base: str = "https://apiforge.dev/docs/errors.md"
    """Base of the `type` link of problem responses; `#<code>` is appended."""

    events: EventsSettings = Field(default_factory=EventsSettings)
    """Security events: see the keys below."""

    @field_validator("routes")
    @classmethod
    def _check_routes(cls, routes: dict[str, RouteSettings]) -> dict[str, RouteSettings]:
        for key in routes:
            parse_route_key(key)
        return routes

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, proxies: list[str]) -> list[str]:
        for cidr in proxies:
            try:
                network = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(
                    f"{cidr!r} is not an IP network; write a CIDR such as '10.0.0.0/8'"
                ) from None
            if network.prefixlen == 0:
                raise ValueError(
                    f"{cidr!r} trusts every address, so any client could forge its address;"
                    " list only your proxies' networks"
                )
        return proxies

    @model_validator(mode="after")
    def _check_problem_base(self) -> Policy:
        if "#" in self.problem_type_base:
            raise ValueError("problem_type_base must not contain '#': the code is appended")
        return self
