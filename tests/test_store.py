"""The store's scripts: a fast unit run on fakeredis, the rest on a real redis-server."""

from __future__ import annotations

import fakeredis
import pytest

from revocation import Revoker, Settings, TokenIssuer
from revocation.events import record_body
from revocation.redis_server import RedisServer
from revocation.store import Keys, Store, commit_args
from revocation.tokens import TokenVerifier
from revocation.topology import sync_client


def commit(store: Store, kind: str, subject: str, *, at: float, ttl: float = 900.0) -> object:
    nb = at if kind in ("user", "all") else None
    body = record_body(
        kind=kind, subject=subject, revoked_at=at, expires_at=at + ttl, not_before=nb, reason=None
    )  # type: ignore[arg-type]
    return store.commit(
        commit_args(kind=kind, subject=subject, body=body, expires_at=at + ttl, not_before=nb)  # type: ignore[arg-type]
    )


def test_scripts_run_on_fakeredis_for_fast_unit_checks() -> None:
    store = Store(fakeredis.FakeRedis(), "unit")
    first = commit(store, "token", "j1", at=1000.0)
    second = commit(store, "session", "s1", at=1000.5)
    assert [first.seq, second.seq] == [1, 2]  # type: ignore[attr-defined]
    head, records = store.since(1)
    assert head == 2 and [r.subject for r in records] == ["s1"]


def test_every_key_shares_one_hash_slot() -> None:
    keys = Keys.for_namespace("prod")
    names = [getattr(keys, f) for f in keys.__slots__]  # type: ignore[attr-defined]
    assert all(name.startswith("{prod}:") for name in names)


@pytest.fixture
def store(settings: Settings) -> Store:
    return Store(sync_client(settings, "admin"), settings.namespace)


@pytest.mark.integration
def test_commits_get_strictly_increasing_seqs_and_exact_server_timestamps(
    store: Store, revoker: Revoker
) -> None:
    before = store.time()
    records = [revoker.revoke(jti=f"j{i}") for i in range(5)]
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert all(before <= r.revoked_at <= store.time() for r in records)
    # The stored JSON keeps microseconds that Redis' Lua would have rounded away.
    head, stored = store.since(0)
    assert head == 5 and stored == records
    assert all(round(r.revoked_at, 6) == r.revoked_at for r in stored)


@pytest.mark.integration
def test_since_pages_through_long_logs(store: Store, revoker: Revoker) -> None:
    for i in range(25):
        revoker.revoke(jti=f"j{i}")
    head, records = store.since(3, page=4)
    assert head == 25 and [r.seq for r in records] == list(range(4, 26))


@pytest.mark.integration
def test_the_point_check_keeps_the_widest_user_revocation_even_if_a_clock_steps_back(
    store: Store, settings: Settings
) -> None:
    commit(store, "user", "alice", at=2000.0)
    commit(store, "user", "alice", at=1990.0)  # a later commit dated earlier
    verifier = TokenVerifier(settings, clock=lambda: 1995.0)
    token = TokenIssuer(settings, clock=lambda: 1995.0).issue("alice", ttl=100)
    session = verifier.verify(token)
    found = store.check(session, now=1995.0, leeway=0)
    assert found is not None and found.not_before == 2000.0


@pytest.mark.integration
def test_purge_removes_exactly_the_expired_records(store: Store, settings: Settings) -> None:
    commit(store, "token", "short", at=1000.0, ttl=10)
    commit(store, "user", "alice", at=1000.0, ttl=100)
    assert store.purge(now=1005.0) == (0, 0)
    assert store.purge(now=1010.0) == (1, 1)
    _, left = store.since(0)
    assert [r.subject for r in left] == ["alice"]
    assert store.counts()["token"] == 0 and store.counts()["user"] == 1
    assert store.purge(now=1100.0) == (1, 1)
    assert store.since(0) == (2, [])
    raw = store.client
    keys = store.keys
    assert raw.zcard(keys.log) == raw.zcard(keys.log_exp) == raw.hlen(keys.records) == 0
    assert raw.hlen(keys.rank) == raw.zcard(keys.rec_exp) == 0


@pytest.mark.integration
def test_store_does_not_grow_without_bound(store: Store) -> None:
    for round_ in range(5):
        for i in range(200):
            commit(store, "token", f"r{round_}-{i}", at=1000.0 + round_ * 10, ttl=5)
        store.purge(now=1000.0 + round_ * 10 + 5)
    counts = store.counts()
    assert counts["log"] == 0 and counts["token"] == 0 and counts["head"] == 1000


@pytest.mark.integration
def test_a_real_server_is_what_the_integration_tests_use(redis_server: RedisServer) -> None:
    info = redis_server.client().info("server")
    assert int(str(info["redis_version"]).split(".")[0]) >= 6
    assert info["process_id"] == redis_server.pid


@pytest.mark.integration
def test_revoke_takes_exactly_one_non_empty_target(revoker: Revoker) -> None:
    for targets in ({}, {"jti": "a", "user_id": "b"}, {"everyone": True, "jti": "a"}):
        with pytest.raises(ValueError, match="exactly one target"):
            revoker.revoke(**targets)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        revoker.revoke(user_id="")


@pytest.mark.integration
def test_revoking_a_token_verifies_its_signature_but_not_its_expiry(
    revoker: Revoker, settings: Settings
) -> None:
    from revocation import InvalidToken

    with pytest.raises(InvalidToken):
        revoker.revoke(token="forged.token.value")
    expired = TokenIssuer(settings, clock=lambda: 1000.0).issue("alice", ttl=1)
    revocation = revoker.revoke(token=expired)
    assert revocation.kind == "token" and revocation.expires_at == 1001.0


@pytest.mark.integration
def test_a_revoke_on_an_unreachable_store_raises_and_commits_nothing(
    make_settings: object,
) -> None:
    from revocation import StoreUnavailable
    from revocation.redis_server import free_port

    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # type: ignore[operator]
    with Revoker(settings) as revoker, pytest.raises(StoreUnavailable):
        revoker.revoke(jti="x")


@pytest.mark.integration
def test_revoke_many_commits_every_target_in_order(revoker: Revoker, settings: Settings) -> None:
    token = TokenIssuer(settings).issue("carol")
    records = revoker.revoke_many(
        [{"jti": "a"}, {"session_handle": "s"}, {"user_id": "bob"}, {"token": token}],
        reason="incident",
    )
    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert [r.kind for r in records] == ["token", "session", "user", "token"]
    assert len({r.revoked_at for r in records}) == 1 and records[0].reason == "incident"
    store = Store(revoker._store.client, settings.namespace)
    assert store.since(0) == (4, records)
    with pytest.raises(ValueError, match="exactly one target"):
        revoker.revoke_many([{"jti": "ok"}, {"jti": "x", "user_id": "y"}])
    assert store.head() == 4  # nothing of a bad batch was committed
    assert revoker.revoke_many([]) == []
