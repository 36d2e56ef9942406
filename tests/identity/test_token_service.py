"""The token service: grants, the second factor, refresh rotation, revocation, timing."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher, Type
from argon2.exceptions import VerifyMismatchError

from apiforge.errors import ConfigurationError
from apiforge.identity import Account, AccountService
from apiforge.identity.signing import SigningKeyring
from apiforge.identity.token_service import (
    REVOKED_JTI_KIND,
    REVOKED_JTI_TOPIC,
    InvalidGrant,
    TokenPair,
    TokenService,
)
from apiforge.identity.tokens import InvalidToken, TokenVerifier, TrustedIssuer
from apiforge.identity.totp import TOTP_STEP, new_totp_secret, totp_code
from apiforge.secrets import Secret
from apiforge.stores.memory import MemoryRecordStore, MemoryRefreshStore, MemoryStateStore

ISSUER = "https://id.example.test"
AUDIENCE = "orders-api"
PASSWORD = "correct horse battery staple"
T0 = 1_750_000_000.0


class SpyHasher(PasswordHasher):
    """Cheap argon2id parameters for speed, and a record of what was verified."""

    def __init__(self, memory_cost: int = 8 * 1024) -> None:
        super().__init__(time_cost=1, memory_cost=memory_cost, parallelism=1, type=Type.ID)
        self.verified: list[str] = []
        self._lock = threading.Lock()
        self._running = 0
        self.peak = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> Any:
        with self._lock:
            self._running += 1
            self.peak = max(self.peak, self._running)
            self.verified.append(hash if isinstance(hash, str) else hash.decode())
        try:
            return super().verify(hash, password)
        finally:
            with self._lock:
                self._running -= 1


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class World:
    def __init__(self, tmp_path: Path, **options: Any) -> None:
        self.clock = Clock()
        self.records = MemoryRecordStore()
        self.state = MemoryStateStore()
        self.accounts = AccountService(self.records, self.state)
        self.keyring = SigningKeyring.load_or_create(tmp_path / "signing.json", now=T0)
        self.refresh_store = MemoryRefreshStore()
        self.hasher: SpyHasher = options.pop("hasher", None) or SpyHasher()
        self.tmp_path = tmp_path
        self.service = TokenService(
            self.accounts, self.keyring, self.refresh_store, self.state, issuer=ISSUER,
            audience=AUDIENCE, clock=self.clock, hasher=self.hasher,
            scopes={"orders:read", "orders:write"}, **options,
        )

    async def user(self, name: str = "alice", password: str | None = PASSWORD,
                   totp: str | None = None) -> Account:
        hashed = None if password is None else self.hasher.hash(password)
        account = await self.accounts.create(name, {"user"}, password_hash=hashed)
        if totp is not None:
            account = await self.accounts.set_totp(account.account_id, totp)
        return account

    def external_verifier(self) -> TokenVerifier:
        path = self.tmp_path / "published.json"
        path.write_text(json.dumps(self.service.jwks()))
        return TokenVerifier([TrustedIssuer(ISSUER, AUDIENCE, jwks_file=str(path))])


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    built = World(tmp_path)
    yield built
    await built.service.aclose()


async def grant_fails(world: World, username: str, password: str, otp: str | None = None,
                      **kwargs: Any) -> InvalidGrant:
    with pytest.raises(InvalidGrant) as caught:
        await world.service.password_grant(username, password, otp, **kwargs)
    assert str(caught.value) == "invalid grant"  # the message never says which check failed
    return caught.value


async def refresh_fails(world: World, token: Secret) -> InvalidGrant:
    with pytest.raises(InvalidGrant) as caught:
        await world.service.refresh(token)
    return caught.value


# -- password grant ------------------------------------------------------------------------------


async def test_password_grant_issues_a_verifiable_pair(world: World) -> None:
    alice = await world.user()
    pair = await world.service.password_grant("alice", Secret(PASSWORD), client_id="web",
                                              scope=["orders:read"])
    assert PASSWORD not in repr(pair) and pair.access_token.reveal() not in repr(pair)
    body = pair.to_response()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("Bearer", 600,
                                                                       "orders:read")
    assert str(body["refresh_token"]).startswith("rt_")

    for verifier in (world.service.verifier, world.external_verifier()):
        verified = await verifier.verify(pair.access_token.reveal(), now=T0 + 1)
        claims = dict(verified.claims)
        assert claims["sub"] == alice.account_id == pair.account_id
        assert (claims["iss"], claims["aud"], claims["client_id"]) == (ISSUER, AUDIENCE, "web")
        assert claims["exp"] - claims["iat"] == 600 and claims["iat"] == int(T0)
        assert claims["jti"] == pair.jti and len(pair.jti) >= 20
        assert claims["account_version"] == alice.version
        assert verified.scopes == frozenset({"orders:read"})
        assert verified.kid == world.keyring.current.kid
    assert not await world.service.is_revoked(verified)
    second = await world.service.password_grant("alice", PASSWORD)
    assert second.jti != pair.jti and second.family_id != pair.family_id
    assert "scope" not in second.to_response()


async def test_unknown_user_and_wrong_password_look_alike(world: World) -> None:
    await world.user()
    reference = world.hasher.hash("something else")
    started = time.perf_counter()
    with pytest.raises(VerifyMismatchError):
        world.hasher.verify(reference, "wrong")
    one_verify = time.perf_counter() - started

    world.hasher.verified.clear()
    started = time.perf_counter()
    unknown = await grant_fails(world, "mallory", PASSWORD)
    unknown_time = time.perf_counter() - started
    dummy_calls = list(world.hasher.verified)
    world.hasher.verified.clear()
    started = time.perf_counter()
    wrong = await grant_fails(world, "alice", "not the password")
    wrong_time = time.perf_counter() - started

    assert type(unknown) is type(wrong) is InvalidGrant
    assert (unknown.reason, wrong.reason) == ("unknown_user", "bad_password")
    assert unknown.account_id is None and wrong.account_id is not None
    # Each path ran exactly one argon2 verification: the unknown user's against the dummy.
    assert len(dummy_calls) == 1 and dummy_calls[0].startswith("$argon2id$")
    assert len(world.hasher.verified) == 1 and world.hasher.verified[0] != dummy_calls[0]
    assert unknown_time >= 0.5 * one_verify and wrong_time >= 0.5 * one_verify


async def test_account_without_password_also_pays_for_a_verification(world: World) -> None:
    await world.user("robot", password=None)
    world.hasher.verified.clear()
    assert (await grant_fails(world, "robot", PASSWORD)).reason == "no_password"
    assert len(world.hasher.verified) == 1


@pytest.mark.parametrize("status", ["suspended", "locked", "deleted"])
async def test_inactive_accounts_are_refused_after_the_password(
    world: World, status: str
) -> None:
    alice = await world.user()
    admin = Account("root", "root", frozenset({"admin"}))
    await world.accounts.set_status(alice.account_id, status, admin)  # type: ignore[arg-type]
    assert (await grant_fails(world, "alice", "wrong")).reason == "bad_password"
    assert (await grant_fails(world, "alice", PASSWORD)).reason == f"account_{status}"


async def test_a_stale_copy_is_refused(world: World) -> None:
    alice = await world.user()
    # Another process began a change: the shared version moved, the record is not written yet.
    await world.state.bump_version(alice.account_id)
    await world.accounts.refresh([alice.account_id])
    assert (await grant_fails(world, "alice", PASSWORD)).reason == "account_stale"


@pytest.mark.parametrize(
    ("username", "password", "scope", "reason"),
    [
        ("", PASSWORD, (), "malformed"),
        ("alice", "", (), "malformed"),
        ("a" * 300, PASSWORD, (), "malformed"),
        ("alice", "p" * 2000, (), "malformed"),
        ("alice", PASSWORD, ("admin",), "invalid_scope"),
    ],
)
async def test_malformed_requests_are_refused_before_hashing(
    world: World, username: str, password: str, scope: tuple[str, ...], reason: str
) -> None:
    await world.user()
    world.hasher.verified.clear()
    assert (await grant_fails(world, username, password, scope=scope)).reason == reason
    assert world.hasher.verified == []


async def test_hashing_concurrency_is_capped(tmp_path: Path) -> None:
    world = World(tmp_path, hash_concurrency=2)
    await world.user()
    results = await asyncio.gather(
        *(world.service.password_grant("alice", "wrong") for _ in range(6)),
        return_exceptions=True,
    )
    assert all(isinstance(r, InvalidGrant) for r in results)
    assert 1 <= world.hasher.peak <= 2
    await world.service.aclose()


async def test_weak_hashes_are_upgraded_without_a_version_bump(world: World) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=4 * 1024, parallelism=1, type=Type.ID)
    alice = await world.accounts.create("alice", {"user"}, password_hash=weak.hash(PASSWORD))
    assert world.hasher.check_needs_rehash(alice.password_hash or "")
    await world.service.password_grant("alice", PASSWORD)
    stored = world.records.get_account(alice.account_id)
    assert stored is not None and stored.password_hash != alice.password_hash
    assert not world.hasher.check_needs_rehash(stored.password_hash or "")
    assert stored.version == alice.version
    cached = world.accounts.get(alice.account_id)
    assert cached is not None and cached.password_hash == stored.password_hash
    await world.service.password_grant("alice", PASSWORD)  # the new hash verifies


# -- second factor -------------------------------------------------------------------------------


async def test_totp_is_required_and_single_use(world: World) -> None:
    secret = new_totp_secret()
    alice = await world.user(totp=secret)
    assert alice.totp_required and secret not in repr(alice)
    code = totp_code(secret, T0)

    assert (await grant_fails(world, "alice", PASSWORD)).reason == "otp_required"
    assert (await grant_fails(world, "alice", PASSWORD, "")).reason == "otp_required"
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    assert (await grant_fails(world, "alice", PASSWORD, wrong)).reason == "bad_otp"
    assert (await grant_fails(world, "alice", PASSWORD, "12345")).reason == "bad_otp"
    # A wrong password with the right code fails on the password and does not burn the code.
    assert (await grant_fails(world, "alice", "wrong", code)).reason == "bad_password"

    pair = await world.service.password_grant("alice", PASSWORD, code)
    assert pair.account_id == alice.account_id
    assert (await grant_fails(world, "alice", PASSWORD, code)).reason == "otp_replayed"

    # Next step: a new code works; the previous step's code (still in the window) does not.
    world.clock.now += TOTP_STEP
    await world.service.password_grant("alice", PASSWORD, Secret(totp_code(secret, T0 + 30)))
    previous = totp_code(secret, T0)
    assert (await grant_fails(world, "alice", PASSWORD, previous)).reason == "otp_replayed"


async def test_concurrent_logins_with_one_code_have_one_winner(world: World) -> None:
    secret = new_totp_secret()
    await world.user(totp=secret)
    code = totp_code(secret, T0)
    results = await asyncio.gather(
        *(world.service.password_grant("alice", PASSWORD, code) for _ in range(4)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, TokenPair) for r in results) == 1
    assert {r.reason for r in results if isinstance(r, InvalidGrant)} == {"otp_replayed"}


async def test_set_totp_refuses_weak_secrets(world: World) -> None:
    alice = await world.user()
    with pytest.raises(ValueError):
        await world.accounts.set_totp(alice.account_id, "AAAA")
    cleared = await world.accounts.set_totp(alice.account_id, None)
    assert not cleared.totp_required


# -- refresh -------------------------------------------------------------------------------------


async def test_refresh_rotates(world: World) -> None:
    await world.user()
    first = await world.service.password_grant("alice", PASSWORD, scope=["orders:write"])
    world.clock.now += 300
    second = await world.service.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token
    assert (second.family_id, second.scope) == (first.family_id, frozenset({"orders:write"}))
    verified = await world.service.verifier.verify(second.access_token.reveal(),
                                                   now=world.clock.now)
    assert verified.iat == int(world.clock.now) and verified.jti == second.jti
    third = await world.service.refresh(second.refresh_token.reveal())
    assert third.family_id == first.family_id


async def test_reuse_revokes_the_family(world: World) -> None:
    alice = await world.user()
    first = await world.service.password_grant("alice", PASSWORD)
    second = await world.service.refresh(first.refresh_token)
    reuse = await refresh_fails(world, first.refresh_token)
    assert (reuse.reason, reuse.event) == ("token_reuse", "authn_token_reuse")
    assert (reuse.account_id, reuse.family_id) == (alice.account_id, first.family_id)
    after = await refresh_fails(world, second.refresh_token)
    assert (after.reason, after.event) == ("token_revoked", "authn_login_fail")


async def test_concurrent_refreshes_have_one_winner(world: World) -> None:
    await world.user()
    pair = await world.service.password_grant("alice", PASSWORD)
    results = await asyncio.gather(
        *(world.service.refresh(pair.refresh_token) for _ in range(8)), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, TokenPair)]
    assert len(winners) == 1
    assert {r.reason for r in results if isinstance(r, InvalidGrant)} == {"token_reuse"}
    assert (await refresh_fails(world, winners[0].refresh_token)).reason == "token_revoked"


async def test_refresh_refusals(world: World) -> None:
    await world.user()
    pair = await world.service.password_grant("alice", PASSWORD)
    assert (await refresh_fails(world, Secret("garbage"))).reason == "bad_token"
    assert (await refresh_fails(world, Secret("rt_" + "A" * 43))).reason == "unknown_token"
    world.clock.now += 8 * 24 * 3600
    assert (await refresh_fails(world, pair.refresh_token)).reason == "token_expired"


async def test_suspension_ends_families_for_good(world: World) -> None:
    alice = await world.user()
    pair = await world.service.password_grant("alice", PASSWORD)
    admin = Account("root", "root", frozenset({"admin"}))
    await world.accounts.set_status(alice.account_id, "suspended", admin)
    assert (await refresh_fails(world, pair.refresh_token)).reason == "account_suspended"
    await world.accounts.set_status(alice.account_id, "active", admin)
    assert (await refresh_fails(world, pair.refresh_token)).reason == "token_revoked"


async def test_an_account_change_ends_older_families(world: World) -> None:
    alice = await world.user()
    pair = await world.service.password_grant("alice", PASSWORD)
    verified = await world.service.verifier.verify(pair.access_token.reveal(), now=T0)
    await world.accounts.set_totp(alice.account_id, new_totp_secret())
    assert await world.service.is_revoked(verified)
    assert (await refresh_fails(world, pair.refresh_token)).reason == "account_changed"
    assert (await refresh_fails(world, pair.refresh_token)).reason == "token_revoked"


async def test_a_stale_account_does_not_spend_the_token(world: World) -> None:
    alice = await world.user()
    pair = await world.service.password_grant("alice", PASSWORD)
    shared = await world.state.bump_version(alice.account_id)
    await world.accounts.refresh([alice.account_id])
    assert (await refresh_fails(world, pair.refresh_token)).reason == "account_stale"
    # The other process's write lands (without any real change to the account).
    current = world.records.get_account(alice.account_id)
    assert current is not None
    world.records.update_account(Account(current.account_id, current.username, current.roles,
                                         version=shared, password_hash=current.password_hash))
    await world.accounts.refresh([alice.account_id])
    # The family predates the version, so it ends: but it was not spent as "reuse".
    assert (await refresh_fails(world, pair.refresh_token)).reason == "account_changed"


# -- revocation and password change --------------------------------------------------------------


async def test_revoking_an_access_token_denylists_its_jti(world: World) -> None:
    await world.user()
    pair = await world.service.password_grant("alice", PASSWORD)
    cursor = await world.state.current_cursor()
    assert await world.service.revoke(pair.access_token) == "access_token"
    assert await world.state.is_revoked(REVOKED_JTI_KIND, pair.jti)
    _, changes = await world.state.changes_since(cursor)
    assert changes == [(REVOKED_JTI_TOPIC, pair.jti)]
    verified = await world.service.verifier.verify(pair.access_token.reveal(), now=T0)
    assert await world.service.is_revoked(verified)
    # The refresh token is another matter (RFC 7009 revokes what it is given).
    assert (await world.service.refresh(pair.refresh_token)).family_id == pair.family_id


async def test_revoking_a_refresh_token_ends_its_family(world: World) -> None:
    await world.user()
    pair = await world.service.password_grant("alice", PASSWORD)
    assert await world.service.revoke(pair.refresh_token.reveal()) == "refresh_token"
    assert (await refresh_fails(world, pair.refresh_token)).reason == "token_revoked"


@pytest.mark.parametrize(
    "token", ["", "garbage", "a.b.c", "rt_" + "A" * 43, "rt_short", "eyJhbGciOiJub25lIn0.e30."]
)
async def test_revoking_junk_is_not_an_error(world: World, token: str) -> None:
    assert await world.service.revoke(token) is None


async def test_revoking_a_forged_or_expired_token_does_nothing(
    world: World, tmp_path: Path
) -> None:
    await world.user()
    pair = await world.service.password_grant("alice", PASSWORD)
    other = SigningKeyring.load_or_create(tmp_path / "attacker.json", now=T0)
    forged = other.sign({"iss": ISSUER, "sub": "acc_x", "aud": AUDIENCE, "iat": int(T0),
                         "exp": int(T0) + 600, "jti": pair.jti})
    assert await world.service.revoke(forged) is None
    assert not await world.state.is_revoked(REVOKED_JTI_KIND, pair.jti)
    world.clock.now += 3600
    assert await world.service.revoke(pair.access_token) is None


async def test_change_password_revokes_every_family(world: World) -> None:
    alice = await world.user()
    one = await world.service.password_grant("alice", PASSWORD)
    two = await world.service.password_grant("alice", PASSWORD)
    verified = await world.service.verifier.verify(one.access_token.reveal(), now=T0)
    with pytest.raises(ValueError):
        await world.service.change_password(alice.account_id, "short")
    await world.service.change_password(alice.account_id, Secret("a brand new passphrase"))
    for pair in (one, two):
        assert (await refresh_fails(world, pair.refresh_token)).reason == "token_revoked"
    assert await world.service.is_revoked(verified)
    assert (await grant_fails(world, "alice", PASSWORD)).reason == "bad_password"
    fresh = await world.service.password_grant("alice", "a brand new passphrase")
    fresh_verified = await world.service.verifier.verify(fresh.access_token.reveal(), now=T0)
    assert not await world.service.is_revoked(fresh_verified)


async def test_revoke_account(world: World) -> None:
    alice = await world.user()
    pair = await world.service.password_grant("alice", PASSWORD)
    assert await world.service.on_account_suspended(alice.account_id) == 1
    assert await world.service.revoke_account(alice.account_id) == 0
    assert (await refresh_fails(world, pair.refresh_token)).reason == "token_revoked"


# -- keys and configuration ----------------------------------------------------------------------


async def test_a_rotation_elsewhere_is_used_at_the_next_grant(world: World) -> None:
    await world.user()
    before = await world.service.password_grant("alice", PASSWORD)
    rotated = SigningKeyring.rotate(world.keyring.path, now=T0 + 1)
    after = await world.service.password_grant("alice", PASSWORD)
    kids = [k["kid"] for k in world.service.jwks()["keys"]]
    assert kids == [rotated.current.kid, rotated.keys[1].kid]
    for pair, kid in ((before, rotated.keys[1].kid), (after, rotated.current.kid)):
        verified = await world.service.verifier.verify(pair.access_token.reveal(), now=T0 + 2)
        assert verified.kid == kid


async def test_configuration_is_checked(tmp_path: Path) -> None:
    records, state = MemoryRecordStore(), MemoryStateStore()
    accounts = AccountService(records, state)
    keyring = SigningKeyring.load_or_create(tmp_path / "k.json")
    short = SigningKeyring(keyring.path, keyring.keys, keep_for=300)
    base: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE}
    for keys, options in (
        (keyring, {"access_ttl": 901}),
        (keyring, {"access_ttl": 0}),
        (short, {}),
        (keyring, {"hash_concurrency": 0}),
        (keyring, {"issuer": ""}),
    ):
        with pytest.raises(ConfigurationError):
            TokenService(accounts, keys, MemoryRefreshStore(), state, **{**base, **options})


async def test_invalid_token_from_verifier_is_typed(world: World) -> None:
    with pytest.raises(InvalidToken):
        await world.service.verifier.verify("a.b.c", now=T0)


async def test_a_verifier_can_be_shared(world: World) -> None:
    await world.user()
    pair = await world.service.password_grant("alice", PASSWORD)
    shared = world.external_verifier()
    service = TokenService(world.accounts, world.keyring, world.refresh_store, world.state,
                           issuer=ISSUER, audience=AUDIENCE, clock=world.clock,
                           hasher=world.hasher, verifier=shared)
    assert service.verifier is shared
    assert await service.revoke(pair.access_token) == "access_token"
    assert await world.state.is_revoked(REVOKED_JTI_KIND, pair.jti)
    await service.aclose()
