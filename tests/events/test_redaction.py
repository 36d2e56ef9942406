"""Redaction: secrets never leave the process, whatever key or string they hide in."""

from __future__ import annotations

import string

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiforge.events.redaction import (
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_STRING,
    REDACTED,
    SENSITIVE_KEYS,
    is_sensitive_key,
    luhn_valid,
    redact,
    redact_text,
)

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkFkYSJ9"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
API_KEY = "afk_live_01HZX3K9_s3cr3t-Value_with_underscores"
# Test numbers published by card networks; all pass Luhn.
CARDS = [
    "4111111111111111",
    "5555555555554444",
    "378282246310005",
    "6011111111111117",
    "4222222222222",
    "6250941006528599",
]


def dumps(value: object) -> str:
    return orjson.dumps(redact(value)).decode()


@pytest.mark.parametrize(
    "key",
    [
        "Authorization",
        "proxy-authorization",
        "COOKIE",
        "Set-Cookie",
        "x-api-key",
        "X_API_KEY",
        "api-key",
        "apiKey",
        "password",
        "passwd",
        "new-password",
        "secret",
        "client_secret",
        "token",
        "Access-Token",
        "refresh_token",
        "id_token",
        "otp",
        "totp",
        "pepper",
        "private-key",
        "session",
        "db_password",
        "csrf_token",
        "x-auth-token",
        "webhook_secret",
    ],
)
def test_sensitive_keys_are_replaced_whole(key: str) -> None:
    out = redact({key: {"nested": "hunter2"}, "other": [key]})
    assert out == {key: REDACTED, "other": [key]}


@pytest.mark.parametrize("key", ["token_type", "password_policy", "session_count", "user", "route"])
def test_ordinary_keys_are_kept(key: str) -> None:
    assert not is_sensitive_key(key)
    assert redact({key: "visible"}) == {key: "visible"}


def test_sensitive_keys_are_normalised() -> None:
    assert "xapikey" in SENSITIVE_KEYS
    assert all(k == k.lower() and "-" not in k and "_" not in k for k in SENSITIVE_KEYS)


def test_nested_containers_are_walked_and_input_untouched() -> None:
    value = {"a": [{"password": "p1"}, ("tok", {"Cookie": "sid=1"})], "b": {"c": {"token": "t"}}}
    snapshot = repr(value)
    assert redact(value) == {
        "a": [{"password": REDACTED}, ["tok", {"Cookie": REDACTED}]],
        "b": {"c": {"token": REDACTED}},
    }
    assert repr(value) == snapshot


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"got {JWT} from client", f"got {REDACTED} from client"),
        ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.", REDACTED),  # unsigned (alg none) still a token
        ("Authorization: Bearer abc.DEF-123_~+/==", f"Authorization: Bearer {REDACTED}"),
        ("bearer   xyz", f"bearer {REDACTED}"),
        (f"key={API_KEY};", f"key={REDACTED};"),
        (f"[{API_KEY}]", f"[{REDACTED}]"),
        ("/cb?code=1&access_token=abc123&state=x", f"/cb?code=1&access_token={REDACTED}&state=x"),
        ("password=hunter2 next", f"password={REDACTED} next"),
        ("card 4111 1111 1111 1111 ok", "card [CARD ****1111] ok"),
        ("card 4111-1111-1111-1111", "card [CARD ****1111]"),
        ("amex 378282246310005.", "amex [CARD ****0005]."),
        ("4111 1111 1111 1111 7", "[CARD ****1111] 7"),
        ("nothing secret here: 1234-5678", "nothing secret here: 1234-5678"),
    ],
)
def test_secret_shapes_in_strings(text: str, expected: str) -> None:
    assert redact_text(text) == expected
    assert redact({"note": text}) == {"note": expected}


@pytest.mark.parametrize("card", CARDS)
def test_luhn_cards(card: str) -> None:
    assert luhn_valid(card)
    assert redact_text(f"pay {card} now") == f"pay [CARD ****{card[-4:]}] now"
    assert redact({"n": int(card)}) == {"n": f"[CARD ****{card[-4:]}]"}


@pytest.mark.parametrize(
    "digits",
    ["4111111111111112", "1234567890123", "12345678901234567890123", "123456789012"],
)
def test_non_luhn_and_out_of_range_digit_runs_are_kept(digits: str) -> None:
    assert redact_text(f"id {digits}") == f"id {digits}"


