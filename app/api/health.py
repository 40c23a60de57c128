"""Probes and metrics for operators."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import __version__, metrics, openapi
from app.api.deps import ServicesDep
from app.models import Health, Readiness
from app.store.redis_store import StoreUnavailable

router = APIRouter(tags=["operations"])

READYZ_RESPONSES = openapi.or_answer(
    openapi.error_responses(),
    503,
    {"$ref": openapi.REF_TEMPLATE.format(model=Readiness.__name__)},
    "Not ready (a Readiness body): a check is failing, or the instance is draining.",
)
METRICS = {
    "description": "The Prometheus text exposition format.",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


@router.get("/healthz", response_model=Health, responses=openapi.error_responses())
async def healthz() -> dict[str, str]:
    """The process is serving (no dependency checks), and which version it is."""
    return {"status": "ok", "version": __version__}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses=READYZ_RESPONSES,
)
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


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: METRICS, **openapi.error_responses()},
)
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
