from __future__ import annotations

import random

from revocation.cache import RevocationCache
from revocation.events import Revocation
from revocation.tokens import Session


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rev(seq: int, kind: str = "token", subject: str | None = None, **extra: float) -> Revocation:
    fields = {"revoked_at": 1000.0, "expires_at": 1100.0, **extra}
    if kind in ("user", "all") and "not_before" not in fields:
        fields["not_before"] = 1000.0
    return Revocation(
        seq=seq, kind=kind, subject=subject or ("*" if kind == "all" else f"j{seq}"), **fields
    )  # type: ignore[arg-type]


def session(jti: str = "jx", sid: str = "sx", user: str = "ux", iat: float = 999.0) -> Session:
    return Session(user, sid, jti, iat, iat + 900, {})


def test_events_apply_in_seq_order_whatever_order_they_arrive_in() -> None:
    cache = RevocationCache(clock=Clock())
    order = list(range(1, 101))
    random.Random(7).shuffle(order)
    seen = []
    for seq in order:
        cache.offer(rev(seq))
        seen.append(cache.applied_seq)
        assert all(
            cache.check(session(jti=f"j{s}")) == "token" for s in range(1, cache.applied_seq + 1)
        )
    assert seen == sorted(seen)  # applied_seq only grows, as a prefix
    assert cache.applied_seq == 100 and cache.complete


def test_a_gap_holds_later_events_back_until_it_is_filled() -> None:
    cache = RevocationCache(clock=Clock())
    cache.offer(rev(1))
    cache.offer(rev(3))
    assert cache.applied_seq == 1 and not cache.complete and cache.known_head == 3
    assert cache.check(session(jti="j3")) is None  # not applied before seq 2
    cache.offer(rev(2))
    assert cache.applied_seq == 3 and cache.complete
    assert cache.check(session(jti="j3")) == "token"


def test_duplicates_are_ignored() -> None:
    cache = RevocationCache(clock=Clock())
    assert cache.offer(rev(1))
    assert not cache.offer(rev(1))
    assert cache.offer(rev(3))
    assert not cache.offer(rev(3))
    assert cache.size == 1 and cache.applied_seq == 1  # seq 3 waits for seq 2


def test_a_catch_up_fills_gaps_and_releases_held_events() -> None:
    cache = RevocationCache(clock=Clock())
    cache.offer(rev(1))
    cache.offer(rev(5))
    cache.load([rev(2), rev(3)], head=4)  # seq 4 was purged from the store
    assert cache.applied_seq == 5 and cache.complete
    assert {cache.check(session(jti=f"j{s}")) for s in (1, 2, 3, 5)} == {"token"}


def test_a_heartbeat_ahead_of_applied_means_incomplete() -> None:
    cache = RevocationCache(clock=Clock())
    cache.note_head(2)
    assert not cache.complete
    cache.load([], head=2)
    assert cache.complete


def test_user_revocation_rejects_tokens_issued_before_not_before_only() -> None:
    cache = RevocationCache(clock=Clock())
    cache.offer(rev(1, "user", "alice", not_before=1000.25))
    assert cache.check(session(user="alice", iat=1000.249999)) == "user"
    assert cache.check(session(user="alice", iat=1000.25)) is None
    assert cache.check(session(user="alice", iat=1000.5)) is None
    assert cache.check(session(user="bob", iat=1.0)) is None


def test_the_latest_not_before_wins_whatever_the_order() -> None:
    for events in ([1, 2], [2, 1]):
        cache = RevocationCache(clock=Clock())
        nbs = {1: 1000.5, 2: 1000.1}
        for seq in events:
            cache.offer(rev(seq, "user", "alice", not_before=nbs[seq]))
        cache.load([], head=2)
        assert cache.check(session(user="alice", iat=1000.4)) == "user"


def test_everyone_and_session_revocations() -> None:
    cache = RevocationCache(clock=Clock())
    cache.offer(rev(1, "session", "laptop"))
    cache.offer(rev(2, "all", not_before=1000.0))
    assert cache.check(session(sid="laptop", iat=2000.0)) == "session"
    assert cache.check(session(iat=999.9)) == "all"
    assert cache.check(session(iat=1000.0)) is None


def test_entries_expire_and_are_swept() -> None:
    clock = Clock()
    cache = RevocationCache(clock=clock, leeway=5.0)
    cache.offer(rev(1, "token", "j1", expires_at=1010.0))
    cache.offer(rev(2, "user", "alice", expires_at=1020.0))
    clock.now = 1014.9
    assert cache.check(session(jti="j1")) == "token"  # leeway keeps it
    assert cache.sweep() == 0
    clock.now = 1015.0
    assert cache.check(session(jti="j1")) is None
    assert cache.sweep() == 1 and cache.size == 1
    clock.now = 1025.0
    assert cache.sweep() == 1 and cache.size == 0


def test_a_later_expiry_extends_an_entry() -> None:
    clock = Clock()
    cache = RevocationCache(clock=clock)
    cache.offer(rev(1, "token", "j1", expires_at=1010.0))
    cache.offer(rev(2, "token", "j1", expires_at=1050.0))
    clock.now = 1020.0
    assert cache.sweep() == 0
    assert cache.check(session(jti="j1")) == "token"
