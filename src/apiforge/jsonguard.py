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
(``re.findall``), 16 KiB at a time so the token list stays small. A whole object or array of
plain scalars is a single token (most request bodies are one), checked with one more C-level
pass for its keys; everything else drives a flat state machine with an explicit stack, so no
input can raise ``RecursionError``. Measured on a 2-vCPU EPYC: 2.5-3 µs for a 57-byte flat
object (orjson.loads then adds 0.4 µs); per MiB, 12 ms for string-heavy bodies, about 40 ms
for lists of flat objects, 85-95 ms for number-dense or deeply mixed ones. Refusals stop at
the first broken rule: 100,000 nested arrays or two million members cost a few milliseconds.
"""

from __future__ import annotations

import codecs
import itertools
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
        max_number_digits: most digits in one number literal, counting the significand from
            its first non-zero digit and the exponent together: ``-0.00012e-7`` has three.
            Leading zeros are not counted, but no literal may be longer than this limit plus
            12 characters, so a run of zeros is bounded too. Bounds number conversion, which
            is quadratic for Python ints (CVE-2020-10735). At most
            ``sys.int_info.default_max_str_digits`` (4300). The default, 20, admits every
            signed 64-bit integer and every double as orjson writes it (17 significant
            digits and a three-digit exponent at most).

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

_WS = rb"[ \t\n\r]*+"
# A string: runs of plain bytes between escapes (the unrolled form scans a long string in one
# C loop instead of stacking a frame per character). Control bytes must be escaped (RFC 8259
# section 7). A \u escape is a surrogate pair or no surrogate at all: a lone surrogate has no
# UTF-8 form and readers disagree about it (orjson refuses it, others substitute U+FFFD or keep
# it), which makes it a smuggling vector. The UTF-8 of the bytes themselves is checked once,
# over the whole body.
_STRING = (
    rb'"[^"\\\x00-\x1f]*+'
    rb'(?:\\(?:["\\/bfnrt]'
    rb"|u(?:[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|(?![dD][89a-fA-F])[0-9a-fA-F]{4}))"
    rb'[^"\\\x00-\x1f]*+)*+"'
)
# RFC 8259 section 6: no leading zeros, no bare '.', no '+', no NaN or Infinity.
_NUMBER = rb"-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+"
# Numbers that need no check: at most 18 digits and no exponent, so always in the signed
# 64-bit range, finite, and within any digit limit of 18 or more.
_SAFE_NUMBER = rb"-?+(?:(?:0|[1-9][0-9]{0,8}+)\.[0-9]{1,9}+|0|[1-9][0-9]{0,17}+)"
_SAFE_SCALAR = _STRING + rb"|" + _SAFE_NUMBER + rb"|true|false|null"
_MEMBER = _STRING + _WS + rb":" + _WS + rb"(?:" + _SAFE_SCALAR + rb")" + _WS
_ELEMENT = rb"(?:" + _SAFE_SCALAR + rb")" + _WS
# A whole object or array of safe scalars is one token: most bodies are made of these, and
# one match in C costs far less than a Python step per member.
_FLAT_OBJECT = rb"\{" + _WS + rb"(?:" + _MEMBER + rb"(?:," + _WS + _MEMBER + rb")*+)?+\}"
_FLAT_ARRAY = rb"\[" + _WS + rb"(?:" + _ELEMENT + rb"(?:," + _WS + _ELEMENT + rb")*+)?+\]"
# A string followed by ':' is a key; the colon is part of its token.
_FINE = _STRING + _WS.join([b"(?:", b":)?+|"]) + _NUMBER + rb"|[,{}\[\]]|true|false|null"
_COARSE = _FLAT_OBJECT + rb"|" + _FLAT_ARRAY + rb"|" + _FINE
_JUNK = rb"[^ \t\n\r][\s\S]*+"  # the rest of the window, from a byte no token starts with


def _tokenizers(core: bytes) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    # Whitespace between tokens is skipped by findall. In the last window, junk yields one
    # empty token; in an earlier one it is captured whole, so rfind can place it (it is never
    # checked there: the window's last two tokens are left for the next window).
    return re.compile(b"(" + core + b")|" + _JUNK), re.compile(b"(" + core + b"|" + _JUNK + b")")


_COARSE_LAST, _COARSE_WINDOW = _tokenizers(_COARSE)
_FINE_LAST, _FINE_WINDOW = _tokenizers(_FINE)
_STRING_TOKEN = re.compile(_STRING)
_VALUE_TOKEN = re.compile(_NUMBER + rb"|[,{}\[\]]|true|false|null")
_COLON = re.compile(_WS + rb":")
_SPACE = re.compile(_WS)

# Inside a flat container already matched above, strings are well formed, so these looser
# patterns split it exactly. The keys patterns step from pair to pair, capturing the key and
# skipping the value; the first serves the usual token with no backslash at all and runs three
# times faster than the second. _FLAT_SCALARS yields every key and value.
_FLAT_KEYS_PLAIN = re.compile(rb'("[^"]*+")' + _WS + b":" + _WS + rb'(?:"[^"]*+"|[^,}]++)')
_LOOSE_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_FLAT_KEYS_ESCAPED = re.compile(
    b"(" + _LOOSE_STRING + b")" + _WS + b":" + _WS + b"(?:" + _LOOSE_STRING + rb"|[^,}]++)"
)
_FLAT_SCALARS = re.compile(_LOOSE_STRING + rb"|[^,\[\]{}: \t\n\r]++")

_WINDOW = 1 << 14  # bytes tokenized at a time: bounds the token list, and the work wasted
# on a window that a refusal cuts short
_UTF8_CHUNK = 1 << 20  # bytes decoded at a time when checking the UTF-8 of a large body

# Parser states: what the next token may be.
_VALUE = 0  # a value (top level, after a key or after ',' in an array)
_VALUE_OR_CLOSE = 1  # just after '['
_KEY = 2  # after ',' in an object
_KEY_OR_CLOSE = 3  # just after '{'
_COMMA_OR_CLOSE = 4  # after a value inside a container
_DONE = 5  # after the top-level value

_NUMBER_START = frozenset(b"-0123456789")
_NUMBER_SLACK = 12  # characters a number may have beyond its counted digits
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
    """Return why a number literal is refused, or None."""
    # Leading zeros are free (orjson writes small doubles as 0.0000123...), the total length
    # is not: a run of zeros costs as much to convert as any other digits.
    digits = len(token.lstrip(b"-0.").translate(None, b"+-.eE"))
    if digits > max_digits or len(token) > max_digits + _NUMBER_SLACK:
        return "json_number_too_long"
    if 46 in token or 101 in token or 69 in token:  # '.', 'e', 'E'
        # orjson refuses what overflows a double; say why rather than "malformed". Both
        # parsers round correctly, so they agree on where infinity starts.
        return None if math.isfinite(float(token)) else "json_number_out_of_range"
    if digits > 19:  # beyond any 64-bit value, and no int() of a long string
        return "json_number_out_of_range"
    # orjson reads up to 2**64 - 1 as an int and beyond as a float; the signed 64-bit range is
    # the one every upstream (Java long, Go int64, SQL BIGINT) reads the same way.
    return None if _INT64_MIN <= int(token) <= _INT64_MAX else "json_number_out_of_range"


def _key_identity(token: bytes) -> bytes:
    """The UTF-8 of a key's decoded value, quoted, so "a" and "\\u0061" are the same key."""
    if 92 not in token:  # no backslash (an int test: far faster than a bytes one)
        return token  # no escapes: the raw bytes are already the UTF-8 of the value
    text: str = orjson.loads(token)  # a small, well-formed string literal in valid UTF-8
    return b'"' + text.encode("utf-8") + b'"'


