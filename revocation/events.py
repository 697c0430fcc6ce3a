"""The revocation record and the bus wire format (pure: no I/O).

A record is stored as JSON in the store's log, exactly as Python wrote it
(Redis' Lua only splices the ``seq`` it allocates in front: its cjson would
round a timestamp to 14 digits, about 100 us). The worker relays records in
messages of this form, one frame per PUBLISH::

    <payload JSON> "." <base64url HMAC-SHA256 of the payload, or empty>

with payload ``{"v": 1, "type": "events", "events": [record, ...]}`` or
``{"v": 1, "type": "heartbeat", "head": <committed seq>, "sent_at": <unix>}``.
The HMAC key is derived from ``event_key`` and the namespace, so a message
signed for one deployment is refused by another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from .tokens import Session

WIRE_VERSION = 1
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_SUBJECT_LENGTH = 512
Kind = Literal["token", "session", "user", "all"]
EVERYONE = "*"


class Revocation(BaseModel):
    """One committed revocation.

    ``kind`` and ``subject``: ``token`` + jti, ``session`` + session handle,
    ``user`` + user id, ``all`` + ``"*"``. ``not_before`` (user and all): tokens
    issued before it (``iat < not_before``) are revoked. The record matters
    until ``expires_at``, after which no token it can match is still valid.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    seq: int = Field(gt=0, strict=True)
    kind: Kind
    subject: Annotated[str, Field(min_length=1, max_length=MAX_SUBJECT_LENGTH)]
    revoked_at: float
    expires_at: float
    not_before: float | None = None
    reason: Annotated[str, Field(max_length=1024)] | None = None
    confirm: bool = Field(default=False, strict=True)
    """``revoke(..., wait=)`` awaits it: clients report their presence at once on applying it."""

    @model_validator(mode="after")
    def _coherent(self) -> Revocation:
        if (self.not_before is None) != (self.kind in ("token", "session")):
            raise ValueError("not_before is required for user and all revocations, only for them")
        if self.kind == "all" and self.subject != EVERYONE:
            raise ValueError(f"an 'all' revocation has subject {EVERYONE!r}")
        return self

    @property
    def field(self) -> str:
        """The store's key for this record's target, e.g. ``user:alice``."""
        return f"{self.kind}:{self.subject}"

    def matches(self, session: Session) -> bool:
        """Whether this revocation covers ``session`` (ignoring expiry)."""
        if self.kind == "token":
            return session.jti == self.subject
        if self.kind == "session":
            return session.session_handle == self.subject
        assert self.not_before is not None
        if self.kind == "user" and session.user_id != self.subject:
            return False
        return session.issued_at < self.not_before


def record_body(
    *,
    kind: Kind,
    subject: str,
    revoked_at: float,
    expires_at: float,
    not_before: float | None,
    reason: str | None,
    confirm: bool = False,
) -> bytes:
    """A record's JSON without ``seq``, as the store's commit script expects it.

    The script splices ``"seq": N`` in front; validation here keeps a record
    that could not be read back out of the store.
    """
    Revocation(
        seq=1,
        kind=kind,
        subject=subject,
        revoked_at=revoked_at,
        expires_at=expires_at,
        not_before=not_before,
        reason=reason,
        confirm=confirm,
    )
    body: dict[str, Any] = {
        "kind": kind,
        "subject": subject,
        "revoked_at": revoked_at,
        "expires_at": expires_at,
    }
    if not_before is not None:
        body["not_before"] = not_before
    if reason is not None:
        body["reason"] = reason
    if confirm:
        body["confirm"] = True
    return orjson.dumps(body)


_RECORDS = TypeAdapter(list[Revocation])


def parse_records(raw: list[bytes]) -> list[Revocation]:
    """Records as the store holds them (already trusted)."""
    if not raw:
        return []
    return _RECORDS.validate_json(b"[" + b",".join(raw) + b"]")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The worker's periodic word: everything up to ``head`` is committed and relayed."""

    head: int
    sent_at: float
    epoch: str = ""
    """The replication id of the master that dated it: it changes when a replica
    is promoted (or a server restarts), and with it the seq history may fork."""


