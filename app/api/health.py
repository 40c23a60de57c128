"""Probes and metrics for operators."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import metrics
from app.api.deps import ServicesDep
from app.store.redis_store import StoreUnavailable

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is serving (no dependency checks)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when the store answers, config is loaded and the instance is not draining."""
    checks = {
        "store": "ok" if await services.store.ping() else "failing",
        "config": "ok" if services.products else "failing",
        "intake": "ok" if services.accepting else "draining",
    }
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics")
async def prometheus_metrics(services: ServicesDep) -> Response:
    """Prometheus text exposition."""
    # Queue sizes are read from the store at scrape time, so every replica reports the truth.
    with contextlib.suppress(StoreUnavailable):
        store = services.store
        metrics.DUE_SESSIONS.set(await store.due_count())
        for product_id in services.products:
            count = await store.dead_letter_count(product_id)
            metrics.DEAD_LETTERS.labels(product_id).set(count)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
