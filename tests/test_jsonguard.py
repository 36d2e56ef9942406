from __future__ import annotations

import math
import time
import tracemalloc
from collections.abc import Callable

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apiforge import jsonguard
from apiforge.errors import BadRequest, ConfigurationError
from apiforge.jsonguard import JsonLimits, JsonRejected, check_json, parse_json

DEFAULT = JsonLimits()
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def rejection(body: bytes, limits: JsonLimits = DEFAULT) -> str:
    with pytest.raises(JsonRejected) as info:
        check_json(body, limits)
    # parse_json refuses the same way, never with an orjson exception.
    with pytest.raises(JsonRejected) as parsed:
        parse_json(body, limits)
    assert parsed.value.code == info.value.code
    return info.value.code


def test_public_surface() -> None:
    assert sorted(jsonguard.__all__) == [
        "JsonLimits", "JsonRejectCode", "JsonRejected", "check_json", "parse_json",
    ]


# --- accepted documents -----------------------------------------------------------------

DEMO_BODY = b'{"email": "alice@example.com", "age": 34, "bio": "hello"}'

ACCEPTED = [
    DEMO_BODY,
    b"{}", b"[]", b"0", b"-0", b"1.5e3", b"-1E-3", b"true", b"false", b"null", b'""',
    b' \t\r\n{"a" : [ {"b":null} , true , false ] , "c": {"d": [1, [2, [3]]]}} \n',
    b'{"a": {"a": {"a": 1}}, "b": [{"a": 1}, {"a": 2}]}',  # same key in different objects
    b'{"k": "v", " :x": 1}',
    b'["a", ": "]',
    b'{"tags": ["a", ": "], "score": 1}',
    b'"\\ud83d\\ude00 \\u00e9 \\/ \\" \\\\ \\b\\f\\n\\r\\t"',
    '{"caf\u00e9": "\u65e5\u672c", "\U0001f600": 1}'.encode(),
    b'"\x7f"',
    b"9223372036854775807", b"-9223372036854775808",
    b"1e-999999",  # underflows to 0.0; finite, so both readers agree
    b"1.7976931348623157e308",
    b"[" * 32 + b"]" * 32,
    b"[" + b",".join([b"1"] * 10_000) + b"]",
    b'"' + b"x" * 65_536 + b'"',
    b"1234567890.12345678e12",  # exactly 20 digits
]


@pytest.mark.parametrize("body", ACCEPTED)
def test_accepted_documents_parse_to_what_orjson_reads(body: bytes) -> None:
    check_json(body, DEFAULT)
    assert parse_json(body, DEFAULT) == orjson.loads(body)


def test_demo_body() -> None:
    expected = {"email": "alice@example.com", "age": 34, "bio": "hello"}
    assert parse_json(DEMO_BODY, DEFAULT) == expected


# --- refused documents: one rule at a time ----------------------------------------------

