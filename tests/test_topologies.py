"""Redis Cluster and Sentinel: sharded pub/sub, replica fan-out, WAIT, failover.

The pipeline's behaviour tests (marked ``topologies`` in test_client.py and
test_worker.py) also run on both; this module covers what only they have.
The failover tests kill a master with SIGKILL during a burst of revocations
and restart it afterwards (it rejoins as a replica), so they run last.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from revocation import (
    NotReplicated,
    RevocationClient,
    Revoker,
    Settings,
    StoreUnavailable,
    TokenIssuer,
    TokenRevoked,
)
from revocation.redis_server import RedisServer
from revocation.store import Store
from revocation.topology import Node, Topology

from .conftest import WorkerThread, poll
from .topologies import Cluster, SentinelGroup, wait_for

pytestmark = pytest.mark.integration


def test_urls_name_the_topology(cluster: Cluster, sentinel_group: SentinelGroup) -> None:
    base = {"signing_key": "k" * 32, "event_key": "e" * 32}
    on_cluster = Topology(Settings(redis_url=cluster.url, **base))
    on_sentinel = Topology(Settings(redis_url=sentinel_group.url, **base))
    assert (on_cluster.kind, on_cluster.publish_command) == ("cluster", "SPUBLISH")
    assert (on_sentinel.kind, on_sentinel.publish_command) == ("sentinel", "PUBLISH")
    assert on_sentinel.primary().port == sentinel_group.current()[0].port
    assert [r.port for r in on_sentinel.replicas()] == [sentinel_group.current()[1].port]
    namespace = "revocation"
    slot_owner = cluster.master_of("{" + namespace + "}:seq")
    assert on_cluster.primary().port == slot_owner.port


def test_a_cluster_carries_events_on_the_shard_channel_only(
    cluster: Cluster,
    make_settings: Callable[..., Settings],
    issuer: TokenIssuer,
) -> None:
    settings = make_settings(redis_url=cluster.url)
    channel = f"{{{settings.namespace}}}:events"
    master = cluster.master_of(channel)
    plain = master.client().pubsub()
    plain.subscribe(channel)  # classic pub/sub: SPUBLISH never reaches it
    worker = WorkerThread(settings).start()
    try:
        with RevocationClient(settings) as client, Revoker(settings) as revoker:
            assert client.wait_synced(10), client.status()
            token = issuer.issue("alice")
            assert client.wait_applied(revoker.revoke(token=token).seq, 5)
            with pytest.raises(TokenRevoked):
                client.verify(token, check_database=True)
            assert client.status().fallbacks == 0
        kinds = []
        while (message := plain.get_message(timeout=0.05)) is not None:
            kinds.append(message["type"])
        assert kinds == ["subscribe"]  # the confirmation, and no message
    finally:
        plain.close()
        worker.stop()


@pytest.fixture
def standalone_replica(redis_server: RedisServer) -> Iterator[RedisServer]:
    host, port = "127.0.0.1", int(redis_server.url.rsplit(":", 1)[1].split("/")[0])
    with RedisServer(extra_args=["--replicaof", host, str(port)]) as replica:
        wait_for(
            lambda: replica.client().info("replication")["master_link_status"] == "up",
            10,
            "the replica's sync",
        )
        yield replica


@pytest.mark.parametrize("kind", ["standalone", "cluster", "sentinel"])
def test_clients_subscribe_through_a_replica_and_still_get_everything(
    kind: str, request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> None:
    if kind == "standalone":
        request.getfixturevalue("standalone_replica")
        url = request.getfixturevalue("redis_server").url
    else:
        url = request.getfixturevalue("cluster" if kind == "cluster" else "sentinel_group").url
    settings = make_settings(redis_url=url)
    on_replica = make_settings(redis_url=url, subscribe_from="replica")
    issuer = TokenIssuer(settings)
    early = issuer.issue("early")
    worker = WorkerThread(settings).start()
    try:
        with Revoker(settings) as revoker:
            revoker.revoke(token=early)  # before the clients start: they catch up from a replica
            with RevocationClient(on_replica) as far, RevocationClient(settings) as near:
                assert far.wait_synced(10) and near.wait_synced(10)
                assert str(far.status().node).endswith("(replica)")
                assert "(replica)" not in str(near.status().node)
                tokens = {
                    kind: issuer.issue(f"u-{kind}", session_handle=f"s-{kind}")
                    for kind in ("token", "session", "user")
                }
                last = revoker.revoke(token=tokens["token"])
                last = revoker.revoke(session_handle="s-session")
                last = revoker.revoke(user_id="u-user")
                for client in (far, near):
                    assert client.wait_applied(last.seq, 5)
                    for token in (early, *tokens.values()):
                        with pytest.raises(TokenRevoked):
                            client.verify(token, check_database=True)
                    assert client.status().fallbacks == 0
    finally:
        worker.stop()


def test_a_replica_out_of_sync_is_passed_over_for_the_master(
    make_settings: Callable[..., Settings],
    worker: WorkerThread,
    issuer: TokenIssuer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica still loading, or cut off from its master, holds an empty or old
    store and relays nothing: a client picking it subscribes to the master instead."""
    # A replica of a port nobody listens on: never connected, never synced.
    with RedisServer(extra_args=["--replicaof", "127.0.0.1", "1"]) as lost:
        replica = Node("127.0.0.1", int(lost.url.rsplit(":", 1)[1].split("/")[0]), replica=True)
        monkeypatch.setattr(Topology, "subscriber_node", lambda self, prefer: replica)
        settings = make_settings(subscribe_from="replica")
        with RevocationClient(settings) as client, Revoker(settings) as revoker:
            assert client.wait_synced(10), client.status()
            assert "(replica)" not in str(client.status().node)
            assert client._listener.counts["replicas_skipped"] >= 1
            token = issuer.issue("alice")
            assert client.wait_applied(revoker.revoke(token=token).seq, 5)
            with pytest.raises(TokenRevoked):
                client.verify(token, check_database=True)


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
def test_replica_acks_make_revoke_wait_for_a_replica(
    kind: str, request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> None:
    topology: Any = request.getfixturevalue("cluster" if kind == "cluster" else "sentinel_group")
    settings = make_settings(redis_url=topology.url, replica_acks=1)
    with Revoker(settings) as revoker:
        record = revoker.revoke(jti="acked")
        if kind == "cluster":
            (replica,) = topology.replicas_of(f"{{{settings.namespace}}}:seq")
        else:
            replica = topology.current()[1]
        # WAIT returned: the replica has it now, no polling needed.
        on_replica = redis.Redis.from_pool(
            Topology(settings).node_pool(Node("127.0.0.1", replica.port, replica=True), "admin")
        )
        try:
            raw = on_replica.zrangebyscore(f"{{{settings.namespace}}}:log", record.seq, record.seq)
        finally:
            on_replica.close()
        assert len(raw) == 1 and b'"acked"' in raw[0]

    # Asking for more replicas than exist: committed on the master, but revoke() says so.
    greedy = make_settings(redis_url=topology.url, replica_acks=2, replica_ack_timeout=0.1)
    with Revoker(greedy) as revoker, pytest.raises(NotReplicated) as raised:
        revoker.revoke(jti="not-enough-replicas")
    assert raised.value.acknowledged == 1
    assert [r.subject for r in raised.value.committed] == ["not-enough-replicas"]
    store = Store(Topology(greedy).client("admin"), greedy.namespace)
    try:
        assert store.counts()["token"] == 2
    finally:
        store.client.close()


class Burst:
    """Revokes issued tokens one by one from a thread; keeps those ``revoke()`` confirmed."""

    def __init__(self, settings: Settings, tokens: list[str]) -> None:
        self._revoker = Revoker(settings)
        self._tokens = tokens
        self.confirmed: list[str] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Burst:
        self._thread.start()
        return self

    def _run(self) -> None:
        for token in self._tokens:
            while not self._stop.is_set():
                try:
                    self._revoker.revoke(token=token)
                except StoreUnavailable:
                    self.failures += 1  # failover under way: try the same token again
                    self._stop.wait(0.02)
                    continue
                self.confirmed.append(token)
                break

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()
        self._revoker.close()


def _failover_during_a_burst(
    settings: Settings,
    kill_master: Callable[[], Any],
    restart: Callable[[Any], None],
    issuer: TokenIssuer,
) -> tuple[Burst, list[RevocationClient]]:
    near = RevocationClient(settings).start()
    far = RevocationClient(settings.model_copy(update={"subscribe_from": "replica"})).start()
    clients = [near, far]
    assert all(c.wait_synced(10) for c in clients), [c.status() for c in clients]
    tokens = [issuer.issue(f"user-{i}") for i in range(400)]
    burst = Burst(settings, tokens).start()
    try:
        assert poll(lambda: len(burst.confirmed) >= 50, 20), "the burst did not start"
        killed = kill_master()
        confirmed_at_kill = len(burst.confirmed)
        # The promoted replica has no replica of its own: with replica_acks=1 every
        # revoke() now fails (NotReplicated) until the old master is back as one.
        restart(killed)
        assert poll(lambda: len(burst.confirmed) >= confirmed_at_kill + 100, 30), burst.failures
    finally:
        burst.stop()
    return burst, clients


def _assert_nothing_confirmed_is_lost(
    settings: Settings, burst: Burst, clients: list[RevocationClient]
) -> None:
    store = Store(Topology(settings).client("admin"), settings.namespace)
    try:

        def converged() -> bool:
            head = store.head()
            return all(c.status().fresh and c.status().applied_seq == head for c in clients)

        assert poll(converged, 30), [c.status() for c in clients]
        stored = store.counts()["token"]
    finally:
        store.client.close()
    assert stored >= len(burst.confirmed)
    for client in clients:
        for token in burst.confirmed:
            with pytest.raises(TokenRevoked):
                client.verify(token, check_database=True)
        assert client.status().size >= len(burst.confirmed)


@pytest.mark.parametrize("kind", ["cluster", "sentinel"])
def test_a_failover_during_a_burst_loses_no_confirmed_revocation(
    kind: str, request: pytest.FixtureRequest, make_settings: Callable[..., Settings]
) -> None:
    group: Any = request.getfixturevalue("cluster" if kind == "cluster" else "sentinel_group")
    settings = make_settings(redis_url=group.url, replica_acks=1)
    slot_key = f"{{{settings.namespace}}}:seq"

    def master_port() -> int:
        return int(group.master_of(slot_key).port if kind == "cluster" else group.master_port())

    def kill_master() -> Any:
        return group.kill_master_of(slot_key)[0] if kind == "cluster" else group.kill_master()[0]

    def restart(server: Any) -> None:
        if kind == "cluster":
            group.restart(server)
        else:  # no other failover follows in this session
            group.restart(server, for_another_failover=False)

    first_master = master_port()
    worker = WorkerThread(settings).start()
    clients: list[RevocationClient] = []
    try:
        burst, clients = _failover_during_a_burst(
            settings, kill_master, restart, TokenIssuer(settings)
        )
        _assert_nothing_confirmed_is_lost(settings, burst, clients)
        assert burst.failures > 0  # the kill did interrupt commits
        assert master_port() != first_master
        # Both saw the new master's epoch and reloaded the log.
        assert all(c.status().rebases >= 1 for c in clients), [c.status() for c in clients]
    finally:
        for client in clients:
            client.close()
        worker.stop()


def test_a_client_follows_a_store_whose_history_forked(
    make_settings: Callable[..., Settings], issuer: TokenIssuer
) -> None:
    """A failover without replica acks can lose the newest commits; new ones then
    reuse their seqs. A client that applied a lost one must still apply the new one.

    Staged on one server: the lost commit is deleted, and a restart (on the AOF)
    gives the server a new replication id, as a promoted replica has."""
    with RedisServer(extra_args=["--appendonly", "yes"]) as server:
        settings = make_settings(redis_url=server.url)
        worker = WorkerThread(settings).start()
        raw = server.client()
        try:
            with RevocationClient(settings) as client, Revoker(settings) as revoker:
                assert client.wait_synced(10)
                kept = issuer.issue("kept")
                revoker.revoke(token=kept)
                lost = revoker.revoke(jti="lost-in-failover")
                assert client.wait_applied(lost.seq, 5)
                worker.stop()
                keys = Store(raw, settings.namespace).keys
                raw.zremrangebyscore(keys.log, lost.seq, lost.seq)
                raw.hdel(keys.records, f"token:{lost.subject}")
                raw.set(keys.seq, lost.seq - 1)
                raw.set(keys.relayed, lost.seq - 1)
                server.restart()
                worker = WorkerThread(settings).start()
                reused = issuer.issue("reused")
                again = revoker.revoke(token=reused)
                assert again.seq == lost.seq  # the same seq, another revocation
                assert poll(lambda: client.status().rebases >= 1, 10), client.status()
                assert client.wait_synced(10)
                with pytest.raises(TokenRevoked):
                    client.verify(reused, check_database=True)
                with pytest.raises(TokenRevoked):
                    client.verify(kept, check_database=True)
        finally:
            raw.close()
            worker.stop()
