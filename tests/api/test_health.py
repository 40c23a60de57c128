"""Operations endpoints and the answers while the store is down."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.conftest import (
    INGEST_TOKEN,
    ManualClock,
    batch,
    free_port,
    make_product,
    start_redis_server,
)
from tests.harness import Harness, running_app

T0 = 1_705_322_090.0


@pytest.fixture
async def h(redis_client: aioredis.Redis, clock: ManualClock) -> AsyncIterator[Harness]:
    async with running_app(
        products=[make_product()], clock=clock, redis_client=redis_client
    ) as harness:
        yield harness


def error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body: dict[str, object] = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str) and body["detail"]
    return body


async def test_healthz_answers_ok(h: Harness) -> None:
    r = await h.client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "version": version("chatbot-bridge")}


async def test_readyz_reports_every_check_ok(h: Harness) -> None:
    r = await h.client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "ready",
        "checks": {"store": "ok", "config": "ok", "intake": "ok"},
    }


def _received(metrics_text: str, product: str) -> float:
    pattern = rf'^bridge_actions_received_total\{{product="{product}"\}} (\S+)$'
    match = re.search(pattern, metrics_text, flags=re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_metrics_count_received_actions(
    redis_client: aioredis.Redis, clock: ManualClock
) -> None:
    product = make_product("metrics_probe")
    async with running_app(products=[product], clock=clock, redis_client=redis_client) as h:
        before = _received((await h.client.get("/metrics")).text, "metrics_probe")
        await h.post_batch("metrics_probe", batch("s1", ("A", T0), ("B", T0 + 1)))
        await h.post_batch("metrics_probe", batch("s1", ("A", T0)))  # a duplicate: not received
        r = await h.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "# TYPE bridge_actions_received_total counter" in r.text
    assert _received(r.text, "metrics_probe") - before == 2.0


@pytest.mark.parametrize("path", ["/nope", "/actions", "/chatbot-webhook"])
async def test_unknown_route_is_a_json_404(h: Harness, path: str) -> None:
    r = await h.client.get(path)
    assert r.status_code == 404
    assert r.json() == {"error": "not_found", "detail": "Not Found"}


async def test_wrong_method_is_a_json_405(h: Harness) -> None:
    r = await h.client.get("/actions/acme")
    error(r, 405, "method_not_allowed")


async def test_openapi_lists_the_routes(h: Harness) -> None:
    r = await h.client.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    assert "post" in paths["/actions/{product_id}"]
    assert "post" in paths["/chatbot-webhook/{product_id}"]
    assert "post" in paths["/sessions/link"]
    assert paths["/actions/{product_id}"]["post"]["summary"]


# -- the store is down -----------------------------------------------------------------------------


@pytest.fixture
async def down(clock: ManualClock) -> AsyncIterator[Harness]:
    """The app over a Redis client whose server is not there (connection refused at once)."""
    dead = aioredis.Redis(
        host="127.0.0.1",
        port=free_port(),
        socket_timeout=0.2,
        socket_connect_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        async with running_app(products=[make_product()], clock=clock, redis_client=dead) as h:
            yield h
    finally:
        await dead.aclose()


async def test_ingest_answers_503_with_retry_after_when_the_store_is_down(down: Harness) -> None:
    r = await down.post_batch("acme", batch("s1", ("A", T0)))
    error(r, 503, "store_unavailable")
    assert int(r.headers["retry-after"]) > 0


async def test_webhook_answers_503_when_the_store_is_down(down: Harness) -> None:
    body = {"event": "conversation.created", "conversation_id": "c1", "session_id": "s1"}
    r = await down.post_webhook("acme", body)
    error(r, 503, "store_unavailable")
    assert int(r.headers["retry-after"]) > 0


async def test_session_link_answers_503_when_the_store_is_down(down: Harness) -> None:
    body = {"product_id": "acme", "session_id": "s1", "conversation_id": "c1"}
    headers = {"authorization": f"Bearer {INGEST_TOKEN}"}
    r = await down.client.post("/sessions/link", json=body, headers=headers)
    error(r, 503, "store_unavailable")
    assert "retry-after" in r.headers


async def test_readyz_fails_and_healthz_passes_when_the_store_is_down(down: Harness) -> None:
    ready = await down.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready"
    assert ready.json()["checks"]["store"] == "failing"
    health = await down.client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "version": version("chatbot-bridge")}


async def test_validation_still_answers_422_when_the_store_is_down(down: Harness) -> None:
    # Nothing to store, so the store is never asked.
    r = await down.post_batch("acme", {"session_id": "s1", "actions": []})
    error(r, 422, "invalid_payload")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server on PATH")
async def test_ingest_recovers_without_restart_when_the_store_returns(
    clock: ManualClock, tmp_path: Path
) -> None:
    port = free_port()
    client = aioredis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    server: subprocess.Popen[bytes] | None = None
    try:
        async with running_app(products=[make_product()], clock=clock, redis_client=client) as h:
            error(await h.post_batch("acme", batch("s1", ("A", T0))), 503, "store_unavailable")
            server = start_redis_server(port, workdir=str(tmp_path))
            r = await h.post_batch("acme", batch("s1", ("A", T0)))
            assert r.status_code == 202, r.text
            assert r.json()["accepted"] == 1
            assert (await h.client.get("/readyz")).status_code == 200
    finally:
        await client.aclose()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
