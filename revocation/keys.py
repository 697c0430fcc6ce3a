"""Signing and verification keys, by ``kid``.

A :class:`KeyRing` is built once from :class:`Settings`: every key is parsed
and prepared up front, so verification does no key parsing. Each key is bound
to exactly one algorithm, and a token whose header names another algorithm is
refused: that is what stops algorithm confusion (an HS256 token "signed" with
an RSA public key used as the HMAC secret).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import Algorithm, ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

from .errors import ConfigError
from .settings import HMAC_ALGORITHMS, MIN_HMAC_KEY_BYTES, Settings

_ALGORITHMS: dict[str, Algorithm] = {
    "HS256": HMACAlgorithm(HMACAlgorithm.SHA256),
    "HS384": HMACAlgorithm(HMACAlgorithm.SHA384),
    "HS512": HMACAlgorithm(HMACAlgorithm.SHA512),
    "RS256": RSAAlgorithm(RSAAlgorithm.SHA256),
    "ES256": ECAlgorithm(ECAlgorithm.SHA256),
    "EdDSA": OKPAlgorithm(),
}


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A prepared public key (or HMAC secret) and the one algorithm it serves."""

    kid: str
    alg: str
    key: Any
    algorithm: Algorithm

    def __repr__(self) -> str:
        return f"VerificationKey(kid={self.kid!r}, alg={self.alg!r})"

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        return self.algorithm.verify(signing_input, self.key, signature)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A prepared private key (or HMAC secret), its kid and algorithm."""

    kid: str
    alg: str
    key: Any
    algorithm: Algorithm

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, alg={self.alg!r})"

    def sign(self, signing_input: bytes) -> bytes:
        return self.algorithm.sign(signing_input, self.key)


class KeyRing:
    """The signing key (if any) and every verification key, by kid. Immutable."""

    def __init__(self, settings: Settings) -> None:
        self.signing: SigningKey | None = None
        keys: dict[str, VerificationKey] = {}
        if settings.signing_key is not None:
            self.signing, public = _signing_key(
                settings.signing_key.get_secret_value(), settings.algorithm, settings.key_id
            )
            keys[public.kid] = public
        for kid, secret in settings.verification_keys.items():
            if kid in keys:
                raise ConfigError(
                    f"invalid settings: verification_keys: kid {kid!r} is also the signing key's",
                    field="verification_keys",
                )
            keys[kid] = _verification_key(kid, secret.get_secret_value(), settings.algorithm)
        self.by_kid: dict[str, VerificationKey] = keys

    def __repr__(self) -> str:
        return f"KeyRing(signing={self.signing!r}, kids={sorted(self.by_kid)!r})"


def _is_pem(text: str) -> bool:
    return text.lstrip().startswith("-----BEGIN")


def _algorithm_of(public_key: Any) -> str:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise ConfigError("only P-256 EC keys (ES256) are supported", field="signing_key")
        return "ES256"
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            raise ConfigError("RSA keys must have at least 2048 bits", field="signing_key")
        return "RS256"
    raise ConfigError(f"unsupported key type {type(public_key).__name__}", field="signing_key")


def _thumbprint(public_key: Any) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


def _hmac_kid(secret: bytes) -> str:
    # A keyed digest, so the kid reveals nothing a token's own MAC does not.
    return "hs-" + hmac.new(secret, b"revocation key id", hashlib.sha256).hexdigest()[:16]


def _signing_key(text: str, alg: str, kid: str | None) -> tuple[SigningKey, VerificationKey]:
    algorithm = _ALGORITHMS[alg]
    if alg in HMAC_ALGORITHMS:
        if _is_pem(text):
            raise ConfigError(
                f"signing_key is a PEM key but algorithm is {alg}", field="signing_key"
            )
        secret = text.encode()
        kid = kid or _hmac_kid(secret)
        return (
            SigningKey(kid, alg, secret, algorithm),
            VerificationKey(kid, alg, secret, algorithm),
        )
    if not _is_pem(text):
        raise ConfigError(f"signing_key must be a PEM private key for {alg}", field="signing_key")
    try:
        private = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            "signing_key is not a readable unencrypted PEM private key", field="signing_key"
        ) from exc
    public = private.public_key()
    if _algorithm_of(public) != alg:
        raise ConfigError(
            f"signing_key is a {_algorithm_of(public)} key but algorithm is {alg}",
            field="signing_key",
        )
    kid = kid or _thumbprint(public)
    return SigningKey(kid, alg, private, algorithm), VerificationKey(kid, alg, public, algorithm)


def _verification_key(kid: str, text: str, default_alg: str) -> VerificationKey:
    if not _is_pem(text):
        alg = default_alg if default_alg in HMAC_ALGORITHMS else "HS256"
        secret = text.encode()
        if len(secret) < MIN_HMAC_KEY_BYTES[alg]:
            raise ConfigError(
                f"verification_keys[{kid!r}] is shorter than {MIN_HMAC_KEY_BYTES[alg]} bytes",
                field="verification_keys",
            )
        return VerificationKey(kid, alg, secret, _ALGORITHMS[alg])
    data = text.encode()
    try:
        public: Any = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            public = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"verification_keys[{kid!r}] is not a readable PEM key",
                field="verification_keys",
            ) from exc
    alg = _algorithm_of(public)
    return VerificationKey(kid, alg, public, _ALGORITHMS[alg])
