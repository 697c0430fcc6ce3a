from __future__ import annotations

import pytest

from revocation import ConfigError, RevocationClient, Settings
from revocation.topology import Topology

KEY = "k" * 32


def test_every_field_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVOCATION_REDIS_URL", "redis://10.1.2.3:6380/2")
    monkeypatch.setenv("REVOCATION_NAMESPACE", "prod")
    monkeypatch.setenv("REVOCATION_SIGNING_KEY", KEY)
    monkeypatch.setenv("REVOCATION_VERIFICATION_KEYS", '{"old": "' + "o" * 32 + '"}')
    monkeypatch.setenv("REVOCATION_MAX_STALENESS", "3.5")
    monkeypatch.setenv("REVOCATION_STALE_POLICY", "allow")
    settings = Settings()
    assert settings.redis_url == "redis://10.1.2.3:6380/2"
    assert settings.namespace == "prod"
    assert settings.signing_key is not None and settings.signing_key.get_secret_value() == KEY
    assert settings.verification_keys["old"].get_secret_value() == "o" * 32
    assert settings.max_staleness == 3.5
    assert settings.stale_policy == "allow"


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings()
    assert (settings.namespace, settings.algorithm, settings.access_token_ttl) == (
        "revocation",
        "HS256",
        900,
    )
    assert (settings.heartbeat_interval, settings.max_staleness) == (0.5, 2.0)
    assert (settings.stale_policy, settings.fallback_timeout) == ("deny", 0.05)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"stale_policy": "maybe"}, "stale_policy"),
        ({"namespace": "has {braces}"}, "namespace"),
        ({"redis_url": "http://x"}, "redis_url"),
        ({"access_token_ttl": 0}, "access_token_ttl"),
        ({"heartbeat_interval": 1.0, "max_staleness": 0.5}, "max_staleness"),
        ({"signing_key": "short"}, "signing_key"),
        ({"event_key": "short"}, "event_key"),
        ({"algorithm": "none"}, "algorithm"),
        ({"no_such_field": 1}, "no_such_field"),
    ],
)
def test_bad_values_raise_config_error_naming_the_field(values: dict, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(**values)
    assert caught.value.field == field
    assert field in str(caught.value)
    assert caught.value.code == "config_error"


def test_secrets_never_appear_in_reprs_or_errors() -> None:
    secret = "super-secret-value-" + "x" * 20
    settings = Settings(signing_key=secret, event_key=secret)
    assert secret not in repr(settings) and secret not in str(settings)
    with pytest.raises(ConfigError) as caught:
        Settings(signing_key=secret, stale_policy=secret)
    assert secret not in str(caught.value)


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(Exception, match="frozen"):
        settings.namespace = "other"  # type: ignore[misc]


def test_a_client_refuses_to_start_without_an_event_key_unless_told() -> None:
    with pytest.raises(ConfigError) as caught:
        RevocationClient(Settings(signing_key=KEY))
    assert caught.value.field == "event_key"
    RevocationClient(Settings(signing_key=KEY, allow_unsigned_events=True)).close()


def test_settings_round_trip_through_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from revocation.settings import to_environment

    original = Settings(
        signing_key=KEY,
        event_key="e" * 32,
        verification_keys={"old": "o" * 32},
        stale_policy="allow",
        max_staleness=3.5,
        issuer="https://auth.example",
        allow_unsigned_events=True,
    )
    for name, value in to_environment(original).items():
        monkeypatch.setenv(name, value)
    assert Settings() == original


@pytest.mark.parametrize(
    ("url", "kind", "seeds", "service"),
    [
        ("redis://127.0.0.1:6379/0", "standalone", [], ""),
        ("unix:///run/redis.sock?db=1", "standalone", [], ""),
        (
            "redis+sentinel://s1:26379,s2/mymaster",
            "sentinel",
            [("s1", 26379), ("s2", 26379)],
            "mymaster",
        ),
        ("rediss+sentinel://u:p@s1:5000/m/2?ssl_cert_reqs=none", "sentinel", [("s1", 5000)], "m"),
        ("redis+cluster://n1:7000,n2:7001", "cluster", [("n1", 7000), ("n2", 7001)], ""),
        ("rediss+cluster://[::1]:7000", "cluster", [("::1", 7000)], ""),
    ],
)
def test_redis_urls_name_the_topology(
    url: str, kind: str, seeds: list[tuple[str, int]], service: str
) -> None:
    topology = Topology(Settings(redis_url=url))
    assert topology.kind == kind
    assert [(n.host, n.port) for n in topology.seeds] == seeds
    assert topology.service == service
    assert topology.sharded == (kind == "cluster")
    assert topology.tls == url.startswith("rediss")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://s1:26379", "name the Sentinel service"),
        ("redis+cluster://n1:7000/3", "a cluster has only db 0"),
        ("redis+cluster://n1:port", "bad host:port"),
        ("redis+cluster://", "no cluster node named"),
        ("http://localhost", "must start with redis://"),
    ],
)
def test_bad_topology_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        Topology(Settings(redis_url=url))
    assert raised.value.field == "redis_url"


def test_node_urls_keep_credentials_and_options_whatever_their_characters() -> None:
    from redis.connection import parse_url

    from revocation.topology import Node

    cluster = Topology(
        Settings(redis_url="rediss+cluster://app:p%7Bw%7D@n1:7000?ssl_cert_reqs=none")
    )
    url = cluster._node_url(Node("::1", 7001))
    assert parse_url(url)["password"] == "p{w}" and parse_url(url)["host"] == "::1"
    assert parse_url(url)["ssl_cert_reqs"] == "none"
    standalone = Topology(Settings(redis_url="redis://:pa{ss}@primary:6379/2"))
    replica = parse_url(standalone._node_url(Node("replica", 6380, replica=True)))
    assert (replica["password"], replica["host"], replica["port"], replica["db"]) == (
        "pa{ss}",
        "replica",
        6380,
        2,
    )
