"""Settings: the per-client limits and the admin token length, as read from ``BRIDGE_*``."""

from __future__ import annotations

import os

import pytest
import uvicorn
from pydantic import ValidationError

from app.cli import main
from app.server import BridgeServer
from app.settings import Settings, settings_problems

LIMITS = {
    "body_read_timeout_s": 10.0,
    "header_read_timeout_s": 10.0,
    "keepalive_timeout_s": 5,
    "max_header_bytes": 65_536,
    "max_connections": 1000,
}


@pytest.fixture(autouse=True)
def no_bridge_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in os.environ:
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)


def test_the_limits_have_their_defaults() -> None:
    settings = Settings()

    assert {name: getattr(settings, name) for name in LIMITS} == LIMITS


def test_the_limits_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_BODY_READ_TIMEOUT_S", "1.5")
    monkeypatch.setenv("BRIDGE_HEADER_READ_TIMEOUT_S", "2.5")
    monkeypatch.setenv("BRIDGE_KEEPALIVE_TIMEOUT_S", "3")
    monkeypatch.setenv("BRIDGE_MAX_HEADER_BYTES", "8192")
    monkeypatch.setenv("BRIDGE_MAX_CONNECTIONS", "4")

    settings = Settings()

    assert (settings.body_read_timeout_s, settings.header_read_timeout_s) == (1.5, 2.5)
    assert (settings.keepalive_timeout_s, settings.max_header_bytes) == (3, 8192)
    assert settings.max_connections == 4


@pytest.mark.parametrize("name", sorted(LIMITS))
@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_limit_must_be_a_positive_number(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"BRIDGE_{name.upper()}", value)

    with pytest.raises(ValidationError) as info:
        Settings()

    assert [error["loc"] for error in info.value.errors()] == [(name,)]


@pytest.mark.parametrize("token", [None, "", "0123456789abcdef", "a-much-longer-admin-token-0123"])
def test_an_admin_token_of_16_characters_or_none_is_accepted(token: str | None) -> None:
    assert Settings(admin_token=token).admin_token == token


def test_a_short_admin_token_is_refused_naming_the_variable_not_the_value() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(admin_token="0123456789abcde")  # 15 characters

    assert settings_problems(info.value) == [
        "BRIDGE_ADMIN_TOKEN: must be at least 16 characters long"
    ]
    assert "0123456789abcde" not in str(info.value)


def test_serve_refuses_to_start_with_a_short_admin_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(BridgeServer, "run", lambda *a, **k: pytest.fail("must not start"))
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "short-token")

    assert main(["serve"]) == 1

    err = capsys.readouterr().err
    assert "error: 1 problem in the BRIDGE_* environment" in err
    assert "BRIDGE_ADMIN_TOKEN: must be at least 16 characters" in err
    assert "short-token" not in err


def test_serve_hands_the_limits_to_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[uvicorn.Config] = []
    monkeypatch.setattr(BridgeServer, "run", lambda self, *a, **k: started.append(self.config))
    monkeypatch.setenv("BRIDGE_KEEPALIVE_TIMEOUT_S", "3")
    monkeypatch.setenv("BRIDGE_MAX_CONNECTIONS", "7")
    monkeypatch.setenv("BRIDGE_MAX_HEADER_BYTES", "8192")
    monkeypatch.setenv("BRIDGE_HEADER_READ_TIMEOUT_S", "2")

    assert main(["serve"]) == 0

    (config,) = started
    assert (config.timeout_keep_alive, config.limit_concurrency) == (3, 7)
    assert config.access_log is False
    assert isinstance(config.http, type)
    assert (config.http.max_header_bytes, config.http.header_read_timeout_s) == (8192, 2.0)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "BRIDGE_REDIS_CLUSTER",
            "true",
            "environment: BRIDGE_REDIS_CLUSTER needs BRIDGE_REDIS_URL (any cluster node)",
        ),
        (
            "BRIDGE_REDIS_WAIT_REPLICAS",
            "1",
            "environment: BRIDGE_REDIS_WAIT_REPLICAS needs BRIDGE_REDIS_URL",
        ),
    ],
)
def test_cluster_and_replica_waits_need_a_real_redis(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert settings_problems(info.value) == [message]
    monkeypatch.setenv("BRIDGE_REDIS_URL", "redis://10.0.0.7:6379")
    settings = Settings()
    assert (settings.redis_cluster, settings.redis_wait_replicas) in [(True, 0), (False, 1)]


def test_a_negative_replica_wait_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_REDIS_URL", "redis://10.0.0.7:6379")
    monkeypatch.setenv("BRIDGE_REDIS_WAIT_REPLICAS", "-1")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert settings_problems(info.value) == [
        "BRIDGE_REDIS_WAIT_REPLICAS: Input should be greater than or equal to 0"
    ]


@pytest.mark.parametrize("role", ["api", "worker"])
def test_a_split_role_needs_a_shared_redis(monkeypatch: pytest.MonkeyPatch, role: str) -> None:
    monkeypatch.setenv("BRIDGE_ROLE", role)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert settings_problems(info.value) == [
        f"environment: BRIDGE_ROLE={role} needs BRIDGE_REDIS_URL"
    ]
    monkeypatch.setenv("BRIDGE_REDIS_URL", "redis://10.0.0.7:6379")
    assert Settings().role == role


def test_an_unknown_role_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_ROLE", "both")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert settings_problems(info.value) == [
        "BRIDGE_ROLE: Input should be 'all', 'api' or 'worker'"
    ]