HOSTILE = [
    # grammar
    (b"", "json_malformed"),
    (b"   ", "json_malformed"),
    (b"[1,]", "json_malformed"),
    (b'{"a":1,}', "json_malformed"),
    (b"[1 2]", "json_malformed"),
    (b'{"a" 1}', "json_malformed"),
    (b'{"a":}', "json_malformed"),
    (b"{1:2}", "json_malformed"),
    (b'{"a":1 "b":2}', "json_malformed"),
    (b"[1}", "json_malformed"),
    (b'{"a":1]', "json_malformed"),
    (b"]", "json_malformed"),
    (b"[[]", "json_malformed"),
    (b"[1] x", "json_malformed"),
    (b"[1][2]", "json_malformed"),
    (b"[1]\x00", "json_malformed"),
    (b"01", "json_malformed"),
    (b"1.", "json_malformed"),
    (b".5", "json_malformed"),
    (b"+1", "json_malformed"),
    (b"-", "json_malformed"),
    (b"tru", "json_malformed"),
    (b"True", "json_malformed"),
    (b"'a'", "json_malformed"),
    (b'"abc', "json_malformed"),
    (b'"\t"', "json_malformed"),
    (b'"\\x41"', "json_malformed"),
    (b'"\\u12"', "json_malformed"),
    (b"\x0c1", "json_malformed"),
    (b"NaN", "json_malformed"),
    (b"[NaN]", "json_malformed"),
    (b"Infinity", "json_malformed"),
    (b"-Infinity", "json_malformed"),
    (b'{"a": 1} // comment', "json_malformed"),
    # text encoding
    (b'"\\ud800"', "json_malformed"),  # lone high surrogate
    (b'"\\udc00"', "json_malformed"),  # lone low surrogate
    (b'"\\ud800\\u0041"', "json_malformed"),
    (b'{"\\ud800": 1}', "json_malformed"),
    (b'"\xed\xa0\x80"', "json_malformed"),  # a surrogate encoded in UTF-8
    (b'"\xc0\xaf"', "json_malformed"),  # overlong '/'
    (b'"\xe0\x80\xaf"', "json_malformed"),  # overlong, three bytes
    (b'"\xff"', "json_malformed"),
    (b'"\xc3"', "json_malformed"),  # truncated sequence
    (b"\xef\xbb\xbf{}", "json_malformed"),  # byte-order mark
    (b"\xc3\xa9", "json_malformed"),  # valid UTF-8 outside a string
    # duplicate keys, flat and nested, plain and escaped
    (b'{"a":1,"a":2}', "json_duplicate_key"),
    (b'{"a":1,"\\u0061":2}', "json_duplicate_key"),
    (b'{"\\u00e9":1,"\xc3\xa9":2}', "json_duplicate_key"),
    (b'{"a":1,"b":[],"a":2}', "json_duplicate_key"),
    (b'{"x":[{"y":{"z":[{"k":1,"k":1}]}}]}', "json_duplicate_key"),
    (b'[' * 20 + b'{"a":1,"a":2}' + b']' * 20, "json_duplicate_key"),
    (b'{"a": [1], "a": [1]}', "json_duplicate_key"),
    (b'{"k": ["a", ": "], "k": 1}', "json_duplicate_key"),
    (b'{"k": "v", " :x": 1, " :x": 2}', "json_duplicate_key"),
    # numbers
    (b"9223372036854775808", "json_number_out_of_range"),
    (b"-9223372036854775809", "json_number_out_of_range"),
    (b"18446744073709551615", "json_number_out_of_range"),  # orjson reads this one as int
    (b"[18446744073709551616]", "json_number_out_of_range"),  # and this one as a float
    (b"1e999999", "json_number_out_of_range"),
    (b"-1e400", "json_number_out_of_range"),
    (b"1.7976931348623159e308", "json_number_out_of_range"),
    (b"1" * 21, "json_number_too_long"),
    (b"0." + b"1" * 21, "json_number_too_long"),
    (b"1e" + b"1" * 20, "json_number_too_long"),
    (b"1" * 100_000, "json_number_too_long"),
    # limits
    (b"[" * 33 + b"]" * 33, "json_too_deep"),
    (b'{"a":' * 33 + b"1" + b"}" * 33, "json_too_deep"),
    (b"[" * 100_000, "json_too_deep"),
    (b"[" + b",".join([b"1"] * 10_001) + b"]", "json_too_many_members"),
    (b"[" + b",".join([b"[1]"] * 10_001) + b"]", "json_too_many_members"),
    (orjson.dumps({str(i): i for i in range(10_001)}), "json_too_many_members"),
    (orjson.dumps({str(i): [i] for i in range(10_001)}), "json_too_many_members"),
    (b'"' + b"x" * 65_537 + b'"', "json_string_too_long"),
    (b'{"' + b"k" * 65_537 + b'": 1}', "json_string_too_long"),
    (b'[{"' + b"k" * 65_537 + b'": []}]', "json_string_too_long"),
    (b'["' + b"x" * 65_537 + b'", []]', "json_string_too_long"),
]


@pytest.mark.parametrize(("body", "code"), HOSTILE, ids=lambda v: repr(v)[:40])
def test_hostile_vectors(body: bytes, code: str) -> None:
    assert rejection(body) == code


def test_rejection_is_a_400_that_echoes_nothing() -> None:
    secret = b'{"password": "hunter2", "password": "x"}'
    with pytest.raises(JsonRejected) as info:
        check_json(secret, DEFAULT)
    err = info.value
    assert isinstance(err, BadRequest)
    assert err.status == 400
    assert err.code == "json_duplicate_key"
    assert "hunter2" not in err.title and "password" not in err.title
    # A flat object is one token: the offset is where it starts.
    assert err.offset == 0 and err.reason == "json_duplicate_key at byte 0"
    assert err.title == JsonRejected.TITLES["json_duplicate_key"]


def test_titles_are_fixed_per_code() -> None:
    titles = JsonRejected.TITLES
    assert len(set(titles.values())) == len(titles) == 7
    for code, title in titles.items():
        assert JsonRejected(code).title == title  # type: ignore[arg-type]


