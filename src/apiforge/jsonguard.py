"""Structural limits on JSON request bodies, checked before the body is parsed.

A JSON body is hostile until its shape is known. Parsing first and checking afterwards is too
late: by then a 10 MB string, a two-million-member array or a 100,000-digit integer has already
been built (and Python's int-from-string conversion is quadratic, CVE-2020-10735), and a
100,000-level nesting has already reached the parser's recursion limit. Worse, parsers disagree:
orjson keeps the *last* of two duplicate keys, turns integers beyond 64 bits into floats, and a
gateway that validates one reading while its upstream acts on another is a bypass.

So :func:`check_json` scans the raw bytes first, iteratively and in bounded memory, and refuses
anything outside :class:`JsonLimits` or outside the subset of JSON on which every reader agrees;
:func:`parse_json` then hands the body to orjson exactly once::

    BadRequest                       400 (apiforge.errors)
    └── JsonRejected                 code: json_malformed | json_too_deep |
                                           json_too_many_members | json_string_too_long |
                                           json_number_too_long | json_number_out_of_range |
                                           json_duplicate_key

What is refused, beyond the limits:

- anything orjson refuses (bad grammar, trailing commas, trailing content, an empty body, a
  byte-order mark, ``NaN``/``Infinity``, invalid UTF-8 including encoded surrogates and
  overlong forms, lone ``\\uD800``-style surrogate escapes): ``json_malformed``;
- the same key twice in one object, compared after unescaping (``"a"`` and ``"\\u0061"`` are
  the same key): ``json_duplicate_key``;
- integers outside the signed 64-bit range, and numbers that overflow a double
  (``1e999999``): ``json_number_out_of_range``.

Every body :func:`check_json` accepts is one orjson parses, to the same values a strict reader
in any language would see.

How the scan works: one compiled regular expression splits the body into tokens in C
(``re.findall``), windows of 64 KiB at a time so the token list stays small; a flat loop drives
a state machine over them with an explicit stack, so no input can raise ``RecursionError``.
On this class of machine it costs about 1.5 µs for a 60-byte body and 20-40 ms per MiB.
"""

from __future__ import annotations

import codecs
import math
import operator
import re
import sys
from dataclasses import dataclass
from typing import ClassVar, Literal

import orjson

from apiforge.errors import BadRequest, ConfigurationError

__all__ = ["JsonLimits", "JsonRejectCode", "JsonRejected", "check_json", "parse_json"]

JsonRejectCode = Literal[
    "json_malformed",
    "json_too_deep",
    "json_too_many_members",
    "json_string_too_long",
    "json_number_too_long",
    "json_number_out_of_range",
    "json_duplicate_key",
]

# orjson refuses documents nested deeper than this; a higher limit would let check_json accept
# what parse_json then fails to parse.
_ORJSON_MAX_DEPTH = 1024
# The interpreter's own guard against quadratic int parsing (CVE-2020-10735).
_MAX_NUMBER_DIGITS_CAP = sys.int_info.default_max_str_digits


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """Limits on the shape of one JSON document; every field must be a positive integer.

    Attributes:
        max_depth: deepest nesting of objects and arrays (``[]`` is depth 1). Bounds the
            parser's recursion and the cost of walking the result. At most 1024, orjson's
            own limit.
        max_members: most members in one object, or elements in one array. Bounds hash-table
            and list growth per container (hash-flooding and allocation attacks).
        max_string: longest string, keys included, measured in **bytes of the raw token**
            between the quotes: UTF-8 bytes and escapes as written (``\\u00e9`` counts 6).
            That is never fewer than the decoded characters, so the limit is a safe upper
            bound on the decoded length, and it is checked without decoding anything.
        max_number_digits: most digits in one number literal, counting the digits of the
            integer part, the fraction and the exponent together; the sign, ``.``, ``e`` and
            the exponent's sign are not counted. Bounds number conversion, which is
            quadratic for Python ints (CVE-2020-10735). At most
            ``sys.int_info.default_max_str_digits`` (4300). The default, 20, admits every
            signed 64-bit integer and every double as orjson writes it.

    Raises:
        ConfigurationError: a field is not a positive integer or exceeds its cap.
    """

    max_depth: int = 32
    max_members: int = 10_000
    max_string: int = 65_536
    max_number_digits: int = 20

    def __post_init__(self) -> None:
        caps = {
            "max_depth": _ORJSON_MAX_DEPTH,
            "max_members": None,
            "max_string": None,
            "max_number_digits": _MAX_NUMBER_DIGITS_CAP,
        }
        for name, cap in caps.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(
                    f"json limits: {name} = {value!r} is not a positive integer; "
                    f"set it to a whole number of at least 1"
                )
            if cap is not None and value > cap:
                raise ConfigurationError(
                    f"json limits: {name} = {value!r} is above the maximum of {cap}; "
                    f"set it to {cap} or less"
                )


