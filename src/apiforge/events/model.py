"""Security events: one record per decision worth accounting for.

Names come from the OWASP Logging Vocabulary (``authn_login_fail``, ``authz_fail``,
``input_validation_fail``, ``malicious_*``, ...). Where no name fits, a name starting with
``apiforge_`` is allowed, so every event a dashboard sees is either standard or obviously ours.
An unknown name is a programming error and raises :class:`ValueError` when the event is built,
so a typo cannot silently create a new, unmonitored event stream.

Events are plain data. They are turned into JSON-ready dicts (:meth:`SecurityEvent.to_dict`) and
redacted on the event bus's writer thread, never on the request path.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from apiforge.core.context import RequestContext

__all__ = ["APP_ID", "EVENT_NAMES", "Level", "SecurityEvent", "is_event_name", "make_event"]

APP_ID = "apiforge"
"""The ``appid`` every event carries, so a shared log pipeline can tell our events apart."""

Level = Literal["INFO", "WARN", "CRITICAL"]
_LEVELS: frozenset[str] = frozenset(get_args(Level))

EVENT_NAMES: frozenset[str] = frozenset(
    {
        # authn
        "authn_login_success",
        "authn_login_successafterfail",
        "authn_login_fail",
        "authn_login_fail_max",
        "authn_login_lock",
        "authn_password_change",
        "authn_password_change_fail",
        "authn_impossible_travel",
        "authn_token_created",
        "authn_token_revoked",
        "authn_token_reuse",
        "authn_token_delete",
        # authz
        "authz_fail",
        "authz_change",
        "authz_admin",
        # crypt
        "crypt_decrypt_fail",
        "crypt_encrypt_fail",
        # excess
        "excess_rate_limit_exceeded",
        "excess_sessions_exceeded",
        # input
        "input_validation_fail",
        "input_validation_discrete_fail",
        # malicious
        "malicious_excess_404",
        "malicious_extraneous",
        "malicious_attack_tool",
        "malicious_sqli",
        "malicious_cors",
        "malicious_direct_reference",
        "malicious_csrf",
        "malicious_csp_violation",
        # privilege, sensitive data, sequence
        "privilege_permissions_changed",
        "sensitive_create",
        "sensitive_read",
        "sensitive_update",
        "sensitive_delete",
        "sequence_fail",
        # session
        "session_created",
        "session_renewed",
        "session_expired",
        "session_logout",
        "session_use_after_expire",
        # sys
        "sys_startup",
        "sys_shutdown",
        "sys_restart",
        "sys_crash",
        "sys_monitor_disabled",
        "sys_monitor_enabled",
        # user
        "user_created",
        "user_updated",
        "user_archived",
        "user_deleted",
    }
)
"""The OWASP Logging Vocabulary event names. Names starting with ``apiforge_`` are also valid."""

# Our own names follow the vocabulary's shape: lower case words joined by underscores.
_APIFORGE_NAME = re.compile(r"apiforge_[a-z0-9]+(?:_[a-z0-9]+)*")


def is_event_name(name: str) -> bool:
    """Whether ``name`` is a vocabulary name or a well-formed ``apiforge_`` name."""
    return name in EVENT_NAMES or _APIFORGE_NAME.fullmatch(name) is not None


_NO_DETAILS: Mapping[str, object] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """One security-relevant decision or change.

    Attributes:
        name: the OWASP Logging Vocabulary name, or an ``apiforge_`` name.
        level: ``INFO``, ``WARN`` or ``CRITICAL``.
        datetime: when it happened, timezone-aware, in UTC.
        request_id: the request's id, as echoed to the client, to join events with responses.
        client: the client address, resolved across trusted proxies only.
        route: the matched route's key, e.g. ``"GET /v1/users/{id}"``: a template, never the
            raw path, so ids in paths don't leak into logs or explode metric cardinality.
        principal: ``"user:<name>"`` or ``"app:<id>"`` once authentication has run.
        outcome: what was decided: ``"deny"``, ``"allow"``, ``"report"``...
        reason: the internal reason (``"bad_checksum"``); never shown to the client.
        details: extra context. Redacted before it leaves the process, like every field.

    Raises:
        ValueError: on an unknown name or level, or a naive datetime (programming errors).
    """

    name: str
    level: Level
    datetime: dt.datetime
    request_id: str | None = None
    client: str | None = None
    route: str | None = None
    principal: str | None = None
    outcome: str = "deny"
    reason: str | None = None
    details: Mapping[str, object] = field(default_factory=lambda: _NO_DETAILS)

    def __post_init__(self) -> None:
        if not is_event_name(self.name):
            raise ValueError(f"unknown security event name: {self.name!r}")
        if self.level not in _LEVELS:
            raise ValueError(f"unknown event level: {self.level!r}")
        offset = self.datetime.utcoffset()
        if offset is None:
            raise ValueError("event datetime must be timezone-aware")
        if offset:
            # Normalise so every event in a log reads in one timezone.
            object.__setattr__(self, "datetime", self.datetime.astimezone(dt.UTC))

    def to_dict(self) -> dict[str, object]:
        """The event as a JSON-ready dict (not yet redacted: the event bus does that).

        ``datetime`` is ISO 8601 with an explicit ``+00:00`` offset, ``event`` holds the name
        and ``appid`` is ``"apiforge"``, as the OWASP vocabulary's examples lay them out.
        """
        return {
            "datetime": self.datetime.isoformat(),
            "appid": APP_ID,
            "event": self.name,
            "level": self.level,
            "request_id": self.request_id,
            "client": self.client,
            "route": self.route,
            "principal": self.principal,
            "outcome": self.outcome,
            "reason": self.reason,
            "details": dict(self.details),
        }


def _principal_label(ctx: RequestContext) -> str | None:
    principal = ctx.principal
    if principal is None:
        return None
    # The user is the more specific identity: a token acting for a user through an app.
    if principal.user is not None:
        return f"user:{principal.user}"
    if principal.application is not None:
        return f"app:{principal.application}"
    return None


def make_event(
    name: str,
    *,
    ctx: RequestContext | None = None,
    level: Level = "WARN",
    outcome: str = "deny",
    reason: str | None = None,
    now: dt.datetime | None = None,
    **details: object,
) -> SecurityEvent:
    """Build an event, taking request id, client, route and principal from the request context.

    Args:
        name: an OWASP Logging Vocabulary name or an ``apiforge_`` name.
        ctx: the request's context; ``None`` for events outside a request (start-up, detectors).
        level: ``INFO``, ``WARN`` (default) or ``CRITICAL``.
        outcome: the decision, ``"deny"`` by default.
        reason: the internal reason, for operators only.
        now: the event time (timezone-aware); the current UTC time by default.
        **details: extra context; secrets in it are redacted before any sink sees it.

    Returns:
        The frozen event, ready for :meth:`apiforge.events.EventBus.emit`.

    Raises:
        ValueError: on an unknown name or level, or a naive ``now``.
    """
    when = dt.datetime.now(dt.UTC) if now is None else now
    extra: Mapping[str, object] = MappingProxyType(details) if details else _NO_DETAILS
    if ctx is None:
        return SecurityEvent(name, level, when, outcome=outcome, reason=reason, details=extra)
    return SecurityEvent(
        name,
        level,
        when,
        request_id=ctx.request_id,
        client=ctx.client,
        # The plan's key is its method and template; getattr keeps this module free of the
        # routing module, which only the pipeline needs.
        route=getattr(ctx.route, "key", None),
        principal=_principal_label(ctx),
        outcome=outcome,
        reason=reason,
        details=extra,
    )
