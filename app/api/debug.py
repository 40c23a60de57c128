"""``/debug/*``: what the bridge holds, for operators (admin token only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from app import openapi
from app.api.deps import AdminDep, ProductDep, ServicesDep, SessionIdPath
from app.api.errors import ApiError
from app.models import DeadLetterList, DeadLetterReplay, DeliveryView, ProductList, SessionView
from app.products import masked_view

ADMIN = (openapi.ADMIN_DISABLED, openapi.UNAUTHORIZED)
# Every route but the product list also names a product, and takes a checked path or query.
PRODUCT = (openapi.UNKNOWN_PRODUCT, openapi.INVALID_PARAMETER)
ADMIN_SECURITY = openapi.security(openapi.ADMIN_BEARER)
router = APIRouter(prefix="/debug", tags=["debug"])


@router.get(
    "/products",
    response_model=ProductList,
    responses=openapi.error_responses(*ADMIN),
    openapi_extra=ADMIN_SECURITY,
)
async def list_products(_: AdminDep, services: ServicesDep) -> dict[str, Any]:
    """Every configured product, secrets masked."""
    return {"products": [masked_view(p) for p in services.products.values()]}


@router.get(
    "/sessions/{product_id}/{session_id}",
    response_model=SessionView,
    responses=openapi.error_responses(
        *ADMIN, *PRODUCT, openapi.UNKNOWN_SESSION, openapi.STORE_UNAVAILABLE
    ),
    openapi_extra=ADMIN_SECURITY,
)
async def show_session(
    _: AdminDep, product: ProductDep, session_id: SessionIdPath, services: ServicesDep
) -> dict[str, Any]:
    """One session's full stored state: link, buffers, outbox, posted note ids, timers."""
    view = await services.store.session_view(product.id, session_id)
    if view is None:
        raise ApiError(404, "unknown_session", f"no stored state for session {session_id!r}")
    return {"product_id": product.id, "session_id": session_id, **view}


@router.get(
    "/dead-letters/{product_id}",
    response_model=DeadLetterList,
    responses=openapi.error_responses(*ADMIN, *PRODUCT, openapi.STORE_UNAVAILABLE),
    openapi_extra=ADMIN_SECURITY,
)
async def list_dead_letters(
    _: AdminDep,
    product: ProductDep,
    services: ServicesDep,
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    """Notes that could not be delivered, newest first, with their actions and error."""
    store = services.store
    return {
        "product_id": product.id,
        "total": await store.dead_letter_count(product.id),
        "dead_letters": await store.dead_letters(product.id, limit=limit),
    }


@router.post(
    "/dead-letters/{product_id}/replay",
    response_model=DeadLetterReplay,
    responses=openapi.error_responses(*ADMIN, *PRODUCT, *openapi.STORE_ERRORS),
    openapi_extra=ADMIN_SECURITY,
)
async def replay_dead_letters(
    _: AdminDep,
    product: ProductDep,
    services: ServicesDep,
    limit: int = Query(default=100, ge=1, le=1000),
) -> dict[str, Any]:
    """Queue the oldest dead letters for delivery again."""
    replayed = await services.store.replay_dead_letters(
        product, now=services.clock.now(), limit=limit
    )
    await services.work_scheduled([(services.clock.now(), None)])
    return {"product_id": product.id, "replayed": replayed}


@router.get(
    "/delivery/{product_id}",
    response_model=DeliveryView,
    responses=openapi.error_responses(*ADMIN, *PRODUCT, openapi.STORE_UNAVAILABLE),
    openapi_extra=ADMIN_SECURITY,
)
async def show_delivery(_: AdminDep, product: ProductDep, services: ServicesDep) -> dict[str, Any]:
    """The product's outbound limits now: its shared note budget (every replica), and this
    process's calls in flight and circuit breaker."""
    now = services.clock.now()
    budget = product.note_budget
    budget_view = None
    if budget is not None:
        available, next_free = await services.store.note_budget_state(product.id, budget, now=now)
        budget_view = {
            "per_minute": budget.per_minute,
            "burst": budget.burst,
            "available_now": available,
            "next_free_at": next_free,
        }
    in_flight = circuit_view = None
    if services.settings.role != "api":
        board = services.worker.admission
        circuit = board.circuit(product.id)
        in_flight = board.in_flight[product.id]
        circuit_view = {
            "state": circuit.state(now),
            "consecutive_failures": circuit.failures,
            "open_until": circuit.open_until,
        }
    return {
        "product_id": product.id,
        "note_budget": budget_view,
        "max_notes_in_flight": product.max_notes_in_flight,
        "in_flight": in_flight,
        "circuit": circuit_view,
    }
