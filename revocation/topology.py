"""Where the store lives: one server, a Sentinel-managed group, or a Redis Cluster.

``redis_url`` names the topology:

===========================================  ======================================
``redis://host:6379/0``, ``rediss://``,      one server (its replicas, if any, are
``unix:///path``                             found with ``ROLE``)
``redis+sentinel://s1:26379,s2:26379/name``  the master Sentinel names ``name``, and
(``rediss+sentinel://`` for TLS)             its replicas; ``/name/db`` picks a db
``redis+cluster://n1:7000,n2:7000``          the cluster node that owns the
(``rediss+cluster://`` for TLS)              deployment's hash slot, and its replicas
===========================================  ======================================

Every key and the channel of a deployment carry the hash tag ``{namespace}``,
so on a cluster they live in one slot, on one shard. Nothing here needs a
cluster-aware client: every connection goes to that shard's master (or one
of its replicas), found from the seed nodes with ``CLUSTER SLOTS``, and Lua
scripts, pipelines, ``BLPOP`` and ``WAIT`` work as on one server. Events go
over sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``): only that shard carries
them, where plain ``PUBLISH`` would be broadcast to every node of the cluster.

Failover: connections of a :func:`following pool <Topology.client>` find the
master again whenever they connect, and turn the replies of a demoted or
moved master (``READONLY``, ``MOVED``, ``CLUSTERDOWN``, ``UNBLOCKED``) into a
:class:`redis.ConnectionError`, so the caller's retry (or next call) reaches
the new master.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import Connection, ConnectionPool, SSLConnection, parse_url
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.retry import Retry
from redis.sentinel import Sentinel

from .connections import Purpose, options
from .errors import ConfigError
from .settings import Settings

Kind = Literal["standalone", "sentinel", "cluster"]
SENTINEL_PORT = 26379
_MOVED = (AskError, ClusterDownError, TryAgainError)
"""redis-py's classes for MOVED, ASK, CLUSTERDOWN, MASTERDOWN and TRYAGAIN replies."""
_UNBLOCKED = "UNBLOCKED"
"""A demoted master ends blocking commands (BLPOP) with this error."""
_RESOLVE_EVERY = 1.0
"""Seconds a resolved address is reused before it is asked for again."""


@dataclass(frozen=True, slots=True)
class Node:
    """One Redis server of the topology."""

    host: str
    port: int
    replica: bool = False

    def __str__(self) -> str:
        return f"{self.host}:{self.port}{' (replica)' if self.replica else ''}"


class NoNodeFound(redis.ConnectionError):
    """No server of the topology could be reached, or none holds the role asked for."""