@dataclass(frozen=True, slots=True)
class Events:
    """A batch of revocations relayed in ``seq`` order."""

    revocations: list[Revocation]


class BadMessage(Exception):
    """A bus message that is dropped. ``reason`` is a short stable label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class _HeartbeatPayload(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    v: Literal[1]
    type: Literal["heartbeat"]
    head: int = Field(ge=0, strict=True)
    sent_at: float
    epoch: str = Field(default="", max_length=64, strict=True)


class _EventsPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")
    v: Literal[1]
    type: Literal["events"]
    events: list[Revocation] = Field(min_length=1)


def bus_key(event_key: str, namespace: str) -> bytes:
    """The HMAC key for one deployment's bus messages."""
    return hmac.new(
        event_key.encode(), b"revocation bus v1|" + namespace.encode(), hashlib.sha256
    ).digest()


class Codec:
    """Encodes and decodes bus frames; signs when it has a key.

    ``require_signature`` refuses unsigned frames; a frame that carries a
    signature is always checked when a key is known.
    """

    def __init__(self, key: bytes | None, *, require_signature: bool) -> None:
        if require_signature and key is None:
            raise ValueError("a codec that requires signatures needs a key")
        self._key = key
        self._require_signature = require_signature

    def _frame(self, payload: bytes) -> bytes:
        if self._key is None:
            return payload + b"."
        mac = hmac.digest(self._key, payload, "sha256")
        return payload + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")

    def events(self, records: list[bytes]) -> bytes:
        """A frame relaying ``records`` (store JSON, in seq order)."""
        return self._frame(b'{"v":1,"type":"events","events":[' + b",".join(records) + b"]}")

    def heartbeat(self, head: int, sent_at: float, epoch: str = "") -> bytes:
        """A heartbeat frame."""
        message = {"v": WIRE_VERSION, "type": "heartbeat", "head": head, "sent_at": sent_at}
        if epoch:
            message["epoch"] = epoch
        return self._frame(orjson.dumps(message))

    def decode(self, frame: bytes) -> Heartbeat | Events:
        """The message in ``frame``.

        Raises:
            BadMessage: with ``reason`` one of ``too_large``, ``malformed``,
                ``unsigned``, ``bad_signature``, ``bad_version``, ``invalid``.
        """
        if not isinstance(frame, bytes):
            raise BadMessage("malformed", "not bytes")
        if len(frame) > MAX_MESSAGE_BYTES:
            raise BadMessage("too_large", f"{len(frame)} bytes")
        payload, dot, signature = frame.rpartition(b".")
        if not dot:
            raise BadMessage("malformed", "no signature separator")
        if signature:
            if self._key is not None:
                try:
                    mac = base64.urlsafe_b64decode(signature + b"=" * (-len(signature) % 4))
                except (binascii.Error, ValueError):
                    raise BadMessage("bad_signature", "not base64url") from None
                expected = hmac.digest(self._key, payload, "sha256")
                if not hmac.compare_digest(mac, expected):
                    raise BadMessage("bad_signature")
        elif self._require_signature:
            raise BadMessage("unsigned")
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise BadMessage("malformed", "payload is not JSON") from None
        if not isinstance(message, dict):
            raise BadMessage("malformed", "payload is not an object")
        if message.get("v") != WIRE_VERSION:
            raise BadMessage("bad_version", repr(message.get("v"))[:32])
        try:
            if message.get("type") == "heartbeat":
                beat = _HeartbeatPayload.model_validate(message)
                return Heartbeat(beat.head, beat.sent_at, beat.epoch)
            events = _EventsPayload.model_validate(message)
        except ValidationError as exc:
            raise BadMessage("invalid", f"{exc.error_count()} validation errors") from None
        return Events(events.events)
