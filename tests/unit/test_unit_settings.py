"""shared/settings.py: defaults, environment variables, the API key."""

from __future__ import annotations

import os
import socket

import pytest
from pydantic import ValidationError

from shared.errors import ConfigError
from shared.settings import (
    SEED_DEV_API_KEY,
    ApiSettings,
    BusSettings,
    ChildSettings,
    TrackerSettings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RELAY_* or LYNKER_* variable of the machine leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith(("RELAY_", "LYNKER_")):
            monkeypatch.delenv(name)


def test_bus_defaults() -> None:
    s = BusSettings()
    assert s.namespace == "relay"
    assert s.database_url.get_secret_value().startswith("sqlite")
    assert s.database_url.get_secret_value() == "sqlite:///./convbus.db"
    assert s.amqp_url.get_secret_value() == "amqp://guest:guest@127.0.0.1:5672/"
    assert s.api_key is None
    assert s.dev_mode is False


def test_api_defaults() -> None:
    s = ApiSettings()
    assert s.port == 8008
    assert s.host == "127.0.0.1"
    assert s.namespace == "relay"
    assert s.id_secret is None


def test_child_defaults() -> None:
    s = ChildSettings()
    assert s.api_base == "http://127.0.0.1:8008"
    assert s.callback_attempts == 3
    assert s.callback_backoff == 1.0


def test_tracker_defaults() -> None:
    assert TrackerSettings().namespace == "relay"


def test_secrets_are_not_shown_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_API_KEY", "super-secret-value")
    monkeypatch.setenv("RELAY_AMQP_URL", "amqp://u:hidden-pw@h:5672/")
    text = repr(BusSettings())
    assert "super-secret-value" not in text
    assert "hidden-pw" not in text


def test_namespace_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_NAMESPACE", "test_ns-1")
    assert BusSettings().namespace == "test_ns-1"


def test_amqp_and_database_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_AMQP_URL", "amqp://u:p@rabbit:5672/vh")
    monkeypatch.setenv("RELAY_DATABASE_URL", "postgresql://db/x")
    s = BusSettings()
    assert s.amqp_url.get_secret_value() == "amqp://u:p@rabbit:5672/vh"
    assert s.database_url.get_secret_value() == "postgresql://db/x"


def test_api_port_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_PORT", "9100")
    assert ApiSettings().port == 9100


def test_child_api_base_from_seed_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LYNKER_API_BASE", "http://api.example:8123")
    assert ChildSettings().api_base == "http://api.example:8123"


def test_child_api_base_from_relay_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_API_BASE", "http://other:1")
    assert ChildSettings().api_base == "http://other:1"


@pytest.mark.parametrize(
    "namespace", ["Bad Name", "UPPER", "-leading-dash", "a.b", "a#", "x" * 41, ""]
)
def test_invalid_namespace_is_rejected(monkeypatch: pytest.MonkeyPatch, namespace: str) -> None:
    monkeypatch.setenv("RELAY_NAMESPACE", namespace)
    with pytest.raises(ValidationError):
        BusSettings()


def test_namespace_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(ValidationError):
        BusSettings(namespace="relay\n")


def test_configured_api_key_wins_over_dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_API_KEY", "my-key")
    monkeypatch.setenv("RELAY_DEV_MODE", "true")
    assert BusSettings().effective_api_key() == "my-key"


def test_configured_api_key_without_dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_API_KEY", "my-key")
    assert ApiSettings().effective_api_key() == "my-key"


def test_dev_mode_gives_the_seed_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_DEV_MODE", "true")
    assert SEED_DEV_API_KEY == "lynker_relay_secret_2025"
    assert BusSettings().effective_api_key() == "lynker_relay_secret_2025"


def test_no_key_and_no_dev_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="RELAY_API_KEY") as info:
        BusSettings().effective_api_key()
    message = str(info.value)
    assert "export RELAY_API_KEY=" in message
    assert "RELAY_DEV_MODE=true" in message


def test_empty_api_key_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_API_KEY", "")
    s = BusSettings()
    assert s.api_key is None
    with pytest.raises(ConfigError):
        s.effective_api_key()


def test_empty_api_key_in_dev_mode_gives_the_seed_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_API_KEY", "")
    monkeypatch.setenv("RELAY_DEV_MODE", "1")
    assert BusSettings().effective_api_key() == SEED_DEV_API_KEY


