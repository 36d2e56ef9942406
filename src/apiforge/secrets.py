"""A wrapper that keeps secret strings out of logs, tracebacks and reprs.

Every API key, pepper, token and password that passes through APIForge travels as a
:class:`Secret`. Its ``repr`` and ``str`` are a fixed mask, so a secret that ends up in a log
line, an exception message or a debugger's variable view shows nothing. The value is read only
through :meth:`Secret.reveal`, which makes every place that touches the plaintext easy to find.
"""

from __future__ import annotations

import hmac
from typing import Final, NoReturn

__all__ = ["Secret"]

_MASK: Final = "**********"


class Secret:
    """A string whose value is shown only on request.

    Args:
        value: the secret text. It is kept as it is; nothing is logged or copied elsewhere.

    Equality compares in constant time (``hmac.compare_digest``), so comparing a secret with a
    candidate does not leak how many leading characters matched. Secrets are deliberately not
    hashable (they are never dict keys or set members, where they could be listed) and cannot be
    pickled (so they are not written to caches or queues by accident).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret wraps a str")
        self._value: Final = value

    def reveal(self) -> str:
        """Return the plaintext. Call it only where the value is needed, never to log it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{_MASK}')"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, format_spec: str) -> str:
        return _MASK

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled")
