from __future__ import annotations

import pytest

from apiforge.core.routing import RouteTable, TrailingSlashRedirect
from apiforge.errors import BadRequest, MethodNotAllowed, NotFound
from apiforge.policy import RouteSettings

ROUTES = {
    "GET /v1/users/me": RouteSettings(),
    "PUT /v1/users/me": RouteSettings(),
    "GET /v1/users/{id}": RouteSettings(),
    "DELETE /v1/users/{id}/sessions/{sid}": RouteSettings(),
    "GET /off": RouteSettings(enabled=False),
}


@pytest.fixture
def table() -> RouteTable:
    return RouteTable(ROUTES)


def test_static_and_templated_routes(table: RouteTable) -> None:
    assert table.match("GET", "/v1/users/me", b"/v1/users/me").plan.key == "GET /v1/users/me"
    assert table.match("PUT", "/v1/users/me", b"/v1/users/me").plan.key == "PUT /v1/users/me"
    m = table.match("GET", "/v1/users/42", b"/v1/users/42")
    assert m.plan.key == "GET /v1/users/{id}" and m.params == {"id": "42"}
    m = table.match("DELETE", "/v1/users/7/sessions/ab", b"/v1/users/7/sessions/ab")
    assert m.params == {"id": "7", "sid": "ab"}


def test_head_follows_get(table: RouteTable) -> None:
    assert table.match("HEAD", "/v1/users/me", b"/v1/users/me").plan.key == "GET /v1/users/me"


def test_undeclared_path_is_404_and_method_405_with_allow(table: RouteTable) -> None:
    with pytest.raises(NotFound):
        table.match("GET", "/v1/admin", b"/v1/admin")
    with pytest.raises(MethodNotAllowed) as info:
        table.match("DELETE", "/v1/users/me", b"/v1/users/me")
    assert info.value.headers == (("allow", "GET, HEAD, PUT"),)
    with pytest.raises(MethodNotAllowed):
        table.match("POST", "/v1/users/3", b"/v1/users/3")


def test_disabled_route_is_not_declared(table: RouteTable) -> None:
    with pytest.raises(NotFound):
        table.match("GET", "/off", b"/off")


def test_template_parameter_is_one_segment(table: RouteTable) -> None:
    with pytest.raises(NotFound):
        table.match("GET", "/v1/users/1/2", b"/v1/users/1/2")


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/users/me", b"/v1%2Fusers/me"),
        ("/v1/users/me", b"/v1%2fusers/me"),
        ("/v1/users/a\\b", b"/v1/users/a%5Cb"),
        ("/v1/users/a\x00", b"/v1/users/a%00"),
        ("/v1/users/../me", b"/v1/users/%2e%2e/me"),
        ("/v1/users/../me", b"/v1/users/../me"),
        ("/v1/users/./me", b"/v1/users/./me"),
        ("/v1/users/me/..", b"/v1/users/me/.."),
        ("/v1//users/me", b"/v1//users/me"),
        ("/v1/users/me;a=b", b"/v1/users/me;a=b"),
        ("/v1/users/me;a=b", b"/v1/users/me%3Ba=b"),
        ("/v1/users/a\\b", b"/v1/users/a\\b"),
        ("/v1/users/a\tb", b"/v1/users/a\tb"),
    ],
)
def test_ambiguous_paths_refused_before_matching(table: RouteTable, path: str, raw: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        table.match("GET", path, raw)
    assert info.value.code == "bad_path"


def test_percent_encoded_ordinary_characters_still_match(table: RouteTable) -> None:
    assert table.match("GET", "/v1/users/me", b"/v1/users/%6De").plan.key == "GET /v1/users/me"


def test_trailing_slash_strict_by_default(table: RouteTable) -> None:
    with pytest.raises(NotFound):
        table.match("GET", "/v1/users/me/", b"/v1/users/me/")


def test_trailing_slash_redirect_mode() -> None:
    table = RouteTable(ROUTES, trailing_slash="redirect")
    with pytest.raises(TrailingSlashRedirect) as info:
        table.match("GET", "/v1/users/me/", b"/v1/users/me/")
    assert info.value.location == "/v1/users/me"
    with pytest.raises(NotFound):  # never for unsafe methods
        table.match("PUT", "/v1/users/me/", b"/v1/users/me/")


def test_a_templated_path_seen_again_matches_the_same(table: RouteTable) -> None:
    first = table.match("GET", "/v1/users/42", b"/v1/users/42")
    again = table.match("GET", "/v1/users/42", b"/v1/users/42")
    assert again.plan is first.plan and again.params == first.params == {"id": "42"}
    with pytest.raises(TypeError):  # shared by every match of this path: read-only
        again.params["id"] = "7"  # type: ignore[index]
    assert table.match("GET", "/v1/users/42", b"/v1/users/42").params == {"id": "42"}
    with pytest.raises(MethodNotAllowed):
        table.match("DELETE", "/v1/users/42", b"/v1/users/42")
    # The same decoded text from an encoded request line is checked again, and refused.
    with pytest.raises(BadRequest):
        table.match("GET", "/v1/users/42", b"/v1/users/42%2F")


def test_long_templated_paths_match_but_are_not_remembered(table: RouteTable) -> None:
    path = "/v1/users/" + "9" * 4000
    assert table.match("GET", path, path.encode()).params == {"id": "9" * 4000}
    assert path not in table._recent