class JsonRejected(BadRequest):
    """A JSON body was refused before it was parsed (HTTP 400).

    ``code`` says which rule was broken; ``title`` is fixed text chosen per code and never
    carries the parser's message or any part of the body. ``offset`` (also in ``reason``, for
    the internal log only) is the byte offset at which the scan stopped, when known.

    Args:
        code: one of :data:`JsonRejectCode`.
        offset: byte offset in the body, for the security log.
    """

    TITLES: ClassVar[dict[str, str]] = {
        "json_malformed": "The request body is not valid JSON.",
        "json_too_deep": "The JSON body is nested too deeply.",
        "json_too_many_members": "A JSON object or array in the body has too many members.",
        "json_string_too_long": "A JSON string in the body is too long.",
        "json_number_too_long": "A JSON number in the body has too many digits.",
        "json_number_out_of_range": "A JSON number in the body is out of the supported range.",
        "json_duplicate_key": "A JSON object in the body has the same key more than once.",
    }

    def __init__(self, code: JsonRejectCode, *, offset: int | None = None) -> None:
        reason = code if offset is None else f"{code} at byte {offset}"
        super().__init__(code, self.TITLES[code], reason=reason)
        self.offset = offset


# --- the tokenizer ------------------------------------------------------------------------

# A string: runs of plain bytes between escapes (the unrolled form keeps sre from stacking one
# frame per character, so a 10 MB string scans in C at memchr-like speed). Control bytes must be
# escaped (RFC 8259 section 7). A \u escape is either a surrogate pair or not a surrogate: a
# lone surrogate has no UTF-8 form, and readers disagree about it (orjson refuses, others
# substitute U+FFFD or keep it), which makes it a smuggling vector. UTF-8 validity of the bytes
# themselves is checked separately, once, over the whole body.
_STRING = (
    rb'"[^"\\\x00-\x1f]*+'
    rb'(?:\\(?:["\\/bfnrt]'
    rb"|u(?:[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|(?![dD][89a-fA-F])[0-9a-fA-F]{4}))"
    rb'[^"\\\x00-\x1f]*+)*+"'
)
# RFC 8259 section 6: no leading zeros, no bare '.', no '+', no NaN or Infinity.
_NUMBER = rb"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?(?:[eE][+-]?[0-9]++)?"
_CORE = _STRING + rb"|[:,{}\[\]]|" + _NUMBER + rb"|true|false|null"
# A token with its trailing whitespace is captured, so the lengths of consecutive tokens add up
# to a byte offset. Anything else is malformed: the second branch swallows the rest of the
# window uncaptured, so findall yields one empty token for it and stops.
_TOKEN = re.compile(rb"((?:" + _CORE + rb")[ \t\n\r]*+)|[^ \t\n\r][\s\S]*+")
_CORE_TOKEN = re.compile(_CORE)
_LEADING_WS = re.compile(rb"[ \t\n\r]*+")
_WS = b" \t\n\r"

_WINDOW = 1 << 16  # bytes tokenized at a time: bounds the token list to a few MiB
_UTF8_CHUNK = 1 << 20  # bytes decoded at a time when checking UTF-8 of a large body

# Parser states: what the next token may be.
_VALUE = 0  # a value (top level, after ':' or after ',' in an array)
_VALUE_OR_CLOSE = 1  # just after '['
_KEY = 2  # after ',' in an object
_KEY_OR_CLOSE = 3  # just after '{'
_COLON = 4
_COMMA_OR_CLOSE = 5  # after a value inside a container
_DONE = 6  # after the top-level value

