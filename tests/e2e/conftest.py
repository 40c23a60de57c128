"""Fixtures for tests that run the real service."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from tests.conftest import HTTP_SECRET
from tests.fakes.bot import FakeBot, running_bot


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_url


@pytest.fixture
def bot() -> Iterator[FakeBot]:
    """A fake self-hosted bot on loopback that verifies and records every note."""
    with running_bot(HTTP_SECRET) as fake:
        yield fake


@dataclass
class Store:
    url: str
    env: dict[str, str]
    cluster: redis.RedisCluster | None = None


@pytest.fixture(params=["standalone", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """The replicas' Redis: the session's standalone server, or its 3-primary cluster."""
    if request.param == "standalone":
        yield Store(request.getfixturevalue("clean_redis"), {})
        return
    url = request.getfixturevalue("redis_cluster_url")
    client = redis.RedisCluster.from_url(url)
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    try:
        yield Store(url, {"BRIDGE_REDIS_CLUSTER": "true"}, client)
    finally:
        client.close()
