"""Password hashing: argon2id, never a fast hash (a stolen table must cost years to crack)."""

from __future__ import annotations

from argon2 import PasswordHasher, Type

__all__ = ["hash_password", "password_hasher"]

# OWASP's minimum for argon2id: 19 MiB of memory, 2 iterations, 1 lane.
password_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1,
                                 hash_len=32, salt_len=16, type=Type.ID)


def hash_password(password: str) -> str:
    """The argon2id hash of ``password`` (CPU-heavy: call it off the event loop)."""
    return password_hasher.hash(password)
