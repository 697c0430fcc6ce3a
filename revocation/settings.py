"""Configuration: one frozen pydantic-settings model.

Every field can also come from the environment as ``REVOCATION_<FIELD>``
(``verification_keys`` as a JSON object). Bad values raise :class:`ConfigError`
naming the field; secrets are :class:`pydantic.SecretStr` and never appear in
reprs or error messages.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from .errors import ConfigError

Algorithm = Literal["HS256", "HS384", "HS512", "EdDSA", "ES256", "RS256"]
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
# RFC 7518 section 3.2: an HMAC key at least as long as the hash output.
MIN_HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
MIN_EVENT_KEY_BYTES = 32
_URL_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+sentinel://",
    "rediss+sentinel://",
    "redis+cluster://",
    "rediss+cluster://",
)
_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class Settings(BaseSettings):
    """Everything the issuer, the clients, the revoker and the worker need.

    Immutable once built. ``Settings()`` reads the environment; keyword
    arguments override it.
    """

    model_config = SettingsConfigDict(
        env_prefix="REVOCATION_", frozen=True, extra="forbid", validate_default=True
    )

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="The store and bus: redis://, rediss:// (TLS) or unix:// for one server; "
        "redis+sentinel://host:26379,.../<service> for a Sentinel-managed master; "
        "redis+cluster://host:port,... for a Redis Cluster (rediss+... for TLS).",
    )
    subscribe_from: Literal["primary", "replica"] = Field(
        default="primary",
        description="Where app processes subscribe and catch up: the master, or one of its "
        "replicas picked at random (spreads the fan-out; the master when none answers).",
    )
    replica_acks: int = Field(
        default=0,
        ge=0,
        le=16,
        description="revoke() returns only once this many replicas acknowledged the write "
        "(Redis WAIT); 0: once the master has it.",
    )
    replica_ack_timeout: float = Field(
        default=1.0, gt=0, le=60, description="Seconds revoke() waits for replica_acks."
    )
    namespace: str = Field(
        default="revocation",
        description="Prefix of every key and channel; all keys share the hash slot {namespace}.",
    )
    signing_key: SecretStr | None = Field(
        default=None,
        description="HS*: the HMAC key as given (UTF-8). EdDSA/ES256/RS256: a PEM private key.",
    )
    algorithm: Algorithm = Field(default="HS256", description="Algorithm of signing_key.")
    key_id: str | None = Field(
        default=None, description="kid of signing_key; derived from the key when unset."
    )
    verification_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Extra keys by kid: PEM public keys, or HMAC secrets, for rotation "
        "and verify-only processes.",
    )
    issuer: str | None = Field(default=None, description="iss to set and require.")
    audience: str | None = Field(default=None, description="aud to set and require.")
    access_token_ttl: int = Field(
        default=900, gt=0, description="Seconds; the default and the longest TTL issue() accepts."
    )
    leeway: float = Field(
        default=0.0, ge=0, le=300, description="Seconds of clock skew tolerated on exp and nbf."
    )
    heartbeat_interval: float = Field(
        default=0.5, gt=0, le=60, description="Seconds between the worker's heartbeats."
    )
    max_staleness: float = Field(
        default=2.0, gt=0, description="A client without a heartbeat for this long is stale."
    )
    stale_policy: Literal["deny", "allow"] = Field(
        default="deny",
        description="What check_database=True does when neither the local copy nor the "
        "store can answer.",
    )
    fallback_timeout: float = Field(
        default=0.05, gt=0, le=10, description="Most seconds a store fallback adds to a request."
    )
    event_key: SecretStr | None = Field(
        default=None, description="HMAC key that signs bus messages (at least 32 bytes)."
    )
    cookie_name: str = Field(
        default="access_token",
        description="Cookie the framework integrations read the token from "
        "(the Authorization header wins).",
    )
    presence_interval: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="Seconds between a client's presence reports (0: none). An entry not "
        "renewed for 3 intervals is a dead process's.",
    )
    metrics: bool = Field(
        default=False,
        description="Register each started client's metrics in prometheus_client's default "
        "registry (needs the metrics extra).",
    )
    allow_unsigned_events: bool = Field(
        default=False, description="Let a client run without event_key (accepts unsigned events)."
    )

    def __init__(self, **values: Any) -> None:
        # The error is raised outside the except block, so that no exception
        # chain (whose messages and attributes hold the raw input: secrets too)
        # travels with it.
        try:
            super().__init__(**values)
        except ValidationError as exc:
            error = _config_error(exc)
        except SettingsError as exc:  # an environment variable that is not valid JSON
            match = re.search(r'field "([^"]+)"', str(exc))
            field = match.group(1) if match else None
            error = ConfigError(
                f"invalid settings: {field or 'an environment variable'}: not valid JSON",
                field=field,
            )
        else:
            return
        raise error

    @field_validator("namespace")
    @classmethod
    def _namespace_is_a_plain_word(cls, value: str) -> str:
        if not _NAMESPACE.match(value):
            raise ValueError("use 1-64 characters from A-Z a-z 0-9 _ . : -")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_has_a_known_scheme(cls, value: str) -> str:
        if not value.startswith(_URL_SCHEMES):
            raise ValueError("must start with " + ", ".join(_URL_SCHEMES))
        return value

    @field_validator("event_key")
    @classmethod
    def _event_key_is_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_EVENT_KEY_BYTES:
            raise ValueError(f"must be at least {MIN_EVENT_KEY_BYTES} bytes")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        # pydantic wraps these (ConfigError is a ValueError); _config_error
        # unwraps them to keep the field they name.
        if self.max_staleness <= self.heartbeat_interval:
            raise ConfigError(
                "invalid settings: max_staleness must be greater than heartbeat_interval",
                field="max_staleness",
            )
        if self.signing_key is not None and self.algorithm in HMAC_ALGORITHMS:
            need = MIN_HMAC_KEY_BYTES[self.algorithm]
            if len(self.signing_key.get_secret_value().encode()) < need:
                raise ConfigError(
                    f"invalid settings: signing_key must be at least {need} bytes "
                    f"for {self.algorithm}",
                    field="signing_key",
                )
        return self


def _config_error(exc: ValidationError) -> ConfigError:
    """A ConfigError that names the fields and never echoes their values."""
    parts = []
    first_field: str | None = None
    for error in exc.errors(include_input=False, include_url=False):
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, ConfigError) and cause.field:
            field, message = cause.field, cause.message.removeprefix("invalid settings: ")
        else:
            field = ".".join(str(p) for p in error["loc"]) or "settings"
            message = error["msg"]
        if first_field is None:
            first_field = field
        parts.append(f"{field}: {message}")
    return ConfigError("invalid settings: " + "; ".join(parts), field=first_field)


def to_environment(settings: Settings) -> dict[str, str]:
    """``REVOCATION_*`` variables that rebuild ``settings`` in another process.

    For starting workers and app processes from code (the demo, tests,
    benchmarks). The result holds the secrets in clear: pass it to the child's
    environment and nowhere else.
    """
    env: dict[str, str] = {}
    for name, value in settings:
        if value is None:
            continue
        if isinstance(value, SecretStr):
            text = value.get_secret_value()
        elif isinstance(value, dict):
            text = json.dumps(
                {
                    k: v.get_secret_value() if isinstance(v, SecretStr) else v
                    for k, v in value.items()
                }
            )
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"REVOCATION_{name.upper()}"] = text
    return env
