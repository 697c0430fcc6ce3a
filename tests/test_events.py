from __future__ import annotations

import orjson
import pytest

from revocation.events import (
    BadMessage,
    Codec,
    Events,
    Heartbeat,
    Revocation,
    bus_key,
    parse_records,
    record_body,
)

KEY = bus_key("e" * 32, "prod")


def record(seq: int, **fields: object) -> bytes:
    body = record_body(
        kind="token",
        subject=f"j{seq}",
        revoked_at=1.5,
        expires_at=1e10,
        not_before=None,
        reason=None,
    )
    data = orjson.loads(body)
    data.update(fields)
    return orjson.dumps({"seq": seq, **data})


def test_records_round_trip_with_exact_timestamps() -> None:
    revoked_at = 1_796_400_000.123457
    body = record_body(
        kind="user",
        subject="alice",
        revoked_at=revoked_at,
        expires_at=revoked_at + 900,
        not_before=revoked_at,
        reason="laptop stolen",
    )
    (parsed,) = parse_records([b'{"seq":7,' + body[1:]])
    assert parsed.seq == 7 and parsed.not_before == revoked_at
    assert parsed.reason == "laptop stolen" and parsed.field == "user:alice"


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "user", "subject": "a", "not_before": None},
        {"kind": "token", "subject": "a", "not_before": 1.0},
        {"kind": "all", "subject": "alice", "not_before": 1.0},
        {"kind": "group", "subject": "a", "not_before": None},
        {"kind": "token", "subject": "", "not_before": None},
    ],
)
def test_incoherent_records_are_refused(fields: dict) -> None:
    with pytest.raises(ValueError):
        record_body(revoked_at=1.0, expires_at=2.0, reason=None, **fields)


def test_signed_frames_decode() -> None:
    codec = Codec(KEY, require_signature=True)
    message = codec.decode(codec.events([record(1), record(2)]))
    assert isinstance(message, Events)
    assert [r.seq for r in message.revocations] == [1, 2]
    beat = codec.decode(codec.heartbeat(42, 1_796_400_000.5))
    assert beat == Heartbeat(42, 1_796_400_000.5)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"garbage", "malformed"),
        (b"\xff\xfe.", "unsigned"),
        (b"x" * (5 * 1024 * 1024), "too_large"),
    ],
)
def test_garbage_is_dropped_with_a_reason(frame: bytes, reason: str) -> None:
    with pytest.raises(BadMessage) as caught:
        Codec(KEY, require_signature=True).decode(frame)
    assert caught.value.reason == reason


def test_unsigned_and_forged_frames_are_refused() -> None:
    signer = Codec(KEY, require_signature=True)
    unsigned = Codec(None, require_signature=False).events([record(1)])
    forger = Codec(bus_key("f" * 32, "prod"), require_signature=True).events([record(1)])
    other_namespace = Codec(bus_key("e" * 32, "staging"), require_signature=True).heartbeat(1, 1.0)
    tampered = signer.events([record(1)]).replace(b'"j1"', b'"j2"')
    for frame, reason in [
        (unsigned, "unsigned"),
        (forger, "bad_signature"),
        (other_namespace, "bad_signature"),
        (tampered, "bad_signature"),
        (signer.events([record(1)])[:-3] + b"!!!", "bad_signature"),
    ]:
        with pytest.raises(BadMessage) as caught:
            signer.decode(frame)
        assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"v":2,"type":"heartbeat","head":1,"sent_at":1}', "bad_version"),
        (b'{"type":"heartbeat","head":1,"sent_at":1}', "bad_version"),
        (b'{"v":1,"type":"heartbeat","head":-1,"sent_at":1}', "invalid"),
        (b'{"v":1,"type":"events","events":[]}', "invalid"),
        (b'{"v":1,"type":"events","events":[{"seq":1}]}', "invalid"),
        (b'{"v":1,"type":"surprise"}', "invalid"),
        (b"[1,2,3]", "malformed"),
        (b"{not json", "malformed"),
    ],
)
def test_well_signed_nonsense_is_dropped(payload: bytes, reason: str) -> None:
    codec = Codec(KEY, require_signature=True)
    with pytest.raises(BadMessage) as caught:
        codec.decode(codec._frame(payload))
    assert caught.value.reason == reason


def test_a_codec_without_key_accepts_unsigned_frames_only_when_allowed() -> None:
    lenient = Codec(None, require_signature=False)
    assert isinstance(lenient.decode(lenient.heartbeat(3, 1.0)), Heartbeat)
    with pytest.raises(ValueError):
        Codec(None, require_signature=True)


def test_revocation_matching() -> None:
    from revocation.tokens import Session

    session = Session("alice", "laptop", "j1", 100.0, 200.0, {})

    def rev(kind: str, subject: str, nb: float | None = None) -> Revocation:
        return Revocation(
            seq=1, kind=kind, subject=subject, revoked_at=1, expires_at=2, not_before=nb
        )  # type: ignore[arg-type]

    assert rev("token", "j1").matches(session)
    assert not rev("token", "j2").matches(session)
    assert rev("session", "laptop").matches(session)
    assert rev("user", "alice", 100.5).matches(session)
    assert not rev("user", "alice", 100.0).matches(session)  # iat == not_before: issued after
    assert not rev("user", "bob", 999).matches(session)
    assert rev("all", "*", 100.000001).matches(session)