def _check_flat_object(
    token: bytes, max_members: int, string_cap: int
) -> JsonRejectCode | None:
    keys: list[bytes]
    if 92 in token:  # a backslash
        keys = [_key_identity(key) for key in _FLAT_KEYS_ESCAPED.findall(token)]
    else:
        keys = _FLAT_KEYS_PLAIN.findall(token)
    if len(set(keys)) != len(keys):
        return "json_duplicate_key"
    if len(keys) > max_members:
        return "json_too_many_members"
    if len(token) > string_cap:
        for part in _FLAT_SCALARS.findall(token):  # keys and values
            if part[0] == 34 and len(part) > string_cap:
                return "json_string_too_long"
    return None


def _check_flat_array(token: bytes, max_members: int, string_cap: int) -> JsonRejectCode | None:
    # A flat array of n elements is at least 2n + 1 bytes, and no string in it is longer than
    # the token: most are decided by length alone.
    if len(token) <= 2 * max_members + 1 and len(token) <= string_cap:
        return None
    scalars: list[bytes] = _FLAT_SCALARS.findall(token)
    if len(scalars) > max_members:
        return "json_too_many_members"
    for scalar in scalars:
        if scalar[0] == 34 and len(scalar) > string_cap:
            return "json_string_too_long"
    return None


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
    # Flat containers are one token only while their numbers need no digit check.
    last_tokens, window_tokens = (
        (_COARSE_LAST, _COARSE_WINDOW) if max_digits >= 18 else (_FINE_LAST, _FINE_WINDOW)
    )

    n = len(body)
    if n <= _WINDOW:
        tokens: list[bytes] = last_tokens.findall(body)
        if len(tokens) == 1 and len(tokens[0]) > 1 and tokens[0][0] in b"{[":
            # The usual small body, one flat object or array: no state machine to run.
            token = tokens[0]
            problem = (
                _check_flat_object(token, max_members, string_cap)
                if token[0] == 123
                else _check_flat_array(token, max_members, string_cap)
            )
            if problem is not None:
                raise JsonRejected(problem, offset=_skip_space(body, 0))
            return
        pos = 0
    else:
        pos = _skip_space(body, 0)

    # The state of the enclosing containers, saved on the stack when a nested one opens.
    stack: list[tuple[bool, int, set[bytes]]] = []
    in_object = False
    count = 0  # commas seen in the current container: its members less one
    keys: set[bytes] = set()
    state = _VALUE
    after_value = _DONE  # the state after a complete value: _COMMA_OR_CLOSE inside containers

    while True:
        end = pos + _WINDOW
        final = end >= n
        resume = -1
        if final:
            end = n
            if pos or n > _WINDOW:  # else the small body was tokenized above
                tokens = last_tokens.findall(body, pos, n)
        else:
            tokens = window_tokens.findall(body, pos, end)
            # The window's edge may cut the last token, and the one before it too ("1.5e|7"
            # reads as the number "1.5" and junk): both start the next window. Only spaces
            # follow a token's last occurrence, so rfind finds each where it starts.
            resume = body.rfind(tokens.pop(), pos, end)
            if tokens:
                resume = body.rfind(tokens.pop(), pos, resume)
            if not tokens:  # one or two tokens fill the window, or junk
                token, resume = _lone_token(body, pos, string_cap, max_digits)
                tokens = [token]
                final = resume >= n
        it = iter(tokens)
        code: JsonRejectCode
        for token in it:
            if not token:  # bytes no JSON token starts with
                code = "json_malformed"
                break
            c = token[0]
            if c == 34:  # '"'
                if token[-1] == 58:  # a key and its ':'
                    if not _KEY <= state <= _KEY_OR_CLOSE:
                        code = "json_malformed"
                        break
                    key = token[:-1] if token[-2] == 34 else token[:-1].rstrip(b" \t\n\r")
                    if len(key) > string_cap:
                        code = "json_string_too_long"
                        break
                    key = _key_identity(key)
                    if key in keys:
                        code = "json_duplicate_key"
                        break
                    keys.add(key)
                    state = _VALUE
                else:
                    if state > _VALUE_OR_CLOSE:
                        code = "json_malformed"
                        break
                    if len(token) > string_cap:
                        code = "json_string_too_long"
                        break
                    state = after_value
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
                    problem = _check_number(token, max_digits)
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
                if len(token) > 1:  # a whole flat object or array
                    problem = (
                        _check_flat_object(token, max_members, string_cap)
                        if c == 123
                        else _check_flat_array(token, max_members, string_cap)
                    )
                    if problem is not None:
                        code = problem
                        break
                    state = after_value
                    continue
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
            pos = resume
            continue
        index = len(tokens) - operator.length_hint(it) - 1
        if resume >= 0 and len(tokens) == 1:  # the lone token
            offset = pos
        else:
            pattern = last_tokens if final else window_tokens
            offset = next(itertools.islice(pattern.finditer(body, pos, end), index, None)).start()
        raise JsonRejected(code, offset=offset)