def test_offsets_point_at_the_offending_token() -> None:
    for body, offset in [
        (b'{"a": [1, 2, 1e999]}', 13),
        (b'  {"a": 1, "a": 2}', 2),
        (b'  {"a": [], "a": 2}', 12),
        (b"[1, 2, x]", 7),
        (b'"\xff"', 1),
    ]:
        with pytest.raises(JsonRejected) as info:
            check_json(body, DEFAULT)
        assert info.value.offset == offset, body


def test_limits_are_exact_boundaries() -> None:
    small = JsonLimits(max_depth=3, max_members=3, max_string=4, max_number_digits=5)
    check_json(b"[[[]]]", small)
    assert rejection(b"[[[[]]]]", small) == "json_too_deep"
    check_json(b"[1,2,3]", small)
    check_json(b'{"a":1,"b":2,"c":[1,2,3]}', small)
    assert rejection(b"[1,2,3,4]", small) == "json_too_many_members"
    assert rejection(b'{"a":1,"b":2,"c":3,"d":4}', small) == "json_too_many_members"
    check_json(b'{"abcd": "wxyz"}', small)
    assert rejection(b'"abcde"', small) == "json_string_too_long"
    assert rejection(b'{"abcde": 1}', small) == "json_string_too_long"
    assert rejection(b'["abcde"]', small) == "json_string_too_long"
    check_json(b"[12345, -1.234, 1.2e34]", small)
    assert rejection(b"123456", small) == "json_number_too_long"
    assert rejection(b"[1.2e3456]", small) == "json_number_too_long"
    assert rejection(b"[1.2e345]", small) == "json_number_out_of_range"
    check_json(b"0.00001", small)  # leading zeros are not counted...
    assert rejection(b"0." + b"0" * 20 + b"1", small) == "json_number_too_long"  # ...for long
    # Escapes count as written: "\u00e9" is six bytes of the raw token.
    assert rejection(b'"\\u00e9"', small) == "json_string_too_long"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_depth": 0}, {"max_depth": 1025}, {"max_members": -1}, {"max_string": 0},
        {"max_number_digits": 4301}, {"max_depth": True}, {"max_members": 1.5},
    ],
)
def test_unsafe_limits_are_refused_at_configuration(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        JsonLimits(**kwargs)  # type: ignore[arg-type]


def test_orjson_error_never_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Should the scan and the parser ever disagree, the caller still sees only JsonRejected.
    monkeypatch.setattr(jsonguard, "check_json", lambda body, limits: None)
    with pytest.raises(JsonRejected) as info:
        parse_json(b"[1,]", DEFAULT)
    assert info.value.code == "json_malformed"


# --- large bodies: windows, bounded memory and time -------------------------------------


def measure(fn: Callable[[], object]) -> tuple[float, int]:
    """Seconds taken, then peak bytes allocated (traced apart: tracing slows allocation)."""
    started = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - started
    tracemalloc.start()
    try:
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return elapsed, peak


HUGE = [
    ("10 MB string", b'"' + b"x" * 10_000_000 + b'"', "json_string_too_long"),
    ("10 MB string in an object", b'{"a": "' + b"\xc3\xa9" * 5_000_000 + b'"}',
     "json_string_too_long"),
    ("100,000 levels", b"[" * 100_000 + b"]" * 100_000, "json_too_deep"),
    ("100,000 levels of objects", b'{"a":' * 100_000, "json_too_deep"),
    ("2,000,000 members", b"[" + b"1," * 1_999_999 + b"1]", "json_too_many_members"),
    ("2,000,000 members in objects", b"[" + b"{}," * 1_999_999 + b"{}]",
     "json_too_many_members"),
    ("100,000 digits", b"[" + b"7" * 100_000 + b"]", "json_number_too_long"),
    ("10 MB of junk", b"[" + b"x" * 10_000_000, "json_malformed"),
]


@pytest.mark.parametrize(("name", "body", "code"), HUGE, ids=[h[0] for h in HUGE])
def test_huge_bodies_are_refused_in_bounded_memory_and_time(
    name: str, body: bytes, code: str
) -> None:
    def refuse() -> None:
        with pytest.raises(JsonRejected) as info:
            parse_json(body, DEFAULT)
        assert info.value.code == code

    elapsed, peak = measure(refuse)
    assert elapsed < 1.0, name
    assert peak < 50 * 2**20, name


def test_large_valid_body_is_scanned_across_windows() -> None:
    # Tokens of every kind straddle the 64 KiB window edges: strings, keys, numbers, literals
    # and flat containers, with runs of spaces longer than a window.
    doc = [
        {"id": i, "name": f"user {i}, with \"quotes\" and \\ ", "tags": ["a", str(i)],
         "score": i / 7, "big": 10**18 + i, "ok": i % 2 == 0, "none": None,
         "nested": {"k\u00e9y": [i, {"deep": [1.5e300]}]}}
        for i in range(3000)
    ]
    body = orjson.dumps(doc)
    cut = body.index(b',{"id"', 70_000) + 1
    body = body[:cut] + b" " * 70_000 + body[cut:]
    body = body.replace(b'"ok":', b'"ok"' + b" " * 70_000 + b":", 1)
    limits = JsonLimits(max_members=100_000)
    elapsed, peak = measure(lambda: check_json(body, limits))
    assert parse_json(body, limits) == doc
    assert peak < 20 * 2**20
    assert elapsed < 2.0


@pytest.mark.parametrize("shift", [0, 1, 2, 3, 5, 8, 13, 100, 1000])
def test_window_edges_do_not_change_the_verdict(shift: int) -> None:
    # The same duplicate placed at every distance from a window edge is still found.
    pad = b" " * (jsonguard._WINDOW - 20 + shift)
    body = b'{"pad": [' + pad + b'1], "a": "x", "b": [1, 1e999], "a": 2}'
    assert rejection(body, JsonLimits()) == "json_number_out_of_range"
    body = b'{"pad": [' + pad + b'1], "a": "x", "b": [1, 2], "a": 2}'
    assert rejection(body, JsonLimits()) == "json_duplicate_key"
    body = b'{"pad": [' + pad + b'1], "a": "x, \\"y\\"", "b": [1, 2], "c": 2}'
    check_json(body, JsonLimits())


def test_every_token_cut_by_a_window_edge_is_read_whole() -> None:
    tail = b'1.5e+300, -2.5E-3, 0.125, -0, 12345, true, false, null, "a\\u00e9", {"k": [1]}]'
    for shift in range(len(tail) + 2):
        # The body is not flat, so the array is tokenized piece by piece across the edge.
        body = b"[[]," + b" " * (jsonguard._WINDOW - 4 - shift) + tail
        assert parse_json(body, DEFAULT) == orjson.loads(body), shift
        assert rejection(body[:-1], DEFAULT) == "json_malformed", shift


def test_long_tokens_of_allowed_size_cross_windows() -> None:
    limits = JsonLimits(max_string=200_000, max_number_digits=4300)
    body = b'{"' + b"k" * 150_000 + b'": ["' + b"v" * 150_000 + b'", ' + b"9" * 19 + b"]}"
    assert rejection(body, limits) == "json_number_out_of_range"
    body = b'{"' + b"k" * 150_000 + b'"   :   ["' + b"v" * 150_000 + b'", 0.' + b"1" * 4000 + b"]}"
    assert parse_json(body, limits) == orjson.loads(body)
    assert rejection(body[:-3], limits) == "json_malformed"


# --- properties -------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=40,
)


