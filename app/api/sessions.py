"""``/sessions``: linking from a browser or a custom integration."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import ValidationError

from app.api.deps import JsonBody, ServicesDep, get_product
from app.api.errors import ApiError
from app.auth import ingest_allowed, is_admin
from app.linking import link_session
from app.models import LinkRequest, WebhookResponse, validation_fields
from app.platforms.base import LinkEvent

router = APIRouter(tags=["sessions"])


@router.post("/sessions/link")
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
    product = get_product(link_request.product_id, services)
    admin = is_admin(request.headers, services.settings.admin_token)
    if not (admin or ingest_allowed(product, request.headers, body)):
        raise ApiError(401, "unauthorized", "the product's ingest credentials are required")
    result = await link_session(
        services.store,
        product,
        session_id=link_request.session_id,
        conversation_id=link_request.conversation_id,
        event=LinkEvent(link_request.event) if link_request.event else None,
        now=services.clock.now(),
    )
    services.worker.notify(result.due_at)
    return WebhookResponse(
        status=result.status, session_id=result.session_id, conversation_id=result.conversation_id
    )