def _skip_space(body: bytes, pos: int) -> int:
    match = _SPACE.match(body, pos)
    return pos if match is None else match.end()


def _lone_token(body: bytes, pos: int, string_cap: int, max_digits: int) -> tuple[bytes, int]:
    """The single token at ``pos``, matched with no window, and where the next one starts.

    The span of the match is measured before anything is copied, so a 10 MB string or number
    is refused without a copy of it.
    """
    first = body[pos]
    if first == 34:
        match = _STRING_TOKEN.match(body, pos)
        if match is None:
            raise JsonRejected("json_malformed", offset=pos)
        end = match.end()
        if end - pos > string_cap:
            raise JsonRejected("json_string_too_long", offset=pos)
        colon = _COLON.match(body, end)
        if colon is not None:  # a key, however much space before its ':'
            return body[pos:end] + b":", _skip_space(body, colon.end())
        return body[pos:end], _skip_space(body, end)
    match = _VALUE_TOKEN.match(body, pos)
    if match is None:
        raise JsonRejected("json_malformed", offset=pos)
    end = match.end()
    if first in _NUMBER_START and end - pos > max_digits + _NUMBER_SLACK:
        raise JsonRejected("json_number_too_long", offset=pos)
    return body[pos:end], _skip_space(body, end)


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