def dumps(doc: object, *, pretty: bool) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 if pretty else 0)


@settings(max_examples=400, deadline=None)
@given(doc=documents, pretty=st.booleans())
def test_documents_within_limits_parse_unchanged(doc: object, pretty: bool) -> None:
    body = dumps(doc, pretty=pretty)
    check_json(body, DEFAULT)
    assert parse_json(body, DEFAULT) == doc


def depth_of(doc: object) -> int:
    if isinstance(doc, dict):
        return 1 + max(map(depth_of, doc.values()), default=0)
    if isinstance(doc, list):
        return 1 + max(map(depth_of, doc), default=0)
    return 0


SMALL = JsonLimits(max_depth=4, max_members=4, max_string=8, max_number_digits=20)


@settings(max_examples=300, deadline=None)
@given(doc=documents, pretty=st.booleans())
def test_small_limits_accept_exactly_what_fits(doc: object, pretty: bool) -> None:
    def fits(node: object) -> bool:
        if isinstance(node, dict):
            return len(node) <= 4 and all(
                len(orjson.dumps(k)) - 2 <= 8 and fits(v) for k, v in node.items())
        if isinstance(node, list):
            return len(node) <= 4 and all(map(fits, node))
        if isinstance(node, str):
            return len(orjson.dumps(node)) - 2 <= 8
        return True

    body = dumps(doc, pretty=pretty)
    if depth_of(doc) <= 4 and fits(doc):
        assert parse_json(body, SMALL) == doc
    else:
        assert rejection(body, SMALL) in {
            "json_too_deep", "json_too_many_members", "json_string_too_long"}


