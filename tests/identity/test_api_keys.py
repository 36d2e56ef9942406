"""API keys: format, parsing, hashing, verification and lifecycle (memory stores)."""

from __future__ import annotations

import pickle
import re
import time
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

import apiforge.identity
from apiforge.errors import ConfigurationError
from apiforge.identity import (
    ApiKeyRecord,
    ApiKeyService,
    Application,
    InvalidApiKey,
    KeyHasher,
    generate_key,
    parse_key,
)
from apiforge.identity.api_keys import BASE62
from apiforge.secrets import Secret
from apiforge.stores.memory import MemoryRecordStore, MemoryStateStore

PEPPER = Secret("pepper-one-" + "x" * 32)
NEW_PEPPER = Secret("pepper-two-" + "y" * 32)
T0 = datetime(2030, 1, 1, tzinfo=UTC)
KEY_RE = re.compile(r"afk_(live|test|dev)_[0-9A-Za-z]{12}_[0-9A-Za-z]{36}")


class NoReadsAfterLoad(MemoryRecordStore):
    """A memory store that fails any read once ``frozen``: proves verify() does no store I/O."""

    frozen = False

    def get_key(self, key_id: str) -> ApiKeyRecord | None:
        assert not self.frozen, "verify() read the store"
        return super().get_key(key_id)

    def list_keys(self) -> list[ApiKeyRecord]:
        assert not self.frozen, "verify() read the store"
        return super().list_keys()


@pytest.fixture
def store() -> NoReadsAfterLoad:
    records = NoReadsAfterLoad()
    records.add_application(Application("app", "App", None, T0))
    return records


@pytest.fixture
def service(store: NoReadsAfterLoad) -> ApiKeyService:
    return ApiKeyService(store, MemoryStateStore(), KeyHasher([PEPPER]))


def with_crc(body: str) -> str:
    crc = zlib.crc32(body.encode())
    digits = ""
    while crc:
        crc, rest = divmod(crc, 62)
        digits = BASE62[rest] + digits
    return body + digits.rjust(6, "0")


def reason_of(service: ApiKeyService, text: str, now: datetime | None = T0) -> str:
    with pytest.raises(InvalidApiKey) as caught:
        service.verify(text, now=now)
    return caught.value.reason


# -- format -------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["live", "test", "dev"])
def test_generated_key_has_the_documented_format(env: str) -> None:
    plaintext, parsed = generate_key(env)
    text = plaintext.reveal()
    assert KEY_RE.fullmatch(text)
    assert text.startswith(f"afk_{env}_{parsed.key_id}_{parsed.secret.reveal()}")
    assert with_crc(text[:-6]) == text  # an independent CRC32 check, as a scanner would do it
    assert len(parsed.secret) * 5.95 >= 128  # log2(62) ≈ 5.95 bits per character
    assert parse_key(text) == parsed


def test_generated_keys_differ() -> None:
    keys = {generate_key("live")[0].reveal() for _ in range(200)}
    assert len(keys) == 200


@pytest.mark.parametrize("env", ["", "l", "LIVE", "li_ve", "toolongenv", "1ive"])
def test_bad_env_label_is_refused(env: str) -> None:
    with pytest.raises(ValueError):
        generate_key(env)


def malformed_variants() -> list[str]:
    text = generate_key("live")[0].reveal()
    return [
        "",
        "afk_",
        text[:-1],  # truncated
        text + "0",
        text + "\n",
        "xfk" + text[3:],
        text.replace("afk_live_", "afk_LIVE_"),
        text[:20] + "_" + text[21:],  # an underscore inside the id
        text[:-8] + "\u0661" + text[-7:],  # a non-ASCII digit
        text[:30] + "-" + text[31:],
        "afk_live_" + "a" * 5000,
    ]


@pytest.mark.parametrize("text", malformed_variants())
def test_malformed_keys(text: str) -> None:
    with pytest.raises(InvalidApiKey) as caught:
        parse_key(text)
    assert caught.value.reason == "malformed"
    assert caught.value.key_id is None


def test_every_single_character_change_breaks_the_checksum() -> None:
    text = generate_key("live")[0].reveal()
    start = text.rindex("_") + 1
    for index in range(start, len(text)):
        for replacement in "0aZ":
            if text[index] == replacement:
                continue
            changed = text[:index] + replacement + text[index + 1 :]
            with pytest.raises(InvalidApiKey) as caught:
                parse_key(changed)
            assert caught.value.reason == "bad_checksum"


@given(st.text(max_size=120))
def test_random_text_raises_only_invalid_api_key(text: str) -> None:
    try:
        parse_key(text)
    except InvalidApiKey as exc:
        assert exc.reason in {"malformed", "bad_checksum"}


