"""The delivery engine's tests run on standalone Redis and on a Redis Cluster."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis


@pytest.fixture
def redis_client(
    topology_client: aioredis.Redis | aioredis.RedisCluster,
) -> aioredis.Redis | aioredis.RedisCluster:
    return topology_client
