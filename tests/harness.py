"""The app in-process over a real Redis, with helpers to post batches and signed webhooks."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis
from fastapi import FastAPI

from app.api.deps import Services
from app.main import create_app
from app.products import ProductConfig
from app.security import decode_whsec, standard_webhook_headers
from app.settings import Settings
from tests.conftest import INGEST_TOKEN, WEBHOOK_SECRET, ManualClock


def signed_webhook(
    body: Mapping[str, Any], *, secret: str = WEBHOOK_SECRET, now: float, msg_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    headers = standard_webhook_headers(
        decode_whsec(secret),
        msg_id=msg_id or f"msg_{uuid.uuid4().hex}",
        timestamp=int(now),
        body=raw,
    )
    return raw, {**headers, "content-type": "application/json"}


@dataclass
class Harness:
    app: FastAPI
    client: httpx.AsyncClient
    clock: ManualClock

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    async def post_batch(
        self, product_id: str, body: Any, *, token: str | None = INGEST_TOKEN
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return await self.client.post(f"/actions/{product_id}", json=body, headers=headers)

    async def post_webhook(
        self, product_id: str, body: Mapping[str, Any], **kwargs: Any
    ) -> httpx.Response:
        raw, headers = signed_webhook(body, now=self.clock.now(), **kwargs)
        return await self.client.post(
            f"/chatbot-webhook/{product_id}", content=raw, headers=headers
        )

    async def deliver(self) -> int:
        """Post every note due at the clock's current time; returns how many were tried."""
        total = 0
        while attempted := await self.services.worker.run_once():
            total += attempted
        return total


@asynccontextmanager
async def running_app(
    *,
    products: list[ProductConfig],
    clock: ManualClock,
    redis_client: aioredis.Redis,
    run_worker: bool = False,
    **settings: Any,
) -> AsyncIterator[Harness]:
    app = create_app(
        Settings(**settings),
        products={p.id: p for p in products},
        clock=clock,
        redis_client=redis_client,
        run_worker=run_worker,
        configure_logs=False,
        # respx mocks httpx's own transport; the e2e tests drive the service's aiohttp one.
        http_transport=httpx.AsyncHTTPTransport(),
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bridge.test") as client:
            yield Harness(app, client, clock)