@given(st.text(alphabet=BASE62 + "_", min_size=40, max_size=70))
def test_random_key_shaped_text_raises_only_invalid_api_key(tail: str) -> None:
    try:
        parsed = parse_key("afk_live_" + tail)
    except InvalidApiKey:
        return
    assert parsed.env == "live"  # only a text with a correct CRC32 may get here


# -- secrets never shown ------------------------------------------------------------------


async def test_keys_never_appear_in_reprs(service: ApiKeyService) -> None:
    plaintext, record = await service.create("app", {"read"}, "live", now=T0)
    text = plaintext.reveal()
    secret_part = parse_key(text).secret.reveal()
    shown = [
        repr(plaintext),
        str(plaintext),
        f"{plaintext}",
        repr(record),
        str(record),
        repr(parse_key(text)),
        repr(KeyHasher([PEPPER])),
    ]
    with pytest.raises(InvalidApiKey) as caught:
        service.verify(text[:-1])
    shown += [str(caught.value), repr(caught.value)]
    for item in shown:
        assert secret_part not in item
        assert record.digest.hex() not in item
        assert PEPPER.reveal() not in item


def test_secret_compares_in_constant_time_and_is_not_stored_by_accident() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"
    with pytest.raises(TypeError):
        hash(Secret("a"))
    with pytest.raises(TypeError):
        pickle.dumps(Secret("a"))
    with pytest.raises(TypeError):
        Secret(b"a")  # type: ignore[arg-type]


# -- hasher -------------------------------------------------------------------------------


@pytest.mark.parametrize("peppers", [[], [Secret("short")]])
def test_weak_pepper_configuration_is_refused(peppers: list[Secret]) -> None:
    with pytest.raises(ConfigurationError):
        KeyHasher(peppers)


def test_digest_depends_on_pepper() -> None:
    secret = Secret("s" * 30)
    assert KeyHasher([PEPPER]).digest(secret) == KeyHasher([PEPPER]).digest(secret)
    assert KeyHasher([PEPPER]).digest(secret) != KeyHasher([NEW_PEPPER]).digest(secret)
    assert not KeyHasher([NEW_PEPPER]).verify(secret, KeyHasher([PEPPER]).digest(secret))
    assert KeyHasher([NEW_PEPPER, PEPPER]).match(secret, KeyHasher([PEPPER]).digest(secret)) == 1


async def test_pepper_rotation_keeps_old_keys_and_upgrades_their_digest(
    store: NoReadsAfterLoad,
) -> None:
    state = MemoryStateStore()
    old = ApiKeyService(store, state, KeyHasher([PEPPER]))
    plaintext, record = await old.create("app", {"read"}, "live", now=T0)

    rotated = ApiKeyService(store, state, KeyHasher([NEW_PEPPER, PEPPER]))
    await rotated.load()
    assert rotated.verify(plaintext, now=T0).key_id == record.key_id
    rotated.flush_last_used()

    retired = ApiKeyService(store, state, KeyHasher([NEW_PEPPER]))
    await retired.load()
    assert retired.verify(plaintext, now=T0).key_id == record.key_id


# -- verification reasons -----------------------------------------------------------------


async def test_each_failure_has_its_own_reason(
    service: ApiKeyService, store: NoReadsAfterLoad
) -> None:
    good, record = await service.create("app", {"read"}, "live", now=T0)
    expiring, _ = await service.create(
        "app", {"read"}, "live", expires_at=T0 + timedelta(hours=1), now=T0
    )
    revoked, revoked_record = await service.create("app", {"read"}, "live", now=T0)
    await service.revoke(revoked_record.key_id, now=T0)
    rotated, rotated_record = await service.create("app", {"read"}, "live", now=T0)
    await service.rotate(rotated_record.key_id, timedelta(minutes=10), now=T0)
    text = good.reveal()
    parsed = parse_key(text)
    store.frozen = True  # from here on, any store read fails the test

    assert service.verify(good, now=T0) == record
    later = T0 + timedelta(hours=2)
    reasons = {
        "malformed": reason_of(service, text[:-3]),
        "bad_checksum": reason_of(service, text[:-1] + ("A" if text[-1] != "A" else "B")),
        "unknown_id": reason_of(service, generate_key("live")[0].reveal()),
        "wrong_secret": reason_of(service, with_crc(f"afk_live_{parsed.key_id}_{'Z' * 30}")),
        "expired": reason_of(service, expiring.reveal(), now=later),
        "revoked": reason_of(service, revoked.reveal()),
        "rotated_out": reason_of(service, rotated.reveal(), now=later),
    }
    assert reasons == {reason: reason for reason in reasons}


