from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from revocation import InvalidToken, Settings, TokenIssuer, TokenVerifier, TryRefreshToken
from revocation.tokens import MAX_TOKEN_LENGTH

KEY = "k" * 32


class Clock:
    def __init__(self, now: float = 1_800_000_000.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(header: dict[str, Any], payload: dict[str, Any], key: bytes = KEY.encode()) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def pem_private(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def pem_public(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings() -> Settings:
    return Settings(signing_key=KEY, issuer="https://auth.example", audience="api")


def kid_of(settings: Settings) -> str:
    token = TokenIssuer(settings).issue("x")
    return str(jwt.get_unverified_header(token)["kid"])


def good_claims(clock: Clock, **extra: Any) -> dict[str, Any]:
    return {
        "sub": "alice",
        "sid": "s1",
        "jti": "j1",
        "iat": clock.now,
        "exp": clock.now + 60,
        "iss": "https://auth.example",
        "aud": "api",
        **extra,
    }


def test_issued_token_carries_the_documented_claims(settings: Settings, clock: Clock) -> None:
    token = TokenIssuer(settings, clock=clock).issue(
        "alice", session_handle="laptop", ttl=60, claims={"role": "admin"}
    )
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256" and header["kid"]
    claims = jwt.decode(
        token,
        KEY,
        algorithms=["HS256"],
        audience="api",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["sub"] == "alice" and claims["sid"] == "laptop" and claims["role"] == "admin"
    assert claims["iat"] == 1_800_000_000.25  # sub-second precision survives
    assert claims["exp"] == 1_800_000_060.25
    assert claims["iss"] == "https://auth.example" and claims["aud"] == "api"
    assert len(claims["jti"]) == 32


def test_new_session_and_jti_are_made_when_not_given(settings: Settings) -> None:
    verifier = TokenVerifier(settings)
    issuer = TokenIssuer(settings)
    a, b = (verifier.verify(issuer.issue("alice")) for _ in range(2))
    assert a.session_handle and b.session_handle and a.session_handle != b.session_handle
    assert a.jti != b.jti


def test_verify_returns_the_session(settings: Settings, clock: Clock) -> None:
    token = TokenIssuer(settings, clock=clock).issue("alice", session_handle="laptop")
    session = TokenVerifier(settings, clock=clock).verify(token)
    assert session.get_user_id() == "alice" == session.user_id
    assert session.get_handle() == "laptop" == session.session_handle
    assert session.claims["sub"] == "alice"
    with pytest.raises(TypeError):
        session.claims["sub"] = "mallory"  # type: ignore[index]


@pytest.mark.parametrize("ttl", [0, -1, 901])
def test_ttl_outside_the_configured_range_is_a_value_error(settings: Settings, ttl: int) -> None:
    with pytest.raises(ValueError, match="access_token_ttl"):
        TokenIssuer(settings).issue("alice", ttl=ttl)


def test_custom_claims_cannot_override_registered_ones(settings: Settings) -> None:
    with pytest.raises(ValueError, match="exp"):
        TokenIssuer(settings).issue("alice", claims={"exp": 9_999_999_999})


def test_expired_token_asks_for_a_refresh_even_when_cached(
    settings: Settings, clock: Clock
) -> None:
    token = TokenIssuer(settings, clock=clock).issue("alice", ttl=10)
    verifier = TokenVerifier(settings, clock=clock)
    verifier.verify(token)  # now cached
    clock.now += 10
    with pytest.raises(TryRefreshToken) as caught:
        verifier.verify(token)
    assert caught.value.code == "try_refresh_token"


def test_leeway_tolerates_that_much_clock_skew(clock: Clock) -> None:
    settings = Settings(signing_key=KEY, leeway=5)
    token = TokenIssuer(settings, clock=clock).issue("alice", ttl=10)
    clock.now += 14
    assert TokenVerifier(settings, clock=clock).verify(token).user_id == "alice"
    clock.now += 1
    with pytest.raises(TryRefreshToken):
        TokenVerifier(settings, clock=clock).verify(token)


def test_a_tampered_payload_fails_the_signature(settings: Settings) -> None:
    token = TokenIssuer(settings).issue("alice")
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "admin"
    forged = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    with pytest.raises(InvalidToken, match="bad signature"):
        TokenVerifier(settings).verify(forged)


def test_a_token_signed_with_another_key_is_refused(settings: Settings, clock: Clock) -> None:
    kid = kid_of(settings)
    token = hs256({"alg": "HS256", "kid": kid}, good_claims(clock), key=b"z" * 32)
    with pytest.raises(InvalidToken, match="bad signature"):
        TokenVerifier(settings, clock=clock).verify(token)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"alg": "none"}, "kid"),
        ({"alg": "none", "kid": "KID"}, "not allowed"),
        ({"alg": "HS512", "kid": "KID"}, "not allowed"),
        ({"alg": "HS256", "kid": "other"}, "unknown key id"),
        ({"alg": "HS256", "kid": "KID", "crit": ["exp"]}, "crit"),
        ({"alg": 5, "kid": "KID"}, "alg"),
        ({"alg": "HS256", "kid": ["KID"]}, "kid"),
    ],
)
def test_bad_headers_are_invalid(
    settings: Settings, clock: Clock, header: dict[str, Any], reason: str
) -> None:
    kid = kid_of(settings)
    header = {k: (kid if v == "KID" else [kid] if v == ["KID"] else v) for k, v in header.items()}
    token = hs256(header, good_claims(clock))
    with pytest.raises(InvalidToken, match=reason):
        TokenVerifier(settings, clock=clock).verify(token)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": "9999999999"}, "'exp' must be a number"),
        ({"iat": True}, "'iat' must be a number"),
        ({"sub": 42}, "'sub' must be a non-empty string"),
        ({"sub": ""}, "'sub' must be a non-empty string"),
        ({"jti": None}, "'jti' is missing"),
        ({"nbf": 9_999_999_999}, "not yet valid"),
        ({"iss": "https://evil.example"}, "issuer"),
        ({"aud": "other"}, "audience"),
        ({"aud": ["other", "x"]}, "audience"),
    ],
)
def test_bad_claims_are_invalid(
    settings: Settings, clock: Clock, claims: dict[str, Any], reason: str
) -> None:
    payload = {k: v for k, v in good_claims(clock, **claims).items() if v is not None}
    token = hs256({"alg": "HS256", "kid": kid_of(settings)}, payload)
    with pytest.raises(InvalidToken, match=reason):
        TokenVerifier(settings, clock=clock).verify(token)


