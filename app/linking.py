"""Turning a platform's link event into a session link (docs/delivery.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import structlog

from app.domain import LinkEvent, WebhookEvent
from app.products import ProductConfig
from app.store.redis_store import RedisStore

log = structlog.get_logger(__name__)

LinkStatus = Literal["linked", "already_linked", "pending_identity", "ignored", "duplicate"]


@dataclass(frozen=True, slots=True)
class LinkResult:
    status: LinkStatus
    session_id: str | None
    conversation_id: str | None
    due_at: float | None = None


async def link_session(
    store: RedisStore,
    product: ProductConfig,
    *,
    session_id: str,
    conversation_id: str,
    event: LinkEvent | None,
    now: float,
    user_message: bool = False,
    delivery_id: str | None = None,
    replay_field: bytes = b"",
) -> LinkResult:
    outcome = await store.link(
        product,
        session_id=session_id,
        conversation_id=conversation_id,
        event=event,
        now=now,
        user_message=user_message,
        delivery_id=delivery_id,
        replay_field=replay_field,
    )
    if outcome.status != "linked":
        return LinkResult(outcome.status, session_id, outcome.conversation_id)
    log.info(
        "link_created",
        product_id=product.id,
        session_id=session_id,
        conversation_id=conversation_id,
        link_event=event.value if event else "inferred",
        relinked=outcome.previous_conversation_id is not None,
    )
    return LinkResult("linked", session_id, conversation_id, outcome.due_at)


async def link_from_webhook(
    store: RedisStore, product: ProductConfig, event: WebhookEvent, *, now: float
) -> LinkResult:
    """Find the event's session (explicit id, then user id, then email) and link it; with no
    session known yet, the conversation waits for the contact's first batch. Each delivery is
    applied once: its id is recorded in the same store step as its effect."""
    conversation_id = event.conversation_id
    if event.event is None or not conversation_id:
        return LinkResult("ignored", event.session_id, conversation_id)
    session_id = event.session_id
    if session_id is None:
        if not (event.user_id or event.email):
            return LinkResult("ignored", None, conversation_id)
        found = await store.resolve_session(
            product.id,
            user_id=event.user_id,
            email=event.email,
            conversation_id=conversation_id,
            delivery_id=event.delivery_id,
        )
        if found.status == "duplicate":
            return LinkResult("duplicate", None, conversation_id)
        if found.session_id is None:
            log.info("link_pending_identity", conversation_id=conversation_id)
            return LinkResult("pending_identity", None, conversation_id)
        session_id = found.session_id
    return await link_session(
        store,
        product,
        session_id=session_id,
        conversation_id=conversation_id,
        event=event.event,
        now=now,
        user_message=True,
        delivery_id=event.delivery_id,
    )