_NUMBER_START = frozenset(b"-0123456789")
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _check_utf8(body: bytes) -> None:
    """Refuse invalid UTF-8: overlong forms, encoded surrogates, truncated sequences."""
    if body.isascii():
        return
    if len(body) <= _UTF8_CHUNK:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonRejected("json_malformed", offset=exc.start) from exc
        return
    # Decode in pieces so the check never holds a decoded copy of a large body (as a str, up
    # to four times its size).
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    view = memoryview(body)
    for start in range(0, len(body), _UTF8_CHUNK):
        try:
            decoder.decode(view[start : start + _UTF8_CHUNK], start + _UTF8_CHUNK >= len(body))
        except UnicodeDecodeError as exc:
            # Near the error: the decoder may hold a sequence begun in the previous piece.
            raise JsonRejected("json_malformed", offset=start + max(exc.start, 0)) from exc


def _check_number(token: bytes, max_digits: int) -> JsonRejectCode | None:
    """Return why a number literal is refused, or None; the token has no trailing space."""
    digits = len(token.translate(None, b"-+.eE"))
    if digits > max_digits:
        return "json_number_too_long"
    if b"." in token or b"e" in token or b"E" in token:
        # orjson refuses what overflows a double; say why rather than "malformed". Both
        # parsers round correctly, so they agree on where infinity starts.
        return None if math.isfinite(float(token)) else "json_number_out_of_range"
    if digits > 19:  # beyond any 64-bit value, and no int() of a long string
        return "json_number_out_of_range"
    value = int(token)
    # orjson reads up to 2**64 - 1 as int, beyond as float: a signed 64-bit bound is the one
    # every upstream (Java long, Go int64, SQL BIGINT) reads the same way.
    if _INT64_MIN <= value <= _INT64_MAX:
        return None
    return "json_number_out_of_range"


def _key_identity(token: bytes) -> bytes:
    """The UTF-8 of a key's decoded value, quoted: equal for "a" and "\\u0061"."""
    if b"\\" not in token:
        return token  # no escapes: the raw bytes are already the UTF-8 of the value
    text: str = orjson.loads(token)  # a small, grammar-checked, UTF-8-checked string literal
    return b'"' + text.encode("utf-8") + b'"'