async def test_the_clock_path_refuses_at_expiry_and_at_the_end_of_overlap(
    service: ApiKeyService, store: NoReadsAfterLoad
) -> None:
    # Without `now`, verify() reads the wall clock and compares one float per request: it must
    # still refuse from the exact instant a key expires or its rotation overlap ends.
    start = datetime.now(UTC)
    expiring, record = await service.create(
        "app", {"read"}, "live", expires_at=start + timedelta(milliseconds=300), now=start)
    rotated, rotated_record = await service.create("app", {"read"}, "live", now=start)
    await service.rotate(rotated_record.key_id, timedelta(milliseconds=300), now=start)
    assert service.verify(expiring).key_id == record.key_id
    assert service.verify(rotated).key_id == rotated_record.key_id
    assert service.flush_last_used() == 2
    used = store.get_key(record.key_id)
    assert used is not None and used.last_used_at is not None
    assert start <= used.last_used_at <= datetime.now(UTC)
    time.sleep(0.35)
    assert reason_of(service, expiring.reveal(), now=None) == "expired"
    assert reason_of(service, rotated.reveal(), now=None) == "rotated_out"


async def test_env_mismatch_is_an_unknown_key(service: ApiKeyService) -> None:
    plaintext, _ = await service.create("app", {"read"}, "live", now=T0)
    parsed = parse_key(plaintext)
    forged = with_crc(f"afk_test_{parsed.key_id}_{parsed.secret.reveal()}")
    assert reason_of(service, forged) == "unknown_id"


async def test_rotation_overlap(service: ApiKeyService) -> None:
    old_text, old = await service.create(
        "app", {"read", "write"}, "live", expires_at=T0 + timedelta(days=90), now=T0
    )
    at = T0 + timedelta(days=1)
    new_text, new = await service.rotate(old.key_id, timedelta(hours=1), now=at)
    assert new.scopes == old.scopes and new.application_id == "app"
    assert new.expires_at == at + timedelta(days=90)
    assert service.verify(old_text, now=at + timedelta(minutes=59)).key_id == old.key_id
    assert service.verify(new_text, now=at + timedelta(minutes=59)).key_id == new.key_id
    assert reason_of(service, old_text.reveal(), now=at + timedelta(hours=1)) == "rotated_out"
    assert service.verify(new_text, now=at + timedelta(hours=2)).key_id == new.key_id
    stored = next(r for r in service.list() if r.key_id == old.key_id)
    assert (stored.replaced_by, stored.rotated_at) == (new.key_id, at)
    with pytest.raises(ValueError):
        await service.rotate(old.key_id, timedelta(hours=1), now=at)
    with pytest.raises(ValueError):
        await service.rotate(new.key_id, timedelta(hours=-1), now=at)


async def test_management_errors(service: ApiKeyService) -> None:
    with pytest.raises(LookupError):
        await service.revoke("nope00000000")
    with pytest.raises(LookupError):
        await service.rotate("nope00000000", timedelta(0))
    with pytest.raises(ValueError):
        await service.create("app", {"has space"}, "live")
    with pytest.raises(ValueError):
        await service.create("app", {"read"}, "live", expires_at=T0 - timedelta(1), now=T0)


async def test_revoke_is_idempotent_and_published(service: ApiKeyService) -> None:
    _, record = await service.create("app", {"read"}, "live", now=T0)
    first = await service.revoke(record.key_id, now=T0)
    second = await service.revoke(record.key_id, now=T0 + timedelta(hours=1))
    assert first.revoked_at == second.revoked_at == T0


async def test_last_used_is_buffered_then_flushed(
    service: ApiKeyService, store: NoReadsAfterLoad
) -> None:
    plaintext, record = await service.create("app", {"read"}, "live", now=T0)
    service.verify(plaintext, now=T0 + timedelta(minutes=1))
    service.verify(plaintext, now=T0 + timedelta(minutes=2))
    stored = store.get_key(record.key_id)
    assert stored is not None and stored.last_used_at is None
    assert service.flush_last_used() == 1
    stored = store.get_key(record.key_id)
    assert stored is not None and stored.last_used_at == T0 + timedelta(minutes=2)
    assert service.flush_last_used() == 0


async def test_list_and_load(service: ApiKeyService, store: NoReadsAfterLoad) -> None:
    created = [(await service.create("app", {"r"}, "dev", now=T0))[1] for _ in range(3)]
    assert {r.key_id for r in service.list()} == {r.key_id for r in created}
    fresh = ApiKeyService(store, MemoryStateStore(), KeyHasher([PEPPER]))
    assert await fresh.load() == 3
    assert len(fresh.cache) == 3


def test_public_surface() -> None:
    assert set(apiforge.identity.__all__) == {
        "ACCOUNT_TOPIC",
        "ADMIN_ROLE",
        "API_KEY_TOPIC",
        "Account",
        "AccountRefused",
        "AccountService",
        "AccountStatus",
        "ApiKeyRecord",
        "ApiKeyService",
        "Application",
        "CacheRefresher",
        "CachedService",
        "InvalidApiKey",
        "KeyCache",
        "KeyHasher",
        "ParsedKey",
        "generate_key",
        "parse_key",
    }
    for name in apiforge.identity.__all__:
        assert hasattr(apiforge.identity, name)
