"""Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP): the second factor.

Parameters are the ones every authenticator app understands: HMAC-SHA-1, 6 digits, 30-second
steps. A code is accepted in the current step and one step either side (clock drift, the time
it takes to type), so :func:`match_totp` tries three steps.

A code must not work twice (RFC 6238 section 5.2): :func:`match_totp` returns the time step it
matched, and the caller claims that step atomically in the store
(``RefreshStore.claim_totp_step``), which refuses any step not newer than the last one the
account used. An intercepted code is therefore dead as soon as its owner has used it, and a
code older than the last one used is dead too.

SHA-1 is not a weakness here: HOTP needs HMAC's pseudo-randomness, not collision resistance.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from typing import Final
from urllib.parse import quote, urlencode

__all__ = [
    "TOTP_DIGITS",
    "TOTP_STEP",
    "TOTP_WINDOW",
    "check_totp_secret",
    "match_totp",
    "new_totp_secret",
    "provisioning_uri",
    "totp_code",
    "totp_step",
]

TOTP_DIGITS: Final = 6
TOTP_STEP: Final = 30
TOTP_WINDOW: Final = 1
"""Steps accepted either side of the current one."""
SECRET_BYTES: Final = 20
"""160 bits: the HMAC-SHA-1 key length RFC 4226 section 4 recommends."""
MIN_SECRET_BYTES: Final = 16
"""128 bits: the shortest shared secret RFC 4226 section 4 allows."""

_CODE_RE: Final = re.compile(r"[0-9]{6}", re.ASCII)


def new_totp_secret() -> str:
    """A fresh shared secret: 160 random bits, base32 without padding (32 characters)."""
    return base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii").rstrip("=")


def _key(secret: str) -> bytes:
    text = secret.replace(" ", "").upper()
    if not text:
        raise ValueError("TOTP secret is empty")
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise ValueError("TOTP secret is not base32") from None


def check_totp_secret(secret: str) -> None:
    """Refuse a secret that is not base32 or shorter than 128 bits.

    Raises:
        ValueError: naming the problem (never the secret).
    """
    if len(_key(secret)) < MIN_SECRET_BYTES:
        raise ValueError(f"TOTP secret must hold at least {MIN_SECRET_BYTES * 8} bits")


def totp_step(at: float, *, step: int = TOTP_STEP) -> int:
    """The time step counter of ``at`` (seconds since the epoch)."""
    return int(at // step)


def _hotp(key: bytes, counter: int, digits: int) -> str:
    # RFC 4226 section 5.3: HMAC of the 8-byte counter, dynamic truncation, modulo 10^digits.
    mac = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = mac[-1] & 0x0F
    number = int.from_bytes(mac[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(number % 10**digits).rjust(digits, "0")


def totp_code(
    secret: str, at: float, *, digits: int = TOTP_DIGITS, step: int = TOTP_STEP
) -> str:
    """The code for ``at`` (seconds since the epoch).

    Args:
        secret: the base32 shared secret.
        at: the time.
        digits: code length (6 in use; 8 reproduces the RFC 6238 test vectors).
        step: seconds per step.

    Raises:
        ValueError: the secret is not base32.
    """
    return _hotp(_key(secret), totp_step(at, step=step), digits)


def match_totp(secret: str, code: str, now: float) -> int | None:
    """The time step whose code ``code`` is, within one step of ``now``; ``None`` otherwise.

    Args:
        secret: the account's base32 shared secret.
        code: what the user typed: exactly six ASCII digits, anything else is refused before
            any HMAC is computed.
        now: the current time (seconds since the epoch).

    Returns:
        The matched step, to be claimed with ``claim_totp_step`` (replay protection), or
        ``None``. Every candidate is compared in constant time, and all are compared.
    """
    if not isinstance(code, str) or _CODE_RE.fullmatch(code) is None:
        return None
    key = _key(secret)
    current = totp_step(now)
    matched: int | None = None
    for counter in (current - TOTP_WINDOW, current, current + TOTP_WINDOW):
        expected = _hotp(key, counter, TOTP_DIGITS)
        if hmac.compare_digest(expected.encode("ascii"), code.encode("ascii")) and (
            matched is None
        ):
            matched = counter
    return matched


def provisioning_uri(secret: str, username: str, issuer: str) -> str:
    """The ``otpauth://`` URI an authenticator app scans as a QR code.

    The label is ``issuer:username`` and ``issuer`` is repeated as a parameter (the Key URI
    format authenticator apps follow); both are percent-encoded, so a ``:`` in either cannot
    shift the label.

    Args:
        secret: the base32 shared secret (the URI is a secret too: show it once, never log it).
        username: the account's name, shown in the app.
        issuer: the service's name, shown in the app.
    """
    label = f"{quote(issuer, safe='')}:{quote(username, safe='')}"
    query = urlencode(
        {"secret": secret, "issuer": issuer, "algorithm": "SHA1", "digits": TOTP_DIGITS,
         "period": TOTP_STEP},
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"
