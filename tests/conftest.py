"""Shared fixtures: a real Redis server, a manual clock, product factories, an in-process app."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from app.products import ProductConfig
from app.store.redis_store import RedisStore

HTTP_SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"w" * 32).decode()
INGEST_TOKEN = "ingest-token-0123456789"
INGEST_SECRET = "ingest-secret-0123456789"
NOTES_URL = "https://bot.test/notes"
REDACT_URL = "https://bot.test/notes/redact"


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_redis(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {proc.returncode}")
        try:
            if client.ping():
                return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not answer in time")


def start_redis_server(
    port: int, *, workdir: str, appendonly: bool = False
) -> subprocess.Popen[bytes]:
    """A throwaway redis-server on loopback (the caller terminates it)."""
    binary = shutil.which("redis-server")
    assert binary is not None
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir]
    args += ["--appendonly", "yes" if appendonly else "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_redis(f"redis://127.0.0.1:{port}/0", proc)
    return proc


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: BRIDGE_TEST_REDIS_URL, or a redis-server this session starts."""
    configured = os.environ.get("BRIDGE_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    if shutil.which("redis-server") is None:
        message = "redis-server is not on PATH and BRIDGE_TEST_REDIS_URL is unset"
        if os.environ.get("BRIDGE_REQUIRE_REDIS") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = start_redis_server(port, workdir=workdir)
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_client: aioredis.Redis) -> RedisStore:
    store = RedisStore(redis_client)
    await store.load_scripts()
    return store


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make_product(
    product_id: str = "acme", platform: str = "http", **overrides: Any
) -> ProductConfig:
    """A valid product; ``overrides`` replace any top-level key."""
    values: dict[str, Any] = {
        "platform": platform,
        "ingest_token": INGEST_TOKEN,
        "ingest_secret": INGEST_SECRET,
        "pre_link_window_s": 120.0,
        "post_link_debounce_s": 0.15,
        "post_link_max_wait_s": 5.0,
        "bin_seconds": 3,
        "max_pending_actions": 1000,
    }
    if platform == "http":
        values["http"] = {
            "url": NOTES_URL,
            "redact_url": REDACT_URL,
            "signing_secret": HTTP_SECRET,
            "webhook_secret": WEBHOOK_SECRET,
        }
    elif platform == "console":
        values["console"] = {"webhook_secret": WEBHOOK_SECRET}
    values.update(overrides)
    return ProductConfig.model_validate({**values, "id": product_id})


def batch(
    session_id: str | None = "sess-1",
    *descriptions_and_times: tuple[str, float],
    **fields: Any,
) -> dict[str, Any]:
    """An ActionsPayload body: ``batch("s1", ("clicked A", 100.0), user_id="u1")``."""
    actions = [{"description": d, "timestamp_start": t} for d, t in descriptions_and_times]
    return {"session_id": session_id, "actions": actions, **fields}


# -- Redis Cluster -------------------------------------------------------------------------------


def skip_or_fail_without_cluster_binaries(needed_for: str) -> None:
    """Skip when redis-server/redis-cli are missing; fail instead when BRIDGE_REQUIRE_REDIS=1."""
    from tests.cluster import missing_binaries

    missing = missing_binaries()
    if not missing:
        return
    message = f"{' and '.join(missing)} not on PATH, needed {needed_for}"
    if os.environ.get("BRIDGE_REQUIRE_REDIS") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A real Redis Cluster: BRIDGE_TEST_REDIS_CLUSTER_URL, or 3 primaries this session starts."""
    from tests.cluster import LocalRedisCluster

    configured = os.environ.get("BRIDGE_TEST_REDIS_CLUSTER_URL")
    if configured:
        yield configured
        return
    skip_or_fail_without_cluster_binaries(
        "for a cluster when BRIDGE_TEST_REDIS_CLUSTER_URL is unset"
    )
    with LocalRedisCluster.start(primaries=3) as cluster:  # stops every node, even on failure
        yield cluster.url


TOPOLOGIES = ("standalone", "cluster")


@pytest.fixture(params=TOPOLOGIES)
async def topology_client(
    request: pytest.FixtureRequest,
) -> AsyncIterator[aioredis.Redis | aioredis.RedisCluster]:
    """An empty Redis of each topology in turn: the standalone server, then the cluster (one
    each per test session, flushed before every test)."""
    client: aioredis.Redis | aioredis.RedisCluster
    if request.param == "standalone":
        client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
        await client.flushdb()
    else:
        client = aioredis.RedisCluster.from_url(request.getfixturevalue("redis_cluster_url"))
        await client.flushall(target_nodes=aioredis.RedisCluster.PRIMARIES)
    yield client
    await client.aclose()


@pytest.fixture
async def cluster_client(redis_cluster_url: str) -> AsyncIterator[aioredis.RedisCluster]:
    """A cluster client on an empty cluster (FLUSHALL on every primary first), closed after."""
    client = aioredis.RedisCluster.from_url(redis_cluster_url)
    try:
        await client.flushall(target_nodes=aioredis.RedisCluster.PRIMARIES)
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def failover_cluster() -> Iterator[Any]:
    """A cluster of its own for tests that kill nodes: 3 primaries with one replica each.
    A test that kills a primary restarts it (it rejoins as a replica) before it ends."""
    from tests.cluster import LocalRedisCluster

    skip_or_fail_without_cluster_binaries("to start, kill and restart cluster nodes")
    started = time.monotonic()
    with LocalRedisCluster.start(primaries=3, replicas=1) as cluster:
        print(f"3+3 cluster started in {time.monotonic() - started:.2f}s")
        yield cluster