def test_empty_id_secret_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_ID_SECRET", "")
    assert ApiSettings().id_secret is None


def test_worker_name_is_the_configured_child_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_CHILD_ID", "worker-7")
    assert ChildSettings().worker_name == "worker-7"


def test_worker_name_defaults_to_host_and_pid() -> None:
    name = ChildSettings().worker_name
    assert name == f"{socket.gethostname()[:40]}-{os.getpid()}"


@pytest.mark.parametrize(
    ("cls", "var", "value"),
    [
        (ApiSettings, "RELAY_PORT", "0"),
        (ApiSettings, "RELAY_PORT", "70000"),
        (ChildSettings, "RELAY_CALLBACK_ATTEMPTS", "0"),
        (BusSettings, "RELAY_HEARTBEAT", "0"),
    ],
)
def test_out_of_range_numbers_are_rejected(
    monkeypatch: pytest.MonkeyPatch, cls: type[BusSettings], var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        cls()


def test_the_seeds_published_key_is_refused_outside_dev_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.api.auth import KeyRing, key_hash
    from shared.errors import ConfigError
    from shared.settings import SEED_DEV_API_KEY, ApiSettings

    monkeypatch.setenv("RELAY_API_KEY", SEED_DEV_API_KEY)
    with pytest.raises(ConfigError, match="published key"):
        ApiSettings().effective_api_key()
    monkeypatch.setenv("RELAY_DEV_MODE", "true")
    assert ApiSettings().effective_api_key() == SEED_DEV_API_KEY
    monkeypatch.delenv("RELAY_DEV_MODE")
    monkeypatch.delenv("RELAY_API_KEY")
    spec = f'[{{"name": "m", "sha256": "{key_hash(SEED_DEV_API_KEY)}", "scopes": ["send"]}}]'
    monkeypatch.setenv("RELAY_KEYS", spec)
    with pytest.raises(ConfigError, match="published key"):
        KeyRing.from_settings(ApiSettings())


@pytest.mark.parametrize(
    ("env", "concurrency", "prefetch"),
    [
        ({}, 2000, 2000),
        ({"RELAY_CONCURRENCY": "50"}, 50, 50),
        # RELAY_PREFETCH alone keeps its old meaning: that many tasks at once.
        ({"RELAY_PREFETCH": "8"}, 8, 8),
        ({"RELAY_CONCURRENCY": "10", "RELAY_PREFETCH": "64"}, 10, 64),
        ({"RELAY_CONCURRENCY": "", "RELAY_PREFETCH": ""}, 2000, 2000),
        # The prefetch's range is wider: the concurrency it sets stops at its own most.
        ({"RELAY_PREFETCH": "60000"}, 50_000, 60_000),
    ],
)
def test_concurrency_and_prefetch_follow_each_other(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], concurrency: int, prefetch: int
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = ChildSettings()
    assert (s.concurrency, s.prefetch) == (concurrency, prefetch)


def test_a_prefetch_below_the_concurrency_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_CONCURRENCY", "100")
    monkeypatch.setenv("RELAY_PREFETCH", "64")
    with pytest.raises(ValidationError, match="RELAY_PREFETCH=64 would hold the child to 64"):
        ChildSettings()


def test_a_flag_overrides_the_concurrency_and_the_prefetch_follows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RELAY_CONCURRENCY", "100")
    s = ChildSettings(concurrency=7)
    assert (s.concurrency, s.prefetch) == (7, 7)


@pytest.mark.parametrize(
    ("var", "value"),
    [("RELAY_CONCURRENCY", "0"), ("RELAY_CONCURRENCY", "50001"), ("RELAY_PREFETCH", "65536")],
)
def test_concurrency_and_prefetch_out_of_range(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv("RELAY_CONCURRENCY", "10")
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError):
        ChildSettings()


def test_the_shared_limits_take_a_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ApiSettings().limits_url is None
    monkeypatch.setenv("RELAY_LIMITS_URL", "")
    assert ApiSettings().limits_url is None
    monkeypatch.setenv("RELAY_LIMITS_URL", "rediss://:pw@cache.example:6380/2")
    url = ApiSettings().limits_url
    assert url is not None and url.get_secret_value().endswith("cache.example:6380/2")
    monkeypatch.setenv("RELAY_LIMITS_URL", "memcached://cache:11211")
    with pytest.raises(ValidationError, match="a redis:// or rediss:// URL"):
        ApiSettings()
