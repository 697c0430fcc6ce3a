"""Least privilege (Redis ACL users from deploy/acl.conf.example) and TLS, on real servers."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from revocation import RevocationClient, Revoker, Settings, TokenIssuer, TokenRevoked
from revocation.redis_server import RedisServer, free_port
from revocation.store import Keys

from .conftest import WorkerThread, poll

pytestmark = pytest.mark.integration
ACL_FILE = Path(__file__).resolve().parents[1] / "deploy" / "acl.conf.example"


def acl_users(namespace: str) -> dict[str, list[str]]:
    """The documented ACL rules, for ``namespace`` instead of ``revocation``."""
    users = {}
    for line in ACL_FILE.read_text().splitlines():
        if line.startswith("user "):
            rules = line.replace("{revocation}", "{" + namespace + "}").split()[1:]
            users[rules[0]] = rules[1:]
    return users


@pytest.fixture
def acl_server(make_settings: Callable[..., Settings]) -> Iterator[tuple[RedisServer, Settings]]:
    base = make_settings()
    with RedisServer() as server:
        admin = server.client()
        for name, rules in acl_users(base.namespace).items():
            admin.execute_command("ACL", "SETUSER", name, *rules)
        admin.close()
        yield server, base


def as_user(settings: Settings, server: RedisServer, role: str) -> Settings:
    password = f"CHANGE-ME-{role}"
    url = f"redis://revocation-{role}:{password}@127.0.0.1:{server.port}/0"
    return settings.model_copy(update={"redis_url": url})


def test_each_role_can_do_its_part_and_no_more(
    acl_server: tuple[RedisServer, Settings],
) -> None:
    server, base = acl_server
    app, worker_settings, admin = (as_user(base, server, r) for r in ("app", "worker", "admin"))
    worker = WorkerThread(worker_settings).start()
    try:
        token, other = TokenIssuer(base).issue("alice"), TokenIssuer(base).issue("bob")
        with RevocationClient(app) as client:
            assert client.wait_synced(10)
            with Revoker(admin) as revoker:
                # wait=: the app role reports its presence, the admin role reads it.
                revocation = revoker.revoke(token=token, wait=5)
                assert [m.id for m in revoker.live_clients()] == [client.id]
            assert client.status().applied_seq >= revocation.seq
            with pytest.raises(TokenRevoked):
                client.verify(token, check_database=True)
            assert client.verify(other, check_database=True).user_id == "bob"
        # Stale (no client started: never fresh), the app role's point check still works.
        with RevocationClient(app) as stale:
            assert poll(lambda: stale.status().connected)
        assert worker.publisher.stats.errors == 0
    finally:
        worker.stop()

    keys = Keys.for_namespace(base.namespace)
    app_redis = redis.Redis.from_url(app.redis_url)
    forbidden = {
        "publish a forged event": lambda: app_redis.publish(keys.channel, b"forged"),
        "write the head": lambda: app_redis.set(keys.seq, 999),
        "add to the log": lambda: app_redis.zadd(keys.log, {b"x": 1000}),
        "run a script": lambda: app_redis.eval("return 1", 0),
        "read another key": lambda: app_redis.get("elsewhere"),
        "delete the records": lambda: app_redis.delete(keys.records),
        "write the records": lambda: app_redis.hset(keys.records, "token:x", "{}"),
        "write a worker's presence": lambda: app_redis.hset(keys.workers, "w", "{}"),
    }
    for what, attempt in forbidden.items():
        try:
            attempt()
        except redis.exceptions.NoPermissionError:
            continue
        pytest.fail(f"the app role could {what}")
    app_redis.close()


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, made for this test."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "revocation test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_the_pipeline_runs_over_tls(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    ca, certificate, key = _certificates(tmp_path)
    tls_port = free_port()
    tls_args = [
        "--tls-port", str(tls_port), "--tls-cert-file", str(certificate),
        "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no",
    ]  # fmt: skip
    with RedisServer(extra_args=tls_args) as server:
        settings = make_settings(redis_url=f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}")
        worker = WorkerThread(settings).start()
        try:
            token = TokenIssuer(settings).issue("alice")
            with RevocationClient(settings) as client, Revoker(settings) as revoker:
                assert client.wait_synced(10)
                revocation = revoker.revoke(token=token)
                assert client.wait_applied(revocation.seq, 5)
                with pytest.raises(TokenRevoked):
                    client.verify(token, check_database=True)
            # Every connection the pipeline made was a TLS one.
            clients = server.client().client_list()
            assert not [
                c
                for c in clients
                if int(c["laddr"].rsplit(":", 1)[1]) == tls_port and c.get("flags") == "bogus"
            ]
            info = server.client().info("stats")
            assert int(info.get("total_connections_received", 0)) >= 3
        finally:
            worker.stop()
        # A client that does not trust the CA is refused.
        untrusted = make_settings(redis_url=f"rediss://127.0.0.1:{tls_port}/0")
        with pytest.raises(Exception, match=r"(?i)certificate|ssl"):
            Revoker(untrusted).revoke(jti="x")
