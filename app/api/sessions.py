"""``/sessions``: linking from a browser or a custom integration."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError

from app import metrics, openapi
from app.api.deps import (
    JsonBody,
    ProductDep,
    Services,
    ServicesDep,
    SessionIdPath,
    lookup_product,
)
from app.api.errors import ApiError
from app.auth import Credential, ingest_credential, is_admin, read_allowed
from app.domain import LinkEvent
from app.linking import link_session
from app.models import (
    LinkRequest,
    ProactiveRequest,
    SessionState,
    WebhookResponse,
    validation_fields,
)
from app.products import ProductConfig
from app.store import redis_store

router = APIRouter(tags=["sessions"])

# A write takes the product's ingest credentials or the admin token; a read a bearer token.
WRITE_SECURITY = openapi.security(*openapi.INGEST_CREDENTIALS, openapi.ADMIN_BEARER)
READ_SECURITY = openapi.security(openapi.INGEST_BEARER, openapi.ADMIN_BEARER)
LINK_BODY = openapi.request_body(
    openapi.schema_ref(LinkRequest), description="The session and the conversation to link."
)
PROACTIVE_BODY = openapi.request_body(
    openapi.schema_ref(ProactiveRequest),
    description="What triggered the proactive message (replays of the same request are 409).",
)


@router.post(
    "/sessions/link",
    response_model=WebhookResponse,
    responses=openapi.error_responses(
        *openapi.BODY_ERRORS,
        openapi.INVALID_PAYLOAD,
        openapi.UNKNOWN_PRODUCT,
        openapi.UNAUTHORIZED,
        *openapi.STORE_ERRORS,
    ),
    openapi_extra=openapi.operation(LINK_BODY, WRITE_SECURITY),
)
async def link(body: JsonBody, request: Request, services: ServicesDep) -> WebhookResponse:
    """Link a session to a conversation (auth: the product's ingest credentials or admin)."""
    try:
        link_request = LinkRequest.model_validate_json(body)
    except ValidationError as exc:
        raise ApiError(
            422,
            "invalid_payload",
            "the link request failed validation",
            fields=validation_fields(exc),
        ) from exc
    product = lookup_product(services, link_request.product_id)
    credential = _authorize(request, services, product, body)
    result = await link_session(
        services.store,
        product,
        session_id=link_request.session_id,
        conversation_id=link_request.conversation_id,
        event=LinkEvent(link_request.event) if link_request.event else None,
        now=services.clock.now(),
        replay_field=credential.replay_fields(product.id, body)[0],
    )
    if result.status == "duplicate":
        metrics.REQUESTS_REPLAYED.labels(product.id, "link").inc()
    await services.work_scheduled([(result.due_at, result.shard)])
    return WebhookResponse(
        status=result.status, session_id=result.session_id, conversation_id=result.conversation_id
    )


def _authorize(
    request: Request, services: Services, product: ProductConfig, body: bytes
) -> Credential:
    """A write needs the product's ingest credentials or the admin token."""
    if is_admin(request.headers, services.settings.admin_token):
        return Credential("admin")
    credential = ingest_credential(product, request.headers, body, now=services.clock.now())
    if credential is None:
        raise ApiError(401, "unauthorized", "the product's ingest credentials are required")
    return credential


def _state_json(state: redis_store.SessionState) -> dict[str, Any]:
    return {
        "session_id": state.session_id,
        "product_id": state.product_id,
        "conversation_linked": state.conversation_id is not None,
        "conversation_id": state.conversation_id,
        "metadata": {"user_id": state.user_id, "email": state.email},
        "current_state": state.current_state,
        "last_interaction_at": state.last_interaction_at,
        "cooldown_until": state.cooldown_until,
        "can_deliver_proactive": state.can_deliver_proactive,
        "proactive_reason": state.proactive_reason,
        "pending_actions": state.pending_actions,
        "queued_actions": state.queued_actions,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
    }


@router.get(
    "/sessions/{product_id}/{session_id}",
    response_model=SessionState,
    responses=openapi.error_responses(
        openapi.UNKNOWN_PRODUCT,
        openapi.INVALID_PARAMETER,
        openapi.UNAUTHORIZED,
        openapi.UNKNOWN_SESSION,
        *openapi.STORE_ERRORS,
    ),
    openapi_extra=READ_SECURITY,
)
async def session_state(
    product: ProductDep, session_id: SessionIdPath, request: Request, services: ServicesDep
) -> dict[str, Any]:
    """A session's link, FSM state and proactive gate (auth: ingest token or admin token)."""
    if not read_allowed(product, request.headers, services.settings.admin_token):
        raise ApiError(
            401, "unauthorized", "reading a session needs the ingest token or the admin token"
        )
    state = await services.store.session_state(product, session_id, now=services.clock.now())
    if state is None:
        raise ApiError(404, "unknown_session", f"no session {session_id!r} for {product.id!r}")
    return _state_json(state)


@router.post(
    "/sessions/{product_id}/{session_id}/proactive",
    response_model=SessionState,
    responses=openapi.error_responses(
        openapi.UNKNOWN_PRODUCT,
        openapi.INVALID_PARAMETER,
        *openapi.BODY_ERRORS,
        openapi.UNAUTHORIZED,
        openapi.INVALID_PAYLOAD,
        openapi.UNKNOWN_SESSION,
        openapi.REPLAYED_REQUEST,
        openapi.PROACTIVE_NOT_ALLOWED,
        *openapi.STORE_ERRORS,
    ),
    openapi_extra=openapi.operation(PROACTIVE_BODY, WRITE_SECURITY),
)
async def start_proactive(
    product: ProductDep,
    session_id: SessionIdPath,
    body: JsonBody,
    request: Request,
    services: ServicesDep,
) -> dict[str, Any]:
    """Enter proactive_assistance when the gate allows it; 409 with the reason otherwise."""
    credential = _authorize(request, services, product, body)
    try:
        trigger = ProactiveRequest.model_validate_json(body)
    except ValidationError as exc:
        raise ApiError(
            422, "invalid_payload", "the request failed validation", fields=validation_fields(exc)
        ) from exc
    store, now = services.store, services.clock.now()
    allowed, reason = await store.start_proactive(
        product,
        session_id,
        trigger_id=trigger.trigger_id,
        now=now,
        replay_field=credential.replay_fields(product.id, body)[0],
    )
    if allowed is None:
        raise ApiError(404, "unknown_session", f"no session {session_id!r} for {product.id!r}")
    if reason == "replayed_request":
        metrics.REQUESTS_REPLAYED.labels(product.id, "proactive").inc()
        raise ApiError(
            409,
            "replayed_request",
            "this exact request was already applied; nothing changed",
            extra={"reason": reason},
        )
    if not allowed:
        raise ApiError(
            409,
            "proactive_not_allowed",
            f"the session cannot go proactive: {reason}",
            extra={"reason": reason},
        )
    state = await store.session_state(product, session_id, now=now)
    assert state is not None
    return _state_json(state)
