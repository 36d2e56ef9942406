"""The event model: vocabulary names only, UTC datetimes, fields taken from the request."""

from __future__ import annotations

import datetime as dt
import re

import orjson
import pytest

import apiforge.events
from apiforge.core.context import Principal, RequestContext
from apiforge.core.routing import RoutePlan
from apiforge.events import EVENT_NAMES, SecurityEvent, is_event_name, make_event
from apiforge.policy.models import RouteSettings

NOW = dt.datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=dt.UTC)


def _ctx(principal: Principal | None = None, *, routed: bool = True) -> RequestContext:
    plan = RoutePlan(
        key="GET /v1/users/{id}", method="GET", template="/v1/users/{id}", settings=RouteSettings()
    )
    return RequestContext(
        request_id="req-42",
        client="203.0.113.9",
        scheme="https",
        method="GET",
        path="/v1/users/17",
        headers={},
        route=plan if routed else None,
        principal=principal,
    )


def test_public_surface_is_pinned() -> None:
    assert sorted(apiforge.events.__all__) == [
        "EVENT_NAMES",
        "EventBus",
        "EventSink",
        "JsonLinesSink",
        "Level",
        "MemorySink",
        "REDACTED",
        "RequestMetrics",
        "SecurityEvent",
        "is_event_name",
        "make_event",
        "redact",
        "redact_text",
    ]
    for name in apiforge.events.__all__:
        assert hasattr(apiforge.events, name)


def test_vocabulary_is_expanded_and_complete() -> None:
    for verb in ("create", "read", "update", "delete"):
        assert f"sensitive_{verb}" in EVENT_NAMES
    assert not any("|" in name for name in EVENT_NAMES)
    assert {"authn_login_fail", "authz_fail", "excess_rate_limit_exceeded", "sys_crash"} <= (
        EVENT_NAMES
    )
    assert len(EVENT_NAMES) == 50
    assert all(re.fullmatch(r"[a-z0-9_]+", name) for name in EVENT_NAMES)


@pytest.mark.parametrize(
    "name",
    ["authn_login_failed", "AUTHZ_FAIL", "authz fail", "", "apiforge_", "apiforge_Bad", "xss"],
)
def test_unknown_names_are_programming_errors(name: str) -> None:
    assert not is_event_name(name)
    with pytest.raises(ValueError, match="unknown security event name"):
        make_event(name)


def test_apiforge_prefixed_names_are_allowed() -> None:
    event = make_event("apiforge_webhook_signature_fail", now=NOW)
    assert event.name == "apiforge_webhook_signature_fail"


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="level"):
        make_event("authz_fail", level="DEBUG")  # type: ignore[arg-type]


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        make_event("authz_fail", now=dt.datetime(2025, 1, 1))


def test_other_offsets_are_normalised_to_utc() -> None:
    paris = dt.timezone(dt.timedelta(hours=2))
    event = make_event("authz_fail", now=dt.datetime(2025, 6, 1, 14, 0, tzinfo=paris))
    assert event.datetime == dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
    assert event.to_dict()["datetime"] == "2025-06-01T12:00:00+00:00"


def test_default_time_is_now_in_utc() -> None:
    before = dt.datetime.now(dt.UTC)
    event = make_event("sys_startup", level="INFO", outcome="report")
    assert before <= event.datetime <= dt.datetime.now(dt.UTC)
    assert event.datetime.utcoffset() == dt.timedelta(0)


def test_fields_come_from_the_request_context() -> None:
    event = make_event(
        "authz_fail",
        ctx=_ctx(Principal(application="k1")),
        reason="missing_scope",
        now=NOW,
        scope="users:write",
    )
    assert event.request_id == "req-42"
    assert event.client == "203.0.113.9"
    assert event.route == "GET /v1/users/{id}"
    assert event.principal == "app:k1"
    assert event.outcome == "deny"
    assert event.level == "WARN"
    assert event.reason == "missing_scope"
    assert event.details == {"scope": "users:write"}


def test_user_is_preferred_over_application() -> None:
    event = make_event("authz_fail", ctx=_ctx(Principal(application="k1", user="ada")), now=NOW)
    assert event.principal == "user:ada"


def test_unrouted_and_anonymous_requests() -> None:
    event = make_event("input_validation_fail", ctx=_ctx(Principal(), routed=False), now=NOW)
    assert event.route is None
    assert event.principal is None
    assert event.request_id == "req-42"


def test_no_context() -> None:
    event = make_event("sys_startup", level="INFO", outcome="report", now=NOW)
    assert (event.request_id, event.client, event.route, event.principal) == (None,) * 4
    assert event.details == {}


def test_to_dict_is_json_ready_and_owasp_shaped() -> None:
    event = make_event("authn_login_fail", ctx=_ctx(), reason="bad_password", now=NOW, user="ada")
    record = event.to_dict()
    assert record == {
        "datetime": "2025-03-04T05:06:07.890123+00:00",
        "appid": "apiforge",
        "event": "authn_login_fail",
        "level": "WARN",
        "request_id": "req-42",
        "client": "203.0.113.9",
        "route": "GET /v1/users/{id}",
        "principal": None,
        "outcome": "deny",
        "reason": "bad_password",
        "details": {"user": "ada"},
    }
    assert orjson.loads(orjson.dumps(record)) == record
    assert dt.datetime.fromisoformat(str(record["datetime"])) == NOW


def test_events_are_immutable() -> None:
    event = make_event("authz_fail", now=NOW, a=1)
    with pytest.raises(AttributeError):
        event.name = "authz_admin"  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.details["a"] = 2  # type: ignore[index]


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ValueError, match="unknown security event name"):
        SecurityEvent("nope", "WARN", NOW)
    assert SecurityEvent("authz_fail", "CRITICAL", NOW).details == {}
