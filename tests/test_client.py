"""The embedded client against a real redis-server and a real worker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
import redis

from revocation import (
    InvalidToken,
    Publisher,
    RevocationClient,
    RevocationUnavailable,
    Revoker,
    Settings,
    TokenIssuer,
    TokenRevoked,
)
from revocation.events import Codec, bus_key
from revocation.listener import Listener
from revocation.redis_server import RedisServer
from revocation.store import Keys, Store

from .conftest import EVENT_KEY, WorkerThread, poll, publish_raw

pytestmark = pytest.mark.integration


def total_commands(connection: redis.Redis) -> int:
    return int(connection.info("stats")["total_commands_processed"])


def signed(settings: Settings) -> Codec:
    return Codec(bus_key(EVENT_KEY, settings.namespace), require_signature=True)


@pytest.mark.topologies
def test_a_synced_client_reports_its_state(
    client: RevocationClient, revoker: Revoker, issuer: TokenIssuer
) -> None:
    status = client.status()
    assert status.fresh and status.connected and status.applied_seq == 0 == status.head_seq
    assert status.last_heartbeat_age is not None and status.last_heartbeat_age < 0.5
    revocation = revoker.revoke(jti="j1")
    assert client.wait_applied(revocation.seq, 5)
    status = client.status()
    assert status.applied_seq == status.head_seq == 1 and status.size == 1


@pytest.mark.topologies
def test_revoked_token_is_rejected_and_others_still_pass(
    client: RevocationClient, revoker: Revoker, issuer: TokenIssuer
) -> None:
    token, other = issuer.issue("alice"), issuer.issue("bob")
    assert client.verify(token, check_database=True).user_id == "alice"
    revocation = revoker.revoke(token=token, reason="test")
    assert client.wait_applied(revocation.seq, 5)
    with pytest.raises(TokenRevoked) as caught:
        client.verify(token, check_database=True)
    assert caught.value.code == "token_revoked" and caught.value.kind == "token"
    assert client.verify(other, check_database=True).user_id == "bob"
    assert client.verify(token).user_id == "alice"  # stateless verification is unchanged


@pytest.mark.parametrize("kind", ["session", "user", "all"])
@pytest.mark.topologies
def test_every_kind_of_revocation_reaches_the_client(
    client: RevocationClient, revoker: Revoker, issuer: TokenIssuer, kind: str
) -> None:
    token = issuer.issue("alice", session_handle="laptop")
    target = {"session": {"session_handle": "laptop"}, "user": {"user_id": "alice"}}
    revocation = revoker.revoke(**target.get(kind, {"everyone": True}))  # type: ignore[arg-type]
    assert client.wait_applied(revocation.seq, 5)
    with pytest.raises(TokenRevoked) as caught:
        client.verify(token, check_database=True)
    assert caught.value.kind == kind
    assert client.verify(issuer.issue("alice"), check_database=True)  # issued afterwards


def test_check_database_on_a_fresh_client_sends_no_command_to_redis(
    make_settings: Callable[..., Settings],
    redis_server: RedisServer,
    start_client: Callable[..., RevocationClient],
) -> None:
    # Slow heartbeats, driven by hand, and no presence thread (it reports from a
    # thread of its own, off the request path): nothing but the verifies runs meanwhile.
    settings = make_settings(heartbeat_interval=2.0, max_staleness=10.0, presence_interval=0)
    publisher = Publisher(settings)
    issuer = TokenIssuer(settings)
    revoked, good = issuer.issue("alice"), issuer.issue("bob")
    with Revoker(settings) as revoker:
        revoker.revoke(token=revoked)
    client = start_client(settings)
    assert poll(lambda: client.status().connected)
    publisher.relay_once(heartbeat=True)
    assert client.wait_synced(5)
    probe = redis_server.client()
    before = total_commands(probe)
    for _ in range(5000):
        client.verify(good, check_database=True)
        with pytest.raises(TokenRevoked):
            client.verify(revoked, check_database=True)
        client.verify(revoked)
    after = total_commands(probe)
    assert after - before == 1  # the first INFO itself
    assert client.status().fallbacks == 0
    publisher.close()


@pytest.mark.topologies
def test_start_up_subscribes_before_it_loads_the_snapshot(
    settings: Settings,
    worker: WorkerThread,
    issuer: TokenIssuer,
    revoker: Revoker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order: list[str] = []
    token = issuer.issue("alice")
    handle, catch_up = Listener._handle, Listener._catch_up

    def recording_handle(self: Listener, reply: object) -> None:
        if isinstance(reply, list) and reply and reply[0] in (b"subscribe", b"ssubscribe"):
            order.append("subscribed")
        handle(self, reply)

    def recording_catch_up(self: Listener) -> None:
        if not order or order[-1] != "snapshot":
            order.append("snapshot")
            # A revocation committed and relayed while the snapshot is read.
            revoker.revoke(token=token)
        catch_up(self)

    monkeypatch.setattr(Listener, "_handle", recording_handle)
    monkeypatch.setattr(Listener, "_catch_up", recording_catch_up)
    with RevocationClient(settings) as client:
        assert client.wait_synced(5)
        assert order[:2] == ["subscribed", "snapshot"]
        assert client.wait_applied(1, 5)
        with pytest.raises(TokenRevoked):
            client.verify(token, check_database=True)


@pytest.mark.topologies
def test_a_gap_in_seq_triggers_a_catch_up_from_the_store(
    settings: Settings, start_client: Callable[..., RevocationClient], revoker: Revoker
) -> None:
    publisher = Publisher(settings)
    client = start_client()
    assert poll(lambda: client.status().connected)
    publisher.relay_once(heartbeat=True)
    assert client.wait_synced(5)
    catch_ups = client.status().catch_ups
    records = [revoker.revoke(jti=f"j{i}") for i in range(3)]
    store = Store(revoker._store.client, settings.namespace)
    last = store.client.zrangebyscore(store.keys.log, 3, 3)
    publish_raw(settings, signed(settings).events(last))  # seq 3 only
    assert client.wait_applied(3, 5)
    status = client.status()
    assert status.catch_ups > catch_ups and status.size == 3
    assert [r.seq for r in records] == [1, 2, 3]
    publisher.close()


@pytest.mark.topologies
def test_duplicates_and_reordered_events_are_applied_once_in_order(
    client: RevocationClient, revoker: Revoker, settings: Settings
) -> None:
    first = revoker.revoke(jti="a")
    second = revoker.revoke(jti="b")
    assert client.wait_applied(second.seq, 5)
    keys = Keys.for_namespace(settings.namespace)
    raw = revoker._store.client
    codec = signed(settings)
    for seq in (second.seq, first.seq, second.seq, first.seq):
        publish_raw(settings, codec.events(raw.zrangebyscore(keys.log, seq, seq)))
    third = revoker.revoke(jti="c")
    assert client.wait_applied(third.seq, 5)
    status = client.status()
    assert status.size == 3 and status.applied_seq == third.seq


def test_a_killed_pubsub_connection_is_recovered_and_resynced(
    client: RevocationClient, revoker: Revoker, issuer: TokenIssuer, redis_server: RedisServer
) -> None:
    token = issuer.issue("alice")
    killed = redis_server.client().client_kill_filter(_type="pubsub")
    assert killed >= 1
    revocation = revoker.revoke(token=token)
    assert poll(lambda: client.status().reconnects >= 1)
    assert client.wait_applied(revocation.seq, 5)
    assert client.wait_synced(5)
    with pytest.raises(TokenRevoked):
        client.verify(token, check_database=True)


@pytest.fixture
def own_server() -> RedisServer:
    with RedisServer() as server:
        yield server  # type: ignore[misc]


def test_a_half_open_connection_is_detected_by_missing_heartbeats(
    own_server: RedisServer, make_settings: Callable[..., Settings], issuer: TokenIssuer
) -> None:
    settings = make_settings(redis_url=own_server.url, fallback_timeout=0.05)
    worker = WorkerThread(settings).start()
    token = TokenIssuer(settings).issue("alice")
    with RevocationClient(settings) as client:
        assert client.wait_synced(5)
        own_server.pause()
        try:
            assert poll(lambda: not client.status().fresh, timeout=5)
            with pytest.raises(RevocationUnavailable) as caught:
                client.verify(token, check_database=True)
            assert caught.value.code == "revocation_unavailable"
            # The listener gives up on the silent connection and reconnects.
            assert poll(lambda: client.status().reconnects >= 1, timeout=10)
        finally:
            own_server.resume()
        assert client.wait_synced(10)
        with Revoker(settings) as revoker:
            revocation = revoker.revoke(token=token)
        assert client.wait_applied(revocation.seq, 5)
        with pytest.raises(TokenRevoked):
            client.verify(token, check_database=True)
    worker.stop()


@pytest.mark.topologies
def test_a_stale_client_answers_from_the_store(
    start_client: Callable[..., RevocationClient], revoker: Revoker, issuer: TokenIssuer
) -> None:
    client = start_client()  # no worker: no heartbeat, never fresh
    revoked, good = issuer.issue("alice"), issuer.issue("bob")
    assert poll(lambda: client.status().catch_ups >= 1)
    revoker.revoke(token=revoked)  # after the catch-up, never relayed: only the store knows
    assert not client.status().fresh
    with pytest.raises(TokenRevoked):
        client.verify(revoked, check_database=True)
    assert client.verify(good, check_database=True).user_id == "bob"
    assert client.status().fallbacks == 2


def test_an_unstarted_or_closed_client_is_stale(
    settings: Settings, client: RevocationClient
) -> None:
    assert not RevocationClient(settings).status().fresh
    client.close()
    assert not client.status().fresh


@pytest.mark.parametrize("policy", ["deny", "allow"])
def test_when_the_store_cannot_answer_the_stale_policy_decides(
    own_server: RedisServer, make_settings: Callable[..., Settings], policy: str
) -> None:
    settings = make_settings(redis_url=own_server.url, stale_policy=policy, fallback_timeout=0.05)
    token = TokenIssuer(settings).issue("alice")
    worker = WorkerThread(settings).start()
    with RevocationClient(settings) as client:
        assert client.wait_synced(5)
        worker.stop()
        own_server.stop(keep_files=True)
        assert poll(lambda: not client.status().fresh, timeout=5)
        for verify in (
            lambda: client.verify(token, check_database=True),
            lambda: asyncio.run(client.averify(token, check_database=True)),
        ):
            if policy == "deny":
                with pytest.raises(RevocationUnavailable):
                    verify()
            else:
                assert verify().user_id == "alice"
        status = client.status()
        assert (status.stale_denied, status.stale_allowed) == (
            (2, 0) if policy == "deny" else (0, 2)
        )
        assert client.verify(token).user_id == "alice"  # stateless never needs the store


def test_malformed_and_forged_messages_are_dropped_counted_and_survived(
    client: RevocationClient, revoker: Revoker, issuer: TokenIssuer, settings: Settings
) -> None:
    keys = Keys.for_namespace(settings.namespace)
    raw = revoker._store.client
    victim = issuer.issue("victim")
    forger = Codec(bus_key("f" * 32, settings.namespace), require_signature=True)
    forged_all = (
        b'{"seq":1,"kind":"all","subject":"*","revoked_at":1,"expires_at":9e9,"not_before":9e9}'
    )
    frames = [
        b"garbage",
        b"\x00\xff" * 100,
        b'{"v":1,"type":"heartbeat","head":999999,"sent_at":1}.',  # unsigned
        forger.events([forged_all]),  # a forged "everyone" revocation
        forger.heartbeat(999999, 1.0),
        signed(settings)._frame(b'{"v":9,"type":"events"}'),
        b"x" * (5 * 1024 * 1024),
    ]
    for frame in frames:
        raw.publish(keys.channel, frame)
    revocation = revoker.revoke(jti="real")
    assert client.wait_applied(revocation.seq, 5)
    dropped = dict(client.status().dropped_messages)
    dropped.pop("stale_heartbeat", None)  # a real one overtaken by a catch-up: harmless
    assert dropped == {
        "malformed": 2,
        "unsigned": 1,
        "bad_signature": 2,
        "bad_version": 1,
        "too_large": 1,
    }
    assert client.verify(victim, check_database=True).user_id == "victim"
    assert client.status().head_seq == revocation.seq  # the forged head was not believed


@pytest.mark.topologies
def test_user_revocation_cuts_at_not_before_even_within_one_second(
    client: RevocationClient, revoker: Revoker, settings: Settings
) -> None:
    revocation = revoker.revoke(user_id="alice")
    assert revocation.not_before is not None and client.wait_applied(revocation.seq, 5)
    nb = revocation.not_before

    def token_at(t: float) -> str:
        return TokenIssuer(settings, clock=lambda: t).issue("alice")

    with pytest.raises(TokenRevoked):
        client.verify(token_at(nb - 0.000001), check_database=True)
    assert client.verify(token_at(nb), check_database=True)
    assert client.verify(token_at(nb + 0.000001), check_database=True)
    assert client.verify(TokenIssuer(settings).issue("alice"), check_database=True)


@pytest.mark.topologies
def test_cache_entries_and_store_records_expire_with_the_tokens(
    client: RevocationClient, revoker: Revoker, settings: Settings
) -> None:
    token = TokenIssuer(settings).issue("alice", ttl=1)
    revocation = revoker.revoke(token=token)
    assert client.wait_applied(revocation.seq, 5) and client.status().size == 1
    store = Store(revoker._store.client, settings.namespace)
    # The worker purges about once a second; both must be gone well within 30 s.
    assert poll(lambda: store.counts()["token"] == 0 and store.counts()["log"] == 0, timeout=30)
    assert poll(lambda: client.status().size == 0, timeout=30)


@pytest.mark.topologies
def test_averify_and_arevoke_work_in_asyncio(
    client: RevocationClient, settings: Settings, issuer: TokenIssuer
) -> None:
    token = issuer.issue("alice")

    async def scenario() -> None:
        assert (await client.averify(token, check_database=True)).user_id == "alice"
        with Revoker(settings) as revoker:
            revocation = await revoker.arevoke(token=token)
        assert await asyncio.to_thread(client.wait_applied, revocation.seq, 5)
        with pytest.raises(TokenRevoked):
            await client.averify(token, check_database=True)

    asyncio.run(scenario())


@pytest.mark.topologies
def test_averify_on_a_stale_client_asks_the_store_without_blocking(
    start_client: Callable[..., RevocationClient], revoker: Revoker, issuer: TokenIssuer
) -> None:
    client = start_client()  # no worker: it never becomes fresh
    token = issuer.issue("alice")
    assert poll(lambda: client.status().catch_ups >= 1)
    # Committed after the client's catch-up, never relayed: only the store knows.
    revoker.revoke(token=token)

    async def scenario() -> None:
        with pytest.raises(TokenRevoked):
            await client.averify(token, check_database=True)
        assert await client.averify(issuer.issue("bob"), check_database=True)

    asyncio.run(scenario())
    assert client.status().fallbacks == 2


def test_invalid_tokens_fail_before_any_revocation_check(client: RevocationClient) -> None:
    with pytest.raises(InvalidToken):
        client.verify("not-a-token", check_database=True)


def test_a_busy_process_applies_revocations_on_the_request_path(
    client: RevocationClient,
    revoker: Revoker,
    issuer: TokenIssuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listener thread that never gets to run (as under a busy GIL) is not needed:
    check_database=True drains what has arrived on its socket."""
    import select as real_select

    from revocation import listener as listener_module

    entered, release = threading.Event(), threading.Event()

    class StalledSelect:
        def select(self, *args: object) -> object:
            entered.set()
            release.wait(30)
            return real_select.select(*args)

    token = issuer.issue("alice")
    assert client.verify(token, check_database=True)
    monkeypatch.setattr(listener_module, "select", StalledSelect())
    try:
        assert entered.wait(5)  # the listener thread is now stuck
        revocation = revoker.revoke(token=token)

        def rejected() -> bool:
            try:
                client.verify(token, check_database=True)
            except TokenRevoked:
                return True
            return False

        assert poll(rejected, timeout=5)
        assert client.status().applied_seq == revocation.seq
        assert not release.is_set()  # the listener thread did not do it
    finally:
        release.set()