def test_an_audience_in_a_list_is_accepted(settings: Settings, clock: Clock) -> None:
    token = hs256({"alg": "HS256", "kid": kid_of(settings)}, good_claims(clock, aud=["x", "api"]))
    assert TokenVerifier(settings, clock=clock).verify(token).user_id == "alice"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.###.$$$",
        "é.é.é",
        "eyJhbGciOiJIUzI1NiJ9.e30",
        b64(b"[1,2]") + "." + b64(b"{}") + "." + b64(b"x"),
        b64(b"not json") + "." + b64(b"{}") + "." + b64(b"x"),
        "x" * (MAX_TOKEN_LENGTH + 1),
    ],
)
def test_malformed_tokens_are_invalid_with_a_reason(settings: Settings, token: str) -> None:
    with pytest.raises(InvalidToken) as caught:
        TokenVerifier(settings).verify(token)
    assert caught.value.code == "invalid_token" and str(caught.value)


def test_algorithm_confusion_with_an_rsa_public_key_as_hmac_secret_is_refused() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    settings = Settings(signing_key=pem_private(private), algorithm="RS256")
    kid = kid_of(settings)
    now = 1_800_000_000.0
    claims = {"sub": "mallory", "jti": "j", "iat": now, "exp": now + 60}
    forged = hs256({"alg": "HS256", "kid": kid}, claims, key=pem_public(private).encode())
    with pytest.raises(InvalidToken, match="not allowed"):
        TokenVerifier(settings, clock=lambda: now).verify(forged)


@pytest.mark.parametrize(
    ("algorithm", "make_key"),
    [
        ("EdDSA", ed25519.Ed25519PrivateKey.generate),
        ("ES256", lambda: ec.generate_private_key(ec.SECP256R1())),
        ("RS256", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ],
)
def test_asymmetric_tokens_verify_with_the_public_key_alone(algorithm: str, make_key: Any) -> None:
    private = make_key()
    signer = Settings(signing_key=pem_private(private), algorithm=algorithm)
    token = TokenIssuer(signer).issue("alice")
    kid = str(jwt.get_unverified_header(token)["kid"])
    verify_only = Settings(verification_keys={kid: pem_public(private)})
    assert TokenVerifier(verify_only).verify(token).user_id == "alice"
    # pyjwt agrees the token is standard.
    claims = jwt.decode(token, pem_public(private), algorithms=[algorithm])
    assert claims["sub"] == "alice"


def test_old_keys_keep_verifying_after_rotation() -> None:
    old = Settings(signing_key="o" * 32, key_id="2026-11")
    token = TokenIssuer(old).issue("alice")
    rotated = Settings(
        signing_key="n" * 32, key_id="2026-12", verification_keys={"2026-11": "o" * 32}
    )
    assert TokenVerifier(rotated).verify(token).user_id == "alice"
    assert TokenVerifier(Settings(signing_key="n" * 32, key_id="2026-12")) is not None
    with pytest.raises(InvalidToken, match="unknown key id"):
        TokenVerifier(Settings(signing_key="n" * 32, key_id="2026-12")).verify(token)


def test_the_verified_token_cache_stays_bounded(settings: Settings) -> None:
    verifier = TokenVerifier(settings, cache_size=10)
    issuer = TokenIssuer(settings)
    for _ in range(25):
        verifier.verify(issuer.issue("alice"))
    assert len(verifier._cache) <= 10


def test_expiry_may_be_skipped_for_revoking_an_expired_token(
    settings: Settings, clock: Clock
) -> None:
    token = TokenIssuer(settings, clock=clock).issue("alice", ttl=1)
    clock.now += 5
    verifier = TokenVerifier(settings, clock=clock)
    assert verifier.verify(token, verify_exp=False).user_id == "alice"
    with pytest.raises(TryRefreshToken):
        verifier.verify(token)
