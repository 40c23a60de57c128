"""``/chatbot-webhook/{product_id}``: conversation events from the product's chat platform."""

from __future__ import annotations

import math

import structlog
from fastapi import APIRouter, Request, Response

from app import metrics, openapi
from app.api.deps import ProductDep, ServicesDep, read_body
from app.api.errors import ApiError
from app.api.webhook_schemas import IntercomNotification, ZendeskTicketEvent, ZendeskTrigger
from app.domain import WebhookEvent
from app.linking import LinkResult, link_from_webhook
from app.models import WebhookResponse
from app.platforms.base import (
    DeliveryError,
    InvalidWebhook,
    Platform,
    RetryableDeliveryError,
    WebhookRejected,
)
from app.platforms.http import BotEvent
from app.platforms.salesforce import CaseEvent
from app.products import ProductConfig

router = APIRouter(tags=["webhooks"])
log = structlog.get_logger(__name__)

# Retry-After of a 503 when the platform gave no wait hint.
LOOKUP_RETRY_AFTER_S = 5

WEBHOOK_BODY = openapi.request_body(
    {
        "oneOf": [
            openapi.schema_ref(model)
            for model in (
                IntercomNotification,
                ZendeskTicketEvent,
                ZendeskTrigger,
                CaseEvent,
                BotEvent,
            )
        ]
    },
    description="The product's platform decides the body: an Intercom `notification_event` "
    "(`intercom`), a Zendesk event subscription or trigger body (`zendesk`), a Flow's case "
    "event (`salesforce`), or a bot event "
    "(`http` and `console`: `conversation.created` links as a new conversation, "
    "`conversation.replied` as a reply, any other `event` is acknowledged and ignored). "
    "Events that cannot link are answered 200 with status `ignored`.",
)


@router.head(
    "/chatbot-webhook/{product_id}",
    response_class=Response,
    responses={
        200: {"description": "The webhook URL exists."},
        **openapi.error_responses(openapi.UNKNOWN_PRODUCT),
    },
)
async def webhook_probe(product: ProductDep) -> Response:
    """Answer the URL check some platforms (Intercom) make before sending webhooks."""
    return Response(status_code=200)


async def _verified_event(
    platform: Platform, product: ProductConfig, request: Request, body: bytes
) -> WebhookEvent:
    try:
        platform.verify(request.headers, body)
    except WebhookRejected as exc:
        metrics.WEBHOOKS.labels(product.id, product.platform, "invalid_signature").inc()
        log.warning("webhook_rejected", product_id=product.id, reason=str(exc))
        raise ApiError(401, "invalid_signature", str(exc)) from exc
    try:
        return await platform.parse(request.headers, body)
    except InvalidWebhook as exc:
        metrics.WEBHOOKS.labels(product.id, product.platform, "invalid").inc()
        raise ApiError(400, "invalid_webhook", str(exc)) from exc
    except DeliveryError as exc:
        # Parsing needed the platform's API (e.g. a requester lookup) and it failed: ask the
        # platform to send the webhook again rather than lose the link.
        raise _platform_unavailable(product, exc) from exc


def _platform_unavailable(product: ProductConfig, exc: DeliveryError) -> ApiError:
    """The 503 for a webhook whose details could not be read from the platform's API."""
    metrics.WEBHOOKS.labels(product.id, product.platform, "platform_unavailable").inc()
    log.warning("webhook_lookup_failed", product_id=product.id, error=str(exc))
    wait_s = exc.retry_after_s if isinstance(exc, RetryableDeliveryError) else None
    retry_after = max(1, math.ceil(wait_s)) if wait_s is not None else LOOKUP_RETRY_AFTER_S
    return ApiError(
        503,
        "platform_unavailable",
        f"could not read the webhook's details from {product.platform}; retry later",
        headers={"Retry-After": str(retry_after)},
    )


@router.post(
    "/chatbot-webhook/{product_id}",
    response_model=WebhookResponse,
    responses=openapi.error_responses(
        openapi.UNKNOWN_PRODUCT,
        *openapi.BODY_ERRORS,
        openapi.INVALID_SIGNATURE,
        openapi.INVALID_WEBHOOK,
        openapi.PLATFORM_UNAVAILABLE,
        *openapi.STORE_ERRORS,
    ),
    openapi_extra=openapi.operation(WEBHOOK_BODY, openapi.security(*openapi.PLATFORM_SIGNATURES)),
)
async def receive_webhook(
    product: ProductDep, request: Request, services: ServicesDep
) -> WebhookResponse:
    """Verify a platform webhook and link the user's session to its conversation."""
    platform = services.platforms[product.id]
    # JSON unless the adapter takes other bodies (Platform.accepts_webhook).
    body = await read_body(
        request, services, accepts=platform.accepts_webhook, expected=platform.webhook_media_type
    )
    event = await _verified_event(platform, product, request, body)
    structlog.contextvars.bind_contextvars(
        conversation_id=event.conversation_id, session_id=event.session_id
    )
    if event.event is None:
        result = LinkResult("ignored", event.session_id, event.conversation_id)
        log.info("webhook_ignored", product_id=product.id, reason=event.reason)
    else:
        try:
            result = await link_from_webhook(
                services.store, product, event, now=services.clock.now(), platform=platform
            )
        except DeliveryError as exc:
            raise _platform_unavailable(product, exc) from exc
        await services.work_scheduled([(result.due_at, result.shard)])
    metrics.WEBHOOKS.labels(product.id, product.platform, result.status).inc()
    return WebhookResponse(
        status=result.status, session_id=result.session_id, conversation_id=result.conversation_id
    )
