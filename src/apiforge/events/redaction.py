"""Redaction: the one step every event passes through before any sink sees it.

Two nets, because secrets reach logs two ways:

* by **key**: a value stored under ``authorization``, ``password``, ``token``... is replaced
  whole, whatever its shape (keys compare case-, ``-`` and ``_``-insensitively, so
  ``X-Api-Key``, ``x_api_key`` and ``XAPIKEY`` are one key);
* by **shape**: inside every string, JWTs, bearer credentials, APIForge API keys
  (``afk_<env>_<id>_<secret>``), credentials in query strings and payment card numbers (digit
  runs that pass the Luhn check) are replaced wherever they appear, e.g. in a logged header
  value or a client-supplied field.

Event details may carry attacker-controlled data, so the output is also bounded: long strings
are truncated, deep nesting and huge containers are cut, bytes are never written out. The
result is always JSON-ready (dicts with string keys, lists, str, int, float, bool, None).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping

__all__ = [
    "MAX_DEPTH",
    "MAX_ITEMS",
    "MAX_STRING",
    "REDACTED",
    "SENSITIVE_KEYS",
    "is_sensitive_key",
    "luhn_valid",
    "redact",
    "redact_text",
]

REDACTED = "[REDACTED]"
MAX_STRING = 2048
"""Longest string kept; longer ones are cut so one request can't flood the log."""
MAX_DEPTH = 16
"""Deepest nesting kept; deeper values are replaced by a marker."""
MAX_ITEMS = 256
"""Most entries kept per dict or list; the rest are summarised by a marker."""


def _normalise_key(key: str) -> str:
    return key.lower().replace("-", "").replace("_", "")


SENSITIVE_KEYS: frozenset[str] = frozenset(
    _normalise_key(k)
    for k in (
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api_key",
        "apikey",
        "password",
        "passwd",
        "new_password",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "otp",
        "totp",
        "pepper",
        "private_key",
        "session",
    )
)
"""Keys whose values are always replaced, normalised (lower case, no ``-`` or ``_``)."""

# Keys that merely end with one of these are secrets too (``db_password``, ``csrf_token``,
# ``x-auth-token``, ``webhook_secret``). Only suffixes: ``token_type`` or ``password_policy``
# carry no secret and stay readable.
_SENSITIVE_SUFFIXES: tuple[str, ...] = tuple(
    _normalise_key(k) for k in ("password", "passwd", "secret", "token", "api_key", "private_key")
)