class Topology:
    """The servers named by ``settings.redis_url``; resolves them and connects to them.

    Thread-safe. One per process component (client, worker, revoker).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        url = settings.redis_url
        scheme = url.partition("://")[0]
        self.kind: Kind = (
            "sentinel"
            if scheme.endswith("+sentinel")
            else "cluster"
            if scheme.endswith("+cluster")
            else "standalone"
        )
        self.tls = scheme.startswith("rediss")
        self.sharded = self.kind == "cluster"
        """Events go over sharded pub/sub (SPUBLISH/SSUBSCRIBE)."""
        self.subscribe_command = "SSUBSCRIBE" if self.sharded else "SUBSCRIBE"
        self.publish_command = "SPUBLISH" if self.sharded else "PUBLISH"
        self._lock = threading.Lock()
        self._resolved: tuple[float, Node, list[Node]] | None = None
        self._sentinel: Sentinel | None = None
        if self.kind == "standalone":
            self._url = url
            self.seeds: list[Node] = []
            self.service = ""
            return
        parts = urlsplit(url)
        userinfo, _, hosts = parts.netloc.rpartition("@")
        port = SENTINEL_PORT if self.kind == "sentinel" else 6379
        self.seeds = [_node(item, port) for item in hosts.split(",") if item]
        if not self.seeds:
            raise ConfigError(
                f"invalid settings: redis_url: no {self.kind} node named", field="redis_url"
            )
        path = [p for p in parts.path.split("/") if p]
        query = parse_qs(parts.query)
        if self.kind == "sentinel":
            if not path:
                raise ConfigError(
                    "invalid settings: redis_url: name the Sentinel service: "
                    "redis+sentinel://host:26379/<service>",
                    field="redis_url",
                )
            self.service = unquote(path[0])
            db = path[1] if len(path) > 1 else "0"
        else:
            self.service = ""
            db = "0"
            if path and path[0] != "0":
                raise ConfigError(
                    "invalid settings: redis_url: a cluster has only db 0", field="redis_url"
                )
        # Data-node connections take the URL's credentials and TLS options.
        passthrough = {k: v for k, v in query.items() if not k.startswith("sentinel_")}
        q = "&".join(f"{quote(k)}={quote(v[-1])}" for k, v in passthrough.items())
        self._around = (
            f"{'rediss' if self.tls else 'redis'}://{userinfo + '@' if userinfo else ''}",
            f"/{db}" + (f"?{q}" if q else ""),
        )
        self._sentinel_auth = {
            k.removeprefix("sentinel_"): v[-1]
            for k, v in query.items()
            if k.startswith("sentinel_")
        }
        self.slot = key_slot(f"{{{settings.namespace}}}:seq".encode())

    # -- resolution ----------------------------------------------------------

    def primary(self) -> Node:
        """The master that holds the deployment's keys (cached for about a second)."""
        return self._resolve()[0]

    def replicas(self) -> list[Node]:
        """Its replicas, as the topology reports them (may be empty)."""
        return self._resolve()[1]

    def invalidate(self) -> None:
        """Forget the resolved addresses (after a connection error, a MOVED...)."""
        with self._lock:
            self._resolved = None

    def _resolve(self) -> tuple[Node, list[Node]]:
        with self._lock:
            resolved = self._resolved
            if resolved is not None and time.monotonic() - resolved[0] < _RESOLVE_EVERY:
                return resolved[1], resolved[2]
        if self.kind == "standalone":
            primary, replicas = self._resolve_standalone()
        elif self.kind == "sentinel":
            primary, replicas = self._resolve_sentinel()
        else:
            primary, replicas = self._resolve_cluster()
        with self._lock:
            self._resolved = (time.monotonic(), primary, replicas)
        return primary, replicas

    def _standalone_primary(self) -> tuple[Node, bool]:
        """The server the URL names, and whether it is a unix socket."""
        kwargs = parse_url(self._url)
        if "path" in kwargs:
            return Node(str(kwargs["path"]), 0), True
        return Node(str(kwargs.get("host", "localhost")), int(kwargs.get("port", 6379))), False

    def _resolve_standalone(self) -> tuple[Node, list[Node]]:
        primary, unix = self._standalone_primary()
        if unix:  # no replicas to find
            return primary, []
        probe = redis.Redis.from_url(self._url, **self._probe_options())
        try:
            role = probe.execute_command("ROLE")
        except ResponseError:  # ROLE not allowed for this user: subscribe to the primary
            return primary, []
        finally:
            probe.close()
        replicas = (
            [Node(_text(r[0]), int(r[1]), replica=True) for r in role[2]]
            if _text(role[0]) == "master"
            else []
        )
        return primary, replicas

    def _resolve_sentinel(self) -> tuple[Node, list[Node]]:
        with self._lock:
            if self._sentinel is None:
                self._sentinel = Sentinel(
                    [(n.host, n.port) for n in self.seeds],
                    sentinel_kwargs={**self._probe_options(), **self._sentinel_auth},
                )
            sentinel = self._sentinel
        try:
            host, port = sentinel.discover_master(self.service)
            replicas = sentinel.discover_slaves(self.service)
        except redis.RedisError as exc:
            raise NoNodeFound(f"sentinels: no master for {self.service!r}: {exc}") from exc
        finally:
            # Asked at most once a second: no sentinel connection is kept open between.
            for client in sentinel.sentinels:
                client.connection_pool.disconnect()
        return Node(str(host), int(port)), [Node(str(h), int(p), replica=True) for h, p in replicas]

    def _resolve_cluster(self) -> tuple[Node, list[Node]]:
        # Ask the last known nodes first, then the seeds.
        resolved = self._resolved
        candidates = ([resolved[1], *resolved[2]] if resolved else []) + self.seeds
        errors = []
        for node in dict.fromkeys(Node(n.host, n.port) for n in candidates):
            probe = self._redis_for(node, "admin", **self._probe_options())
            try:
                slots = probe.execute_command("CLUSTER SLOTS")
            except redis.RedisError as exc:
                errors.append(f"{node}: {exc}")
                continue
            finally:
                probe.close()
            for entry in slots:
                if int(entry[0]) <= self.slot <= int(entry[1]):
                    master, *replicas = (
                        Node(_text(n[0]) or node.host, int(n[1])) for n in entry[2:]
                    )
                    return master, [Node(r.host, r.port, replica=True) for r in replicas]
            errors.append(f"{node}: slot {self.slot} not served")
        raise NoNodeFound("cluster: no node answered for the slot: " + "; ".join(errors))

    def _probe_options(self) -> dict[str, Any]:
        timeout = min(1.0, max(self._settings.fallback_timeout, 0.2))
        return {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
        }

    # -- connections ---------------------------------------------------------

    def client(self, purpose: Purpose, **overrides: Any) -> redis.Redis:
        """A client for ``purpose`` whose connections always reach the current master."""
        kwargs = {**options(self._settings, purpose), **overrides}
        if self.kind == "standalone":
            return redis.Redis.from_url(self._url, **kwargs)
        base = parse_url(self._node_url(Node("localhost", 0)))
        base.update(kwargs)
        base.pop("host", None)
        base.pop("port", None)
        tls = base.pop("connection_class", None) is SSLConnection or self.tls
        pool = ConnectionPool(
            connection_class=_FollowingSSLConnection if tls else _FollowingConnection,
            topology=self,
            **base,
        )
        return redis.Redis.from_pool(pool)

    def node_pool(self, node: Node, purpose: Purpose, **overrides: Any) -> ConnectionPool:
        """A pool of connections to ``node`` only (READONLY on a cluster replica)."""
        kwargs = {**options(self._settings, purpose), **overrides}
        if self.kind == "standalone" and not node.replica:
            return ConnectionPool.from_url(self._url, **kwargs)
        base = parse_url(self._node_url(node))
        base.update(kwargs)
        tls = base.pop("connection_class", None) is SSLConnection or self.tls
        if self.kind == "cluster" and node.replica:
            base["connection_class"] = _ReadOnlySSLConnection if tls else _ReadOnlyConnection
        elif tls:
            base["connection_class"] = SSLConnection
        return ConnectionPool(**base)

    def _node_url(self, node: Node) -> str:
        """The URL of ``node`` with the credentials and options of ``redis_url``."""
        if self.kind == "standalone":
            parts = urlsplit(self._url)
            userinfo = parts.netloc.rpartition("@")[0]
            before = f"{parts.scheme}://{userinfo + '@' if userinfo else ''}"
            after = parts.path + (f"?{parts.query}" if parts.query else "")
        else:
            before, after = self._around
        host = f"[{node.host}]" if ":" in node.host else node.host
        return f"{before}{host}:{node.port}{after}"

    def _redis_for(self, node: Node, purpose: Purpose, **overrides: Any) -> redis.Redis:
        return redis.Redis.from_pool(self.node_pool(node, purpose, **overrides))

    def subscriber_node(self, prefer: Literal["primary", "replica"]) -> Node:
        """Where a client subscribes: the master, or a random replica when asked for one."""
        if self.kind == "standalone" and prefer == "primary":
            return self._standalone_primary()[0]  # the URL's server: nothing to ask
        primary, replicas = self._resolve()
        if prefer == "replica" and replicas:
            return random.choice(replicas)
        return primary


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _node(item: str, default_port: int) -> Node:
    host, _, port = item.rpartition(":") if ":" in item else (item, "", str(default_port))
    try:
        return Node(host.strip("[]"), int(port))
    except ValueError:
        raise ConfigError(
            f"invalid settings: redis_url: bad host:port {item!r}", field="redis_url"
        ) from None


