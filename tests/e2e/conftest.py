"""Fixtures for tests that run the real service."""

from __future__ import annotations

import pytest
import redis


@pytest.fixture
def clean_redis(redis_url: str) -> str:
    client = redis.Redis.from_url(redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_url
