"""TOTP: the RFC 6238 / RFC 4226 vectors, the window, input refusals, replay claims."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apiforge.identity.totp import (
    TOTP_STEP,
    check_totp_secret,
    match_totp,
    new_totp_secret,
    provisioning_uri,
    totp_code,
    totp_step,
)
from apiforge.stores.memory import MemoryRefreshStore

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "vectors" / "totp_rfc6238.json").read_text()
)
SEED = base64.b32encode(VECTORS["seed_ascii"].encode("ascii")).decode("ascii")
NOW = 1_750_000_015.0


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: str(v["time"]))
def test_rfc6238_appendix_b_sha1(vector: dict[str, Any]) -> None:
    assert totp_step(vector["time"]) == vector["step"]
    assert totp_code(SEED, vector["time"], digits=VECTORS["digits"]) == vector["code"]


@pytest.mark.parametrize(("counter", "code"), list(enumerate(VECTORS["hotp"])))
def test_rfc4226_appendix_d_six_digits(counter: int, code: str) -> None:
    # TOTP is HOTP of the step counter: the step starting at counter * 30 s gives HOTP(counter).
    assert totp_code(SEED, counter * TOTP_STEP) == code
    assert totp_code(SEED, counter * TOTP_STEP + 29) == code


def test_new_secret_is_160_bits_of_base32() -> None:
    secret = new_totp_secret()
    assert len(secret) == 32 and "=" not in secret
    assert len(base64.b32decode(secret)) == 20
    assert new_totp_secret() != secret
    check_totp_secret(secret)
    assert len(totp_code(secret, NOW)) == 6


def test_secret_spelling_is_forgiving_but_content_is_not() -> None:
    secret = new_totp_secret()
    spaced = " ".join(secret[i : i + 4] for i in range(0, 32, 4)).lower()
    assert totp_code(spaced, NOW) == totp_code(secret, NOW)
    for bad in ("", "not base32!", "AAAA"):
        with pytest.raises(ValueError):
            check_totp_secret(bad)


def test_window_is_one_step_either_side() -> None:
    secret = new_totp_secret()
    current = totp_step(NOW)
    for offset in (-1, 0, 1):
        code = totp_code(secret, NOW + offset * TOTP_STEP)
        assert match_totp(secret, code, NOW) == current + offset
    for offset in (-3, -2, 2, 3):
        code = totp_code(secret, NOW + offset * TOTP_STEP)
        if code not in {totp_code(secret, NOW + o * TOTP_STEP) for o in (-1, 0, 1)}:
            assert match_totp(secret, code, NOW) is None


@pytest.mark.parametrize(
    "code", ["", "12345", "1234567", "12345a", " 123456", "123456\n", "١٢٣٤٥٦", "12 456"]
)
def test_anything_but_six_ascii_digits_is_refused(code: str) -> None:
    secret = new_totp_secret()
    assert match_totp(secret, code, NOW) is None


def test_non_string_code_is_refused() -> None:
    assert match_totp(new_totp_secret(), 123456, NOW) is None  # type: ignore[arg-type]


@given(st.text(max_size=12))
def test_match_never_raises_on_arbitrary_input(code: str) -> None:
    result = match_totp(SEED, code, NOW)
    assert result is None or abs(result - totp_step(NOW)) <= 1


def test_provisioning_uri() -> None:
    secret = new_totp_secret()
    uri = provisioning_uri(secret, "alice@example.com", "Acme: Orders")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    # The ':' inside the issuer is encoded, so the label still splits into issuer and user.
    assert parts.path == "/Acme%3A%20Orders:alice%40example.com"
    query = parse_qs(parts.query)
    assert query == {"secret": [secret], "issuer": ["Acme: Orders"], "algorithm": ["SHA1"],
                     "digits": ["6"], "period": ["30"]}


def test_step_claims_refuse_replays_and_older_steps() -> None:
    store = MemoryRefreshStore()
    assert store.claim_totp_step("acc_1", 100) is True
    assert store.claim_totp_step("acc_1", 100) is False  # the same code again
    assert store.claim_totp_step("acc_1", 99) is False  # an older code of the window
    assert store.claim_totp_step("acc_2", 100) is True  # accounts are independent
    assert store.claim_totp_step("acc_1", 101) is True


def test_concurrent_claims_of_one_step_have_one_winner() -> None:
    store = MemoryRefreshStore()
    barrier = threading.Barrier(8)
    results: list[bool] = []

    def claim() -> None:
        barrier.wait()
        results.append(store.claim_totp_step("acc_1", 500))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
