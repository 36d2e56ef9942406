"""JWT verification: the attack vectors, configuration refusals, interop and the CLI verdicts.

Keys are generated once per test session and tokens are forged at test time from the vectors in
``vectors/jwt_attacks.json``, so nothing secret is committed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st

from apiforge.errors import ConfigurationError
from apiforge.identity import jwks as jwks_module
from apiforge.identity import tokens as tokens_module
from apiforge.identity.jwks import b64url_decode
from apiforge.identity.tokens import (
    InvalidToken,
    TokenVerifier,
    TrustedIssuer,
    VerifiedToken,
    verify_cli_lines,
)
from apiforge.secrets import Secret

NOW = 1_750_000_000.0
ISSUER = "https://id.example.test"
HS_ISSUER = "https://hs.example.test"
HS_SECRET = "k" * 16 + "-test-only-secret-32-bytes+"
VECTORS = json.loads((Path(__file__).parent / "vectors" / "jwt_attacks.json").read_text())
COMPACT: dict[str, Any] = {"separators": (",", ":"), "ensure_ascii": False}
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _pem(public: Any) -> bytes:
    return bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _int(n: int) -> str:
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def public_jwk(private: Any, kid: str | None, alg: str | None = None) -> dict[str, Any]:
    """The public JWK of a private key, as a provider would publish it."""
    public = private.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        nums = public.public_numbers()
        jwk: dict[str, Any] = {
            "kty": "EC",
            "crv": "P-256",
            "x": b64(nums.x.to_bytes(32, "big")),
            "y": b64(nums.y.to_bytes(32, "big")),
        }
    elif isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}
    else:
        rnums = public.public_numbers()
        jwk = {"kty": "RSA", "n": _int(rnums.n), "e": _int(rnums.e)}
    if kid is not None:
        jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    jwk["use"] = "sig"
    return jwk


@dataclass
class Keys:
    es: ec.EllipticCurvePrivateKey
    ed: ed25519.Ed25519PrivateKey
    rs: rsa.RSAPrivateKey
    ps: rsa.RSAPrivateKey
    attacker: ec.EllipticCurvePrivateKey


def sign(alg: str, key: Any, signing_input: bytes) -> bytes:
    """Sign like an issuer would (JWS compact serialization, RFC 7515 / 7518)."""
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return bytes(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    if alg == "EdDSA":
        return bytes(key.sign(signing_input))
    if alg == "RS256":
        return bytes(key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256()))
    if alg == "PS256":
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        return bytes(key.sign(signing_input, pss, hashes.SHA256()))
    if alg == "HS256":
        return hmac.new(key, signing_input, hashlib.sha256).digest()
    raise AssertionError(alg)


def encode(
    header: Mapping[str, Any] | str, claims: Mapping[str, Any] | str, alg: str, key: Any
) -> str:
    # Compact JSON, as issuers emit it (test_pretty_json_takes_the_strict_path covers the rest).
    h = b64((header if isinstance(header, str) else json.dumps(header, **COMPACT)).encode())
    c = b64((claims if isinstance(claims, str) else json.dumps(claims, **COMPACT)).encode())
    signing_input = f"{h}.{c}".encode()
    signature = b"" if key is None else sign(alg, key, signing_input)
    return f"{h}.{c}.{b64(signature)}"


def base_claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": "api",
        "exp": NOW + 300,
        "iat": NOW - 10,
        "jti": "token-1",
        "scope": "read write",
    }
    claims.update(overrides)
    return claims


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(
        es=ec.generate_private_key(ec.SECP256R1()),
        ed=ed25519.Ed25519PrivateKey.generate(),
        rs=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ps=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        attacker=ec.generate_private_key(ec.SECP256R1()),
    )


@pytest.fixture(scope="session")
def jwks_file(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "jwks.json"
    document = {
        "keys": [
            public_jwk(keys.es, "es1", "ES256"),
            public_jwk(keys.ed, "ed1"),
            public_jwk(keys.rs, "rs1", "RS256"),
            public_jwk(keys.ps, "ps1", "PS256"),
            {"kty": "EC", "crv": "P-256", "use": "enc", "kid": "enc1", "x": "AA", "y": "AA"},
        ]
    }
    path.write_text(json.dumps(document))
    return path


def make_issuers(jwks_file: Path) -> list[TrustedIssuer]:
    return [
        TrustedIssuer(
            issuer=ISSUER,
            audience="api",
            algorithms=("ES256", "EdDSA", "RS256", "PS256"),
            jwks_file=str(jwks_file),
        ),
        TrustedIssuer(
            issuer=HS_ISSUER,
            audience=("api", "internal"),
            algorithms=("HS256",),
            hmac_secret=Secret(HS_SECRET),
        ),
    ]


@pytest.fixture(scope="session")
def verifier(jwks_file: Path) -> TokenVerifier:
    return TokenVerifier(make_issuers(jwks_file))


SIGNERS = {
    "es256": ("ES256", "es1"),
    "eddsa": ("EdDSA", "ed1"),
    "rs256": ("RS256", "rs1"),
    "ps256": ("PS256", "ps1"),
    "hs256": ("HS256", None),
    "attacker_es256": ("ES256", "es1"),
    "hs256_rsa_pub": ("HS256", None),
    "hs256_ec_pub": ("HS256", None),
    "unsigned": ("ES256", "es1"),
}


def _value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"rel"}:
        return NOW + value["rel"]
    return value


def build_vector(vector: Mapping[str, Any], keys: Keys) -> str:
    """Forge the token a vector describes."""
    signer = vector["sign_with"]
    alg, kid = SIGNERS[signer]
    signing_key: Any = {
        "es256": keys.es,
        "eddsa": keys.ed,
        "rs256": keys.rs,
        "ps256": keys.ps,
        "hs256": HS_SECRET.encode(),
        "attacker_es256": keys.attacker,
        "hs256_rsa_pub": _pem(keys.rs.public_key()),
        "hs256_ec_pub": _pem(keys.es.public_key()),
        "unsigned": None,
    }[signer]
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    for name, value in vector.get("header", {}).items():
        if value == {"delete": True}:
            header.pop(name, None)
        elif value == "ATTACKER_JWK":
            header[name] = public_jwk(keys.attacker, None)
        else:
            header[name] = _value(value)
    claims = base_claims()
    for name, value in vector.get("claims", {}).items():
        if value == {"delete": True}:
            claims.pop(name, None)
        elif name == "iss" and value == "hs":
            claims["iss"] = HS_ISSUER
        else:
            claims[name] = _value(value)
    raw_header: Any = vector.get("raw_header", header)
    raw_claims: Any = vector.get("raw_claims", claims)
    if raw_claims == "DEEP":
        raw_claims = f'{{"iss":"{ISSUER}","x":{"[" * 5000}{"]" * 5000}}}'
    elif isinstance(raw_claims, str):
        raw_claims = (
            raw_claims.replace("{ISS}", ISSUER)
            .replace("{EXP}", str(int(NOW + 300)))
            .replace("{IAT}", str(int(NOW - 10)))
        )
    token = encode(raw_header, raw_claims, alg, signing_key)
    return mutate(token, vector.get("mutate"))


def mutate(token: str, how: str | None) -> str:
    h, c, s = token.split(".")
    if how is None:
        return token
    if how == "strip_signature":
        return f"{h}.{c}."
    if how == "drop_signature_part":
        return f"{h}.{c}"
    if how == "pad_header":
        return f"{h}==.{c}.{s}"
    if how == "bad_char":
        return f"{h}.{c[:-2]}+/.{s}"
    if how == "four_parts":
        return f"{token}.{s}"
    if how == "whitespace":
        return f" {token}\n"
    if how == "flip_claims":
        claims = json.loads(b64url_decode(c))
        claims["sub"] = "admin"
        return f"{h}.{b64(json.dumps(claims).encode())}.{s}"
    if how == "oversize":
        claims = json.loads(b64url_decode(c))
        claims["pad"] = "x" * 17_000
        return f"{h}.{b64(json.dumps(claims).encode())}.{s}"
    if how == "noncanonical_signature":
        # 64 bytes encode to 86 characters; the last one carries 4 unused bits. Setting one of
        # them decodes to the same bytes, so without the canonical check this token would verify.
        assert len(s) == 86 and s[-1] in "AQgw"
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        return f"{h}.{c}.{s[:-1]}{alphabet[alphabet.index(s[-1]) + 1]}"
    r_s = {
        "sig_zero": (0, 0),
        "sig_r_is_n": (P256_N, 1),
        "sig_s_above_n": (1, P256_N + 5),
    }
    if how in r_s:
        r, s_value = r_s[how]
        return f"{h}.{c}.{b64(r.to_bytes(32, 'big') + s_value.to_bytes(32, 'big'))}"
    if how == "sig_der":
        raw = b64url_decode(s)
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        return f"{h}.{c}.{b64(der)}"
    raise AssertionError(how)


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_attack_vector(vector: dict[str, Any], keys: Keys, verifier: TokenVerifier) -> None:
    token = build_vector(vector, keys)
    if vector["expect"] == "ok":
        verified = verifier.verify_sync(token, now=NOW)
        assert isinstance(verified, VerifiedToken)
        assert verified.subject == "user-1"
    else:
        with pytest.raises(InvalidToken) as caught:
            verifier.verify_sync(token, now=NOW)
        assert caught.value.reason == vector["expect"]


async def test_async_verify_matches_sync(keys: Keys, verifier: TokenVerifier) -> None:
    good = encode({"alg": "ES256", "kid": "es1"}, base_claims(), "ES256", keys.es)
    assert (await verifier.verify(good, now=NOW)).subject == "user-1"
    with pytest.raises(InvalidToken, match="invalid token"):
        await verifier.verify(mutate(good, "sig_zero"), now=NOW)


def test_vectors_cover_every_refusal_reason() -> None:
    expected = {v["expect"] for v in VECTORS["vectors"]}
    reasons = set(tokens_module.TokenRefusal.__args__)
    assert reasons - expected == {"ambiguous_key"}  # covered by test_ambiguous_key_*


def test_pretty_json_takes_the_strict_path(keys: Keys, verifier: TokenVerifier) -> None:
    claims = base_claims(name="Zoë \u2028", nested={"a": [1, 2.5, None, True]})
    header = '{ "alg": "ES256",\n "kid": "es1" }'
    token = encode(header, json.dumps(claims, indent=2), "ES256", keys.es)
    assert verifier.verify_sync(token, now=NOW).claims["name"] == "Zoë \u2028"
    spaced_dupe = json.dumps(claims, indent=1)[:-1] + ', "sub": "admin"}'
    with pytest.raises(InvalidToken) as caught:
        verifier.verify_sync(encode(header, spaced_dupe, "ES256", keys.es), now=NOW)
    assert caught.value.reason == "duplicate_member"
    nested_dupe = json.dumps(base_claims(), **COMPACT)[:-1] + ',"cnf":{"a":1,"a":2}}'
    with pytest.raises(InvalidToken) as caught:
        verifier.verify_sync(encode(header, nested_dupe, "ES256", keys.es), now=NOW)
    assert caught.value.reason == "duplicate_member"
    huge = json.dumps(base_claims(), **COMPACT)[:-1] + ',"n":123456789012345678901234567890}'
    assert verifier.verify_sync(encode(header, huge, "ES256", keys.es), now=NOW).claims["n"] > 2**64


def test_verified_token_fields(keys: Keys, verifier: TokenVerifier) -> None:
    claims = base_claims(scp=["admin", "read"], nbf=NOW - 5, aud=["api", "x"])
    token = encode({"alg": "ES256", "kid": "es1"}, claims, "ES256", keys.es)
    verified = verifier.verify_sync(token, now=NOW)
    assert verified.issuer == ISSUER
    assert verified.jti == "token-1"
    assert verified.exp == NOW + 300
    assert verified.nbf == NOW - 5
    assert verified.audience == ("api", "x")
    assert verified.scopes == frozenset({"read", "write", "admin"})
    assert verified.digest == hashlib.blake2b(token.encode()).digest()
    assert verified.kid == "es1"
    assert verified.alg == "ES256"
    with pytest.raises(TypeError):
        verified.claims["sub"] = "admin"  # type: ignore[index]


def test_route_audience_narrows(keys: Keys, verifier: TokenVerifier) -> None:
    token = encode(
        {"alg": "ES256", "kid": "es1"}, base_claims(aud=["api", "billing"]), "ES256", keys.es
    )
    assert verifier.verify_sync(token, now=NOW, audience="billing").subject == "user-1"
    with pytest.raises(InvalidToken) as caught:
        verifier.verify_sync(token, now=NOW, audience="admin")
    assert caught.value.reason == "wrong_audience"


def test_boundaries_of_leeway(keys: Keys, verifier: TokenVerifier) -> None:
    token = encode(
        {"alg": "ES256", "kid": "es1"}, base_claims(nbf=NOW + 30, iat=NOW + 30), "ES256", keys.es
    )
    assert verifier.verify_sync(token, now=NOW).subject == "user-1"
    with pytest.raises(InvalidToken):
        verifier.verify_sync(token, now=NOW - 0.5)


def test_ambiguous_key_without_kid(keys: Keys, tmp_path: Path) -> None:
    second = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "jwks.json"
    path.write_text(
        json.dumps({"keys": [public_jwk(keys.es, "a", "ES256"), public_jwk(second, "b", "ES256")]})
    )
    verifier = TokenVerifier([TrustedIssuer(issuer=ISSUER, audience="api", jwks_file=str(path))])
    token = encode({"alg": "ES256"}, base_claims(), "ES256", keys.es)
    with pytest.raises(InvalidToken) as caught:
        verifier.verify_sync(token, now=NOW)
    assert caught.value.reason == "ambiguous_key"
    assert verifier.signature_checks == 0
    with_kid = encode({"alg": "ES256", "kid": "a"}, base_claims(), "ES256", keys.es)
    assert verifier.verify_sync(with_kid, now=NOW).kid == "a"


def test_ambiguous_key_shared_kid(keys: Keys, tmp_path: Path) -> None:
    second = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "jwks.json"
    path.write_text(
        json.dumps({"keys": [public_jwk(keys.es, "a", "ES256"), public_jwk(second, "a", "ES256")]})
    )
    verifier = TokenVerifier([TrustedIssuer(issuer=ISSUER, audience="api", jwks_file=str(path))])
    token = encode({"alg": "ES256", "kid": "a"}, base_claims(), "ES256", keys.es)
    with pytest.raises(InvalidToken) as caught:
        verifier.verify_sync(token, now=NOW)
    assert caught.value.reason == "ambiguous_key"


def test_structural_refusals_do_no_crypto(keys: Keys, jwks_file: Path) -> None:
    verifier = TokenVerifier(make_issuers(jwks_file))
    for vector in VECTORS["vectors"]:
        if vector["expect"] in {"ok", "bad_signature"}:
            continue
        with pytest.raises(InvalidToken):
            verifier.verify_sync(build_vector(vector, keys), now=NOW)
    assert verifier.signature_checks == 0


def test_non_ascii_and_non_string_tokens(verifier: TokenVerifier) -> None:
    for token in ("é.é.é", "eyJ\u0430.e.e"):
        with pytest.raises(InvalidToken) as caught:
            verifier.verify_sync(token, now=NOW)
        assert caught.value.reason == "malformed"
    with pytest.raises(InvalidToken):
        verifier.verify_sync(b"a.b.c", now=NOW)  # type: ignore[arg-type]


def test_pem_issuers(keys: Keys, tmp_path: Path) -> None:
    es_pem = tmp_path / "es.pem"
    es_pem.write_bytes(_pem(keys.es.public_key()))
    rs_pem = tmp_path / "rs.pem"
    rs_pem.write_bytes(_pem(keys.rs.public_key()))
    verifier = TokenVerifier(
        [
            TrustedIssuer(issuer=ISSUER, audience="api", pem_file=str(es_pem)),
            TrustedIssuer(
                issuer=HS_ISSUER, audience="api", algorithms=("RS256",), pem_file=str(rs_pem)
            ),
        ]
    )
    es = encode({"alg": "ES256"}, base_claims(), "ES256", keys.es)
    rs = encode({"alg": "RS256"}, base_claims(iss=HS_ISSUER), "RS256", keys.rs)
    assert verifier.verify_sync(es, now=NOW).alg == "ES256"
    assert verifier.verify_sync(rs, now=NOW).alg == "RS256"
    # The RSA public key as an HMAC secret: the issuer does not allow HS256, and no key does.
    confused = encode({"alg": "HS256"}, base_claims(iss=HS_ISSUER), "HS256", rs_pem.read_bytes())
    with pytest.raises(InvalidToken) as caught:
        verifier.verify_sync(confused, now=NOW)
    assert caught.value.reason == "alg_not_allowed"


def test_interop_with_pyjwt(keys: Keys, verifier: TokenVerifier) -> None:
    """Tokens minted by an independent implementation verify here."""
    for alg, key, kid in (
        ("ES256", keys.es, "es1"),
        ("EdDSA", keys.ed, "ed1"),
        ("RS256", keys.rs, "rs1"),
        ("PS256", keys.ps, "ps1"),
    ):
        token = pyjwt.encode(base_claims(), key, algorithm=alg, headers={"kid": kid})
        assert verifier.verify_sync(token, now=NOW).alg == alg
    hs = pyjwt.encode(base_claims(iss=HS_ISSUER), HS_SECRET, algorithm="HS256")
    assert verifier.verify_sync(hs, now=NOW).alg == "HS256"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"algorithms": ("none",)}, "none"),
        ({"algorithms": ("NoNe",)}, "none"),
        ({"algorithms": ("HS512",)}, "not supported"),
        ({"algorithms": ()}, "empty"),
        ({"leeway": 61}, "leeway"),
        ({"leeway": -1}, "leeway"),
        ({"max_token_bytes": 16 * 1024 + 1}, "max_token_bytes"),
        ({"audience": ()}, "audience"),
        ({"issuer": ""}, "issuer"),
        ({"jwks_url": "https://a.example/jwks", "pem_file": "x.pem"}, "exactly one"),
        ({"jwks_file": None}, "exactly one"),
        ({"algorithms": ("ES256", "HS256")}, "HS256 needs hmac_secret"),
        ({"jwks_file": None, "hmac_secret": Secret("x" * 31), "algorithms": ("HS256",)}, "32"),
        ({"jwks_file": None, "hmac_secret": Secret("x" * 40)}, "HS256 only"),
        ({"jwks_file": None, "jwks_url": "ftp://a.example/jwks"}, "https"),
    ],
)
def test_unsafe_issuer_configuration_is_refused(kwargs: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {"issuer": ISSUER, "audience": "api", "jwks_file": "k.json"}
    settings.update(kwargs)
    with pytest.raises(ConfigurationError, match=message):
        TrustedIssuer(**settings)


def test_hmac_secret_never_in_repr() -> None:
    issuer = TrustedIssuer(
        issuer=ISSUER, audience="api", algorithms=("HS256",), hmac_secret=Secret(HS_SECRET)
    )
    assert HS_SECRET not in repr(issuer)


def test_key_file_problems_are_configuration_errors(keys: Keys, tmp_path: Path) -> None:
    private = tmp_path / "private.pem"
    private.write_bytes(
        keys.es.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    rs_pem = tmp_path / "rs.pem"
    rs_pem.write_bytes(_pem(keys.rs.public_key()))
    es_pem = tmp_path / "es.pem"
    es_pem.write_bytes(_pem(keys.es.public_key()))
    cases = [
        TrustedIssuer(issuer=ISSUER, audience="api", pem_file=str(tmp_path / "missing.pem")),
        TrustedIssuer(issuer=ISSUER, audience="api", pem_file=str(private)),
        # RSA key while only ES256 is allowed; and RSA with both RS256 and PS256 is ambiguous.
        TrustedIssuer(issuer=ISSUER, audience="api", pem_file=str(rs_pem)),
        TrustedIssuer(
            issuer=ISSUER, audience="api", algorithms=("RS256", "PS256"), pem_file=str(rs_pem)
        ),
        TrustedIssuer(issuer=ISSUER, audience="api", algorithms=("EdDSA",), pem_file=str(es_pem)),
    ]
    for issuer in cases:
        with pytest.raises(ConfigurationError):
            TokenVerifier([issuer])


def test_duplicate_issuer_and_missing_jwks_client(jwks_file: Path) -> None:
    issuers = make_issuers(jwks_file)
    with pytest.raises(ConfigurationError, match="twice"):
        TokenVerifier([issuers[0], issuers[0]])
    with pytest.raises(ConfigurationError, match="no JWKS client"):
        TokenVerifier([TrustedIssuer(issuer=ISSUER, audience="a", jwks_url="https://x.test/j")])
    with pytest.raises(ConfigurationError, match="at least one"):
        TokenVerifier([])


def test_cli_lines(keys: Keys, verifier: TokenVerifier) -> None:
    good = encode({"alg": "ES256", "kid": "es1"}, base_claims(), "ES256", keys.es)
    lines = [good + "\n", "\n", "not-a-token\n", mutate(good, "sig_zero")]
    verdicts = [json.loads(line) for line in verify_cli_lines(verifier, lines, now=NOW)]
    assert verdicts[0] == {"ok": True, "claims": base_claims()}
    assert verdicts[1:] == [
        {"ok": False, "reason": "malformed"},
        {"ok": False, "reason": "bad_signature"},
    ]
    assert good not in "".join(verify_cli_lines(verifier, [mutate(good, "sig_zero")], now=NOW))


@given(st.binary(max_size=80))
def test_b64url_round_trip(data: bytes) -> None:
    assert b64url_decode(b64(data)) == data


B64_AND_NOISE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/ ."


@given(st.text(alphabet=B64_AND_NOISE, max_size=40))
def test_b64url_accepts_only_canonical_text(text: str) -> None:
    try:
        decoded = b64url_decode(text)
    except ValueError:
        return
    assert b64(decoded) == text


def test_public_surface() -> None:
    assert sorted(tokens_module.__all__) == sorted(
        [
            "MAX_LEEWAY",
            "MAX_TOKEN_BYTES",
            "InvalidToken",
            "TokenRefusal",
            "TokenVerifier",
            "TrustedIssuer",
            "VerifiedToken",
            "verify_cli_lines",
        ]
    )
    for name in tokens_module.__all__ + jwks_module.__all__:
        assert hasattr(tokens_module if name in tokens_module.__all__ else jwks_module, name)