@settings(max_examples=200, deadline=None)
@given(doc=documents, extra=st.integers(min_value=1, max_value=3))
def test_over_the_limit_is_refused_with_its_code(doc: object, extra: int) -> None:
    deep = orjson.dumps(doc)
    for _ in range(SMALL.max_depth + extra):
        deep = b"[" + deep + b"]"
    assert rejection(deep, SMALL) in {"json_too_deep", "json_too_many_members",
                                      "json_string_too_long"}
    if depth_of(doc) == 0:
        wide = orjson.dumps([doc] * (SMALL.max_members + extra))
        assert rejection(wide, SMALL) in {"json_too_many_members", "json_string_too_long"}
        keyed = orjson.dumps({str(i): doc for i in range(SMALL.max_members + extra)})
        assert rejection(keyed, SMALL) in {"json_too_many_members", "json_string_too_long"}
        dup = orjson.dumps({"a": doc})[:-1] + b',"\\u0061":' + orjson.dumps(doc) + b"}"
        assert rejection(dup, SMALL) in {"json_duplicate_key", "json_string_too_long"}


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=9, max_size=30), digits=st.integers(min_value=21, max_value=60))
def test_long_strings_and_numbers_are_refused(text: str, digits: int) -> None:
    assert rejection(orjson.dumps([text]), SMALL) == "json_string_too_long"
    assert rejection(orjson.dumps({text: 1}), SMALL) == "json_string_too_long"
    assert rejection(b"[" + b"9" * digits + b"]", SMALL) == "json_number_too_long"


@settings(max_examples=300, deadline=None)
@given(value=st.integers(min_value=-(10**19) * 2, max_value=10**19 * 2))
def test_integers_outside_signed_64_bits_are_refused(value: int) -> None:
    body = orjson.dumps({"n": 0})[:-2] + str(value).encode() + b"}"
    if INT64_MIN <= value <= INT64_MAX:
        assert parse_json(body, DEFAULT) == {"n": value}
    else:
        assert rejection(body) == "json_number_out_of_range"


@settings(max_examples=300, deadline=None)
@given(value=st.floats(allow_nan=False), exponent=st.integers(min_value=-400, max_value=400))
def test_floats_agree_with_orjson(value: float, exponent: int) -> None:
    for body in (orjson.dumps(value) if math.isfinite(value) else b"1e400",
                 b"1.5e%d" % exponent, b"-9.99e%d" % exponent):
        try:
            expected = orjson.loads(body)
        except orjson.JSONDecodeError:
            assert rejection(body) == "json_number_out_of_range"
        else:
            assert parse_json(body, DEFAULT) == expected


JSONISH = st.sampled_from(
    [b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"u", b"d800", b"0", b"1", b"-", b".",
     b"e", b"true", b"null", b" ", b"\n", b'"a"', b'"a":', b"\xc3", b"\xa9", b"\x00", b"x"])


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=64) | st.lists(JSONISH, max_size=24).map(b"".join))
def test_random_bytes_only_ever_raise_json_rejected(body: bytes) -> None:
    try:
        check_json(body, DEFAULT)
    except JsonRejected:
        with pytest.raises(JsonRejected):
            parse_json(body, DEFAULT)
        return
    # Whatever the scan accepts, orjson parses.
    assert parse_json(body, DEFAULT) == orjson.loads(body)


@settings(max_examples=300, deadline=None)
@given(doc=documents)
def test_any_orjson_refusal_is_refused_too(doc: object) -> None:
    body = orjson.dumps(doc)
    for broken in (body[:-1], body + b",", b"[" + body, body.replace(b":", b",", 1)):
        try:
            orjson.loads(broken)
        except orjson.JSONDecodeError:
            assert rejection(broken) == "json_malformed"


@settings(max_examples=300, deadline=None)
@given(key=st.text(max_size=6), escape_all=st.booleans())
def test_duplicate_keys_are_found_through_escapes(key: str, escape_all: bool) -> None:
    escaped = "".join(
        f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 and (escape_all or ch.isalpha()) else ch
        for ch in key if ch not in '"\\' and ord(ch) >= 0x20
    )
    plain = orjson.dumps(orjson.loads(f'"{escaped}"')).decode()
    body = f'{{{plain}: 1, "{escaped}": 2}}'.encode()
    assert rejection(body) == "json_duplicate_key"
    nested = f'{{"x": [{{{plain}: [], "{escaped}": {{}}}}]}}'.encode()
    assert rejection(nested) == "json_duplicate_key"
