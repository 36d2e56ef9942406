"""The verified-token cache: skip repeating a signature check for the exact same token.

A client sends the same bearer token on every request until it expires; checking its signature
each time costs 50 to 100 µs of CPU (ES256, EdDSA), a third or more of a small request. The cache
remembers tokens that passed *full* verification, keyed by a BLAKE2b digest of the complete
token text (:func:`token_digest`), until the token's ``exp`` and never longer.

Why skipping the signature on a hit is safe:

- **The entry binds the exact bytes that were verified.** The key is the BLAKE2b-512 digest of
  the whole token (header, claims and signature). A hit means the caller presented those very
  bytes again, and finding another token with the same digest is a BLAKE2b second preimage (no
  easier than one of SHA-256; BLAKE2b costs half as much here, on a CPU without SHA
  instructions). Changing any claim,
  the ``kid``, the ``alg`` or one bit of the signature changes the digest and misses.
- **Only what cannot change is skipped.** The signature and the structural and type checks over
  fixed bytes give the same answer every time they run on the same bytes with the same keys.
  Everything that depends on time, on revocation state or on the route is re-checked on every
  hit: ``exp`` and ``nbf`` against ``now`` (and entries disappear at ``exp``), the route's
  audience, and, by the caller on every token whether cached or not, the ``jti`` denylist, the
  account's status and version, and the route's scopes.
- **Keys that change are handled.** When a signing key is removed from (or replaced in) a key
  set, :meth:`VerifiedTokenCache.flush` drops every entry, so a token signed by a withdrawn key
  is fully re-verified, and refused, on its next use.
- **Only full successes are stored.** A refusal is never cached, so a token cannot be "warmed"
  by a failure, and the cache holds nothing an attacker can fill without a valid token.

The cache is bounded (least recently used entries are evicted first), belongs to one verifier
(one set of trusted issuers), and stores no secret: only digests and verified claims.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from hashlib import blake2b
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apiforge.identity.tokens import VerifiedToken

__all__ = ["VerifiedTokenCache", "token_digest"]


def token_digest(token: str) -> bytes:
    """The cache key of a token (ASCII text): its BLAKE2b-512 digest, never the token itself."""
    return blake2b(token.encode("ascii")).digest()


class VerifiedTokenCache:
    """A bounded LRU map from token digest to a fully verified token.

    Args:
        max_entries: the most tokens kept. When full, the least recently used entry is evicted,
            so a flood of distinct valid tokens costs memory proportional to this bound only.

    Raises:
        ValueError: ``max_entries`` is not positive.
    """

    __slots__ = ("_entries", "_max", "evictions", "flushes", "hits", "misses")

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self._max = max_entries
        self._entries: OrderedDict[bytes, VerifiedToken] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.flushes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, *, now: float | None = None) -> VerifiedToken | None:
        """The verified token with this digest, if cached and not past its ``exp``.

        The caller must still check ``nbf``, audience, scopes, ``jti`` and the account: this
        answers only "these exact bytes passed full verification under the current keys".

        Args:
            digest: :func:`token_digest` of the complete token text.
            now: the current time (seconds since the epoch).
        """
        entry = self._entries.get(digest)
        if entry is None:
            self.misses += 1
            return None
        if (time.time() if now is None else now) >= entry.exp:
            # RFC 7519 section 4.1.4: at or after exp the token must not be accepted.
            self._entries.pop(digest, None)
            self.misses += 1
            return None
        self._entries.move_to_end(digest)
        self.hits += 1
        return entry

    def put(self, token: VerifiedToken, *, now: float | None = None) -> None:
        """Remember a token that passed full verification (never a refused one).

        Args:
            token: the verified token; its ``digest`` is the key and its ``exp`` the expiry.
            now: the current time; a token already at or past ``exp`` is not stored.
        """
        if (time.time() if now is None else now) >= token.exp:
            return
        entries = self._entries
        entries[token.digest] = token
        entries.move_to_end(token.digest)
        while len(entries) > self._max:
            entries.popitem(last=False)
            self.evictions += 1

    def discard(self, digest: bytes) -> None:
        """Drop one entry (for example, a token whose ``jti`` was just revoked)."""
        self._entries.pop(digest, None)

    def flush(self, *_: object) -> None:
        """Drop every entry. Called when a signing key is removed or replaced.

        Accepts and ignores arguments so it can be registered directly as a key-removal
        listener.
        """
        self._entries.clear()
        self.flushes += 1
