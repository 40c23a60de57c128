"""Fixtures for tests that run the real service."""

from __future__ import annotations

from collections.abc import Iterator

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