_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# RFC 6750 b64token after the scheme; keep the scheme so the log still says what was sent.
_BEARER = re.compile(r"\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)
# Our API keys: afk_<env>_<id>_<secret>; the secret may itself contain '_' and '-'.
_API_KEY = re.compile(r"\bafk_[A-Za-z0-9]+_[A-Za-z0-9]+_[A-Za-z0-9_-]+")
# Credentials in a logged URL or form body (OAuth tokens in query strings, RFC 6750 section 2.3).
_QUERY_SECRET = re.compile(
    r"(?i)\b([\w.-]*(?:token|api_?key|password|passwd|secret|session))="
    r"(?!\[REDACTED\])[^&\s#;,\"']+"
)
# 13 to 19 digits, single spaces or dashes allowed between them, not part of a longer run.
# ASCII digits only: ``\d`` would also match other scripts' digits, which no card uses.
_CARD = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
_SEPARATORS = re.compile(r"[ -]")

# A string longer than this is cut before the patterns run, so their cost stays bounded; the
# patterns run before the final cut so a secret is never split into an unrecognisable half.
_SCAN_LIMIT = MAX_STRING * 4


_CARD_MIN = 10**12  # the smallest 13-digit number


def is_sensitive_key(key: str) -> bool:
    """Whether a value stored under ``key`` is always a secret."""
    norm = _normalise_key(key)
    return norm in SENSITIVE_KEYS or norm.endswith(_SENSITIVE_SUFFIXES)


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check that every payment card number passes.

    Args:
        digits: ASCII digits only.
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _mask_card(digits: str) -> str:
    return f"[CARD ****{digits[-4:]}]"


def _card_sub(match: re.Match[str]) -> str:
    text = match.group()
    digits = _SEPARATORS.sub("", text)
    if luhn_valid(digits):
        return _mask_card(digits)
    # The longest run failed, but a card may sit inside it ("4111 1111 1111 1111 7"): try every
    # span of whole separator-delimited groups, longest first.
    groups = _SEPARATORS.split(text)
    if len(groups) < 2:
        return text
    seps = _SEPARATORS.findall(text)
    n = len(groups)
    spans = sorted(
        ((i, j) for i in range(n) for j in range(i + 1, n + 1)),
        key=lambda span: span[0] - span[1],
    )
    for i, j in spans:
        candidate = "".join(groups[i:j])
        if 13 <= len(candidate) <= 19 and luhn_valid(candidate):
            head = "".join(g + s for g, s in zip(groups[:i], seps[:i], strict=True))
            tail = "".join(s + g for s, g in zip(seps[j - 1 :], groups[j:], strict=True))
            return head + _mask_card(candidate) + tail
    return text


def _bearer_sub(match: re.Match[str]) -> str:
    return f"{match.group(1)} {REDACTED}"


def _query_sub(match: re.Match[str]) -> str:
    return f"{match.group(1)}={REDACTED}"


def _redact_int(value: int) -> object:
    if -_CARD_MIN < value < _CARD_MIN:
        return value
    if value.bit_length() > 64:
        # The JSON writer refuses integers beyond 64 bits, and converting a huge one to text is
        # itself bounded by Python (CVE-2020-10735): record only its size.
        return f"[integer of {value.bit_length()} bits]"
    digits = str(abs(value))
    if len(digits) <= 19 and luhn_valid(digits):
        # A card number stored as a number is still a card number.
        return _mask_card(digits)
    return value


def redact_text(text: str) -> str:
    """Replace secret-shaped substrings of ``text`` and cut it to :data:`MAX_STRING` characters.

    Args:
        text: any string, possibly attacker-controlled.

    Returns:
        The text with JWTs, bearer credentials, API keys and query-string credentials replaced
        by ``[REDACTED]``, card numbers by ``[CARD ****<last 4>]``, and a marker at the end if it
        was too long.
    """
    original_length = len(text)
    if original_length > _SCAN_LIMIT:
        text = text[:_SCAN_LIMIT]
    # Cheap guards first: most strings in events are short words with none of these shapes.
    if "eyJ" in text:
        text = _JWT.sub(REDACTED, text)
    text = _BEARER.sub(_bearer_sub, text)
    if "afk_" in text:
        text = _API_KEY.sub(REDACTED, text)
    if "=" in text:
        text = _QUERY_SECRET.sub(_query_sub, text)
    text = _CARD.sub(_card_sub, text)
    if len(text) > MAX_STRING or original_length > _SCAN_LIMIT:
        text = f"{text[:MAX_STRING]}...[truncated {original_length} chars]"
    return text


def _redact(value: object, depth: int) -> object:
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return _redact_int(value)
    if depth >= MAX_DEPTH:
        return "[TRUNCATED: too deep]"
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for count, (key, item) in enumerate(value.items()):
            if count >= MAX_ITEMS:
                out["..."] = f"[TRUNCATED: {len(value) - MAX_ITEMS} more keys]"
                break
            name = key if isinstance(key, str) else str(key)
            if is_sensitive_key(name):
                out[redact_text(name)] = REDACTED
            else:
                out[redact_text(name)] = _redact(item, depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items: list[object] = []
        for count, item in enumerate(value):
            if count >= MAX_ITEMS:
                items.append(f"[TRUNCATED: {len(value) - MAX_ITEMS} more items]")
                break
            items.append(_redact(item, depth + 1))
        return items
    if isinstance(value, bytes | bytearray | memoryview):
        # Raw bytes are bodies or key material: record only that they were there.
        return f"[{len(value)} bytes]"
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    # Anything else is written as its text, which goes through the same nets.
    return redact_text(str(value))


def redact(value: object) -> object:
    """Return a JSON-ready copy of ``value`` with every secret replaced.

    Walks dicts, lists, tuples and sets. A value under a sensitive key (see
    :data:`SENSITIVE_KEYS`; also keys ending in ``password``, ``secret``, ``token``,
    ``api_key`` or ``private_key``) becomes ``[REDACTED]`` whatever its type. Every string,
    keys included, goes through :func:`redact_text`. Bytes are replaced by their length; other
    objects by their redacted ``str``. Nesting beyond :data:`MAX_DEPTH` and entries beyond
    :data:`MAX_ITEMS` are cut with a marker.

    Args:
        value: an event dict, or any part of one.

    Returns:
        The redacted copy; the input is not modified.
    """
    return _redact(value, 0)