class _FollowingConnection(Connection):
    """A connection to whatever node is the master now; see the module docstring."""

    def __init__(self, *, topology: Topology, **kwargs: Any) -> None:
        self._topology = topology
        super().__init__(**kwargs)

    def connect(self) -> None:
        if self._sock:
            return
        node = self._topology.primary()
        self.host, self.port = node.host, node.port
        try:
            super().connect()
        except redis.ConnectionError:
            self._topology.invalidate()
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)
        except ReadOnlyError:
            self._moved()
            raise redis.ConnectionError("the master was demoted to a replica") from None
        except ResponseError as exc:
            if isinstance(exc, _MOVED) or str(exc).startswith(_UNBLOCKED):
                self._moved()
                raise redis.ConnectionError(f"the master moved: {exc}") from None
            raise
        except redis.ConnectionError:
            self._topology.invalidate()
            raise

    def _moved(self) -> None:
        self.disconnect()
        self._topology.invalidate()


class _FollowingSSLConnection(_FollowingConnection, SSLConnection):
    pass


class _ReadOnlyConnection(Connection):
    """A cluster replica's connection: READONLY, so it serves reads of its slots."""

    def on_connect_check_health(self, check_health: bool = True) -> None:
        super().on_connect_check_health(check_health=check_health)
        self.send_command("READONLY")
        self.read_response()


class _ReadOnlySSLConnection(_ReadOnlyConnection, SSLConnection):
    pass


def sync_client(settings: Settings, purpose: Purpose, **overrides: Any) -> redis.Redis:
    """A client for ``purpose`` that reaches the current master of ``settings.redis_url``."""
    return Topology(settings).client(purpose, **overrides)