def test_non_ascii_digits_are_not_cards() -> None:
    arabic = "\u0664\u0661\u0661\u0661" * 4  # Arabic-Indic digits spelling 4111...
    assert redact_text(arabic) == arabic


def test_long_strings_are_truncated_after_redaction() -> None:
    out = redact_text("a" * (MAX_STRING - 10) + " " + JWT + "b" * 10_000)
    assert JWT[:40] not in out
    assert len(out) < MAX_STRING + 64
    assert out.endswith(f"[truncated {MAX_STRING - 10 + 1 + len(JWT) + 10_000} chars]")
    assert redact_text("x" * MAX_STRING) == "x" * MAX_STRING


def test_huge_strings_are_bounded() -> None:
    out = redact_text("4111111111111111 " * 200_000)
    assert len(out) < MAX_STRING + 64
    assert "4111111111111111" not in out


def test_depth_and_width_are_bounded() -> None:
    deep: object = "leaf"
    for _ in range(MAX_DEPTH + 50):
        deep = [deep]
    text = dumps(deep)
    assert "too deep" in text
    assert "leaf" not in text
    wide = redact({"items": list(range(MAX_ITEMS + 5)), **{f"k{i}": i for i in range(300)}})
    assert isinstance(wide, dict)
    assert len(wide) == MAX_ITEMS + 1
    items = redact(list(range(MAX_ITEMS + 5)))
    assert isinstance(items, list)
    assert items[-1] == "[TRUNCATED: 5 more items]"


def test_output_is_always_json_ready() -> None:
    class Opaque:
        def __str__(self) -> str:
            return f"Opaque(token={JWT})"

    value = {1: b"\x00raw", "big": 2**80, "set": {"x"}, "obj": Opaque(), "f": 1.5, "b": True}
    out = redact(value)
    assert out == {
        "1": "[4 bytes]",
        "big": "[integer of 81 bits]",
        "set": ["x"],
        "obj": f"Opaque(token={REDACTED})",
        "f": 1.5,
        "b": True,
    }
    orjson.dumps(out)


def test_secrets_in_keys_are_redacted() -> None:
    assert redact({f"Bearer {JWT}": 1}) == {f"Bearer {REDACTED}": 1}


_secret = st.text(alphabet=string.ascii_letters + string.digits, min_size=12, max_size=40).map(
    lambda s: "S3cr" + s
)
_sensitive_key = st.sampled_from(
    [
        "Authorization",
        "cookie",
        "X-Api-Key",
        "password",
        "client_secret",
        "refresh_token",
        "otp",
        "private_key",
        "Session",
        "new-password",
    ]
)
_plain = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["a", "b", "name", "note"]), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    secrets=st.dictionaries(_sensitive_key, _secret, min_size=1, max_size=5),
    filler=st.dictionaries(st.sampled_from(["a", "b", "name"]), _plain, max_size=3),
    nest=st.integers(0, 5),
)
def test_secret_values_never_appear_in_output(
    secrets: dict[str, str], filler: dict[str, object], nest: int
) -> None:
    value: object = {**filler, **secrets}
    for _ in range(nest):
        value = {"wrap": [value]}
    text = dumps(value)
    for secret in secrets.values():
        assert secret not in text


def _luhn_complete(body: str) -> str:
    for check in string.digits:
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable")


@settings(max_examples=300, deadline=None)
@given(
    body=st.text(alphabet=string.digits, min_size=12, max_size=18),
    sep=st.sampled_from(["", " ", "-"]),
    prefix=st.sampled_from(["", "card: ", "x "]),
)
def test_luhn_cards_are_always_masked(body: str, sep: str, prefix: str) -> None:
    card = _luhn_complete(body)
    shown = sep.join(card[i : i + 4] for i in range(0, len(card), 4))
    out = redact_text(f"{prefix}{shown} end")
    assert out == f"{prefix}[CARD ****{card[-4:]}] end"
    assert card[:-4] not in out.replace(" ", "").replace("-", "")


@settings(max_examples=300, deadline=None)
@given(body=st.text(alphabet=string.digits, min_size=13, max_size=19))
def test_non_luhn_digit_runs_are_kept(body: str) -> None:
    if luhn_valid(body):
        body = body[:-1] + str((int(body[-1]) + 1) % 10)
    assert not luhn_valid(body)
    assert redact_text(f"ref {body}") == f"ref {body}"