def check_json(body: bytes, limits: JsonLimits) -> None:
    """Check the structure of a JSON document without building it.

    Scans ``body`` once, iteratively: memory stays bounded by the limits and the scan window,
    whatever the input, and the time is linear in its length.

    Args:
        body: the raw request body.
        limits: the shape the document must fit.

    Raises:
        JsonRejected: the body is not JSON orjson would parse, or it breaks a limit, has a
            duplicate key or a number outside the agreed range. ``code`` says which.
    """
    _check_utf8(body)

    max_depth = limits.max_depth
    max_members = limits.max_members
    string_cap = limits.max_string + 2  # the raw token includes its quotes
    max_digits = limits.max_number_digits
    number_cap = min(max_digits, 18)  # an integer of 18 digits is always in 64-bit range

    findall = _TOKEN.findall
    n = len(body)
    # Windows after the first start on a token, so token lengths add up to offsets.
    pos = 0 if n <= _WINDOW else _skip_ws(body, 0)

    # The state of the enclosing containers, saved on the stack when a nested one opens.
    stack: list[tuple[bool, int, set[bytes]]] = []
    in_object = False
    count = 0  # commas seen in the current container: its members less one
    keys: set[bytes] = set()
    state = _VALUE
    after_value = _DONE  # the state after a complete value: _COMMA_OR_CLOSE inside containers

    while True:
        lone = False
        end = pos + _WINDOW
        final = end >= n
        if final:
            tokens: list[bytes] = findall(body, pos, n)
        else:
            tokens = findall(body, pos, end)
            # The last token may be cut by the window's edge (a malformed one always comes
            # last): leave it for the next window. Every token before it is whole.
            tokens.pop()
            if not tokens:  # one token longer than the window, or a malformed one
                token, resume = _lone_token(body, pos, string_cap, max_digits)
                tokens, lone, final = [token], True, resume >= n
        it = iter(tokens)
        code: JsonRejectCode
        for token in it:
            if not token:  # bytes no JSON token can start with
                code = "json_malformed"
                break
            c = token[0]
            if c == 34:  # '"'
                if state <= _VALUE_OR_CLOSE:
                    if len(token) > string_cap and len(token.rstrip(_WS)) > string_cap:
                        code = "json_string_too_long"
                        break
                    state = after_value
                elif state <= _KEY_OR_CLOSE:
                    if token[-1] != 34:
                        token = token.rstrip(_WS)
                    if len(token) > string_cap:
                        code = "json_string_too_long"
                        break
                    key = _key_identity(token)
                    if key in keys:
                        code = "json_duplicate_key"
                        break
                    keys.add(key)
                    state = _COLON
                else:
                    code = "json_malformed"
                    break
            elif c == 58:  # ':'
                if state != _COLON:
                    code = "json_malformed"
                    break
                state = _VALUE
            elif c == 44:  # ','
                if state != _COMMA_OR_CLOSE:
                    code = "json_malformed"
                    break
                count += 1
                if count >= max_members:
                    code = "json_too_many_members"
                    break
                state = _KEY if in_object else _VALUE
            elif c in _NUMBER_START:
                if state > _VALUE_OR_CLOSE:
                    code = "json_malformed"
                    break
                if not (len(token) <= number_cap and token.isdigit()):
                    problem = _check_number(token.rstrip(_WS), max_digits)
                    if problem is not None:
                        code = problem
                        break
                state = after_value
            elif c == 123 or c == 91:  # '{' or '['
                if state > _VALUE_OR_CLOSE:
                    code = "json_malformed"
                    break
                if len(stack) >= max_depth:
                    code = "json_too_deep"
                    break
                stack.append((in_object, count, keys))
                count = 0
                after_value = _COMMA_OR_CLOSE
                if c == 123:
                    in_object = True
                    keys = set()
                    state = _KEY_OR_CLOSE
                else:
                    in_object = False
                    state = _VALUE_OR_CLOSE
            elif c == 125:  # '}'
                if not (state == _KEY_OR_CLOSE or (state == _COMMA_OR_CLOSE and in_object)):
                    code = "json_malformed"
                    break
                in_object, count, keys = stack.pop()
                after_value = _COMMA_OR_CLOSE if stack else _DONE
                state = after_value
            elif c == 93:  # ']'
                if not (
                    state == _VALUE_OR_CLOSE or (state == _COMMA_OR_CLOSE and not in_object)
                ):
                    code = "json_malformed"
                    break
                in_object, count, keys = stack.pop()
                after_value = _COMMA_OR_CLOSE if stack else _DONE
                state = after_value
            else:  # true, false or null: the tokenizer yields no other word
                if state > _VALUE_OR_CLOSE:
                    code = "json_malformed"
                    break
                state = after_value
        else:
            if final:
                if state != _DONE:  # empty, or the document stops part-way
                    raise JsonRejected("json_malformed", offset=n)
                return
            pos = resume if lone else pos + sum(map(len, tokens))
            continue
        index = len(tokens) - operator.length_hint(it) - 1
        raise JsonRejected(code, offset=_skip_ws(body, pos) + sum(map(len, tokens[:index])))


def _skip_ws(body: bytes, pos: int) -> int:
    match = _LEADING_WS.match(body, pos)
    return pos if match is None else match.end()


def _lone_token(
    body: bytes, pos: int, string_cap: int, max_digits: int
) -> tuple[bytes, int]:
    """The single token at ``pos``, matched with no window, and where the next one starts.

    Only the span of the match is measured before anything is copied, so a 10 MB string is
    refused without a copy of it.
    """
    match = _CORE_TOKEN.match(body, pos)
    if match is None:
        raise JsonRejected("json_malformed", offset=pos)
    end = match.end()
    first = body[pos]
    if first == 34 and end - pos > string_cap:
        raise JsonRejected("json_string_too_long", offset=pos)
    if first in _NUMBER_START and end - pos > max_digits + 4:  # sign, '.', 'e', exponent sign
        raise JsonRejected("json_number_too_long", offset=pos)
    return body[pos:end], _skip_ws(body, end)


def parse_json(body: bytes, limits: JsonLimits) -> object:
    """Check a JSON body's structure, then parse it exactly once.

    Args:
        body: the raw request body.
        limits: the shape the document must fit.

    Returns:
        The parsed document (dict, list, str, int, float, bool or None).

    Raises:
        JsonRejected: see :func:`check_json`; the parser's own errors become
            ``json_malformed`` and its message never leaves the process.
    """
    check_json(body, limits)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # Unreachable while check_json and orjson agree; kept so a disagreement fails closed.
        raise JsonRejected("json_malformed") from exc
