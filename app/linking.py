"""Turning a platform's link event into a session link (docs/delivery.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import structlog

from app.domain import LinkEvent, WebhookEvent
from app.products import ProductConfig
from app.store.redis_store import LinkOutcome, RedisStore

log = structlog.get_logger(__name__)

LinkStatus = Literal["linked", "already_linked", "pending_identity", "ignored", "duplicate"]


@dataclass(frozen=True, slots=True)
class LinkResult:
    status: LinkStatus
    session_id: str | None
    conversation_id: str | None
    due_at: float | None = None
    shard: int | None = None  # the due queue the session is in (for the worker's notice)


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
    return _result(product, session_id, conversation_id, event, outcome)


def _result(
    product: ProductConfig,
    session_id: str,
    conversation_id: str,
    event: LinkEvent | None,
    outcome: LinkOutcome,
) -> LinkResult:
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
    return LinkResult("linked", session_id, conversation_id, outcome.due_at, outcome.shard)


async def link_from_webhook(
    store: RedisStore, product: ProductConfig, event: WebhookEvent, *, now: float
) -> LinkResult:
    """Find the event's session (explicit id, then user id, then email) and link it; with no
    session known yet, the conversation waits for the contact's first batch. Each delivery is
    applied once: its id is recorded in the same store step as its effect."""
    conversation_id = event.conversation_id
    if event.event is None or not conversation_id:
        return LinkResult("ignored", event.session_id, conversation_id)
    if event.session_id is not None:
        return await link_session(
            store,
            product,
            session_id=event.session_id,
            conversation_id=conversation_id,
            event=event.event,
            now=now,
            user_message=True,
            delivery_id=event.delivery_id,
        )
    if not (event.user_id or event.email):
        return LinkResult("ignored", None, conversation_id)
    found = await store.link_contact(
        product,
        user_id=event.user_id,
        email=event.email,
        conversation_id=conversation_id,
        event=event.event,
        now=now,
        delivery_id=event.delivery_id,
    )
    if found.status == "duplicate":
        return LinkResult("duplicate", None, conversation_id)
    if found.session_id is None or found.link is None:
        log.info("link_pending_identity", conversation_id=conversation_id)
        return LinkResult("pending_identity", None, conversation_id)
    return _result(product, found.session_id, conversation_id, event.event, found.link)
